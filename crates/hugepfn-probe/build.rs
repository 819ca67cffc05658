//! `cfg(probe_host)`: the hosts the probe runs on (Linux on x86-64 or aarch64), so the modules
//! that talk to the kernel are gated by one name instead of the same `cfg(all(...))` seven times.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(probe_host)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os == "linux" && (arch == "x86_64" || arch == "aarch64") {
        println!("cargo::rustc-cfg=probe_host");
    }
}
