#!/bin/busybox sh
# /init of the hugepfn lab initramfs (built by `hugepfn lab`, see crates/hugepfn/src/lab/).
#
# Loads the VFIO modules listed in /lab/modules (dependency order), then runs
# `hugepfn-probe --set-thp --trace --compact` once per scenario listed in /lab/list
# (/lab/s/<ID>.toml) and powers off. The probe itself finds the ivshmem device (1af4:1110),
# binds it to vfio-pci, sets the THP mode and prints one JSON line.
#
# Data channel: the second serial port (a file on the host), kept apart from the kernel console
# on the first (which carries oops traces): /dev/ttyS1 on x86-64, /dev/ttyAMA1 on arm64 (QEMU
# virt's second PL011), named by `hugepfn_data=` on the kernel command line. Protocol, one item
# per line:
#   @@HUGEPFN-LAB uname=<release>
#   @@BEGIN <ID>
#   hugepfn-probe: trace step=<i> of=<n> line=<l> op=<op>   (drained before the step runs)
#   hugepfn-probe: warning: ... | hugepfn-probe: error: ...
#   {...}                                                    (the RunReport JSON)
#   @@INSPECT <ID> <JSON>     (lab-inspect-* scenarios: `hugepfn inspect` of the held probe)
#   @@END <ID> rc=<exit status>
#   @@DONE
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null

OUT=/dev/$(sed -n 's/.*hugepfn_data=\([^ ]*\).*/\1/p' /proc/cmdline)
[ "$OUT" = /dev/ ] && OUT=/dev/ttyS1
stty -F "$OUT" raw -echo 2>/dev/null
exec 3>"$OUT"
echo "@@HUGEPFN-LAB uname=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)" >&3

while read -r m; do
    [ -n "$m" ] || continue
    insmod "/lib/modules/$m.ko" || echo "@@MODULE-FAILED $m" >&3
done < /lab/modules

while read -r id; do
    [ -n "$id" ] || continue
    echo "@@BEGIN $id" >&3
    if [ -e "/lab/s/$id.inspect" ] && [ ! -x /bin/hugepfn ]; then
        echo "@@INSPECT $id MISSING" >&3
    fi
    if [ -e "/lab/s/$id.inspect" ] && [ -x /bin/hugepfn ]; then
        # the probe holds its mappings after the last step while `hugepfn inspect` reads
        # its maps, fds and sysfs; the answer is one line: @@INSPECT <ID> <JSON>
        rm -f /tmp/held
        /bin/hugepfn-probe --set-thp --trace --compact --hold /tmp/held "/lab/s/$id.toml" >&3 2>&3 &
        pid=$!
        while [ ! -e /tmp/held ] && kill -0 "$pid" 2>/dev/null; do usleep 20000; done
        if [ -e /tmp/held ]; then
            echo "@@INSPECT $id $(/bin/hugepfn inspect "$pid" --json 2>&1 | tr -d '\n')" >&3
            rm -f /tmp/held
        fi
        wait "$pid"
        rc=$?
    else
        /bin/hugepfn-probe --set-thp --trace --compact "/lab/s/$id.toml" >&3 2>&3
        rc=$?
    fi
    echo "@@END $id rc=$rc" >&3
done < /lab/list

echo "@@DONE uptime=$(cut -d' ' -f1 /proc/uptime)" >&3
sync
poweroff -f
echo o > /proc/sysrq-trigger
sleep 5
