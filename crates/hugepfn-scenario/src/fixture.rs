//! Scenario text that tests of the model runner, the lab and the probe start from.

/// The start of a scenario named `t`: device `d` with BAR 2 of `bar_size` (a size string such
/// as `"2G"`) at 0xff00000000, where SeaBIOS puts the lab's ivshmem-plain device, and a step
/// mapping all of BAR 2 as `m`, with `mmap_keys` (TOML lines such as `va = "align:1G"\n`, or
/// nothing) in its table. Append `[[step]]` tables to it.
pub fn bar2_head(bar_size: &str, mmap_keys: &str) -> String {
    format!(
        "name = \"t\"\n\
         [[device]]\n\
         name = \"d\"\n\
         bars = [{{ index = 2, phys = \"0xff00000000\", size = \"{bar_size}\" }}]\n\
         [[step]]\nop = \"mmap\"\nname = \"m\"\ndevice = \"d\"\nbar = 2\n\
         {mmap_keys}"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_head_parses_to_one_mapping_of_bar_2() {
        let text = super::bar2_head("2G", "va = \"align:1G\"\n");
        let sc = crate::parse_scenario(&text, "t.toml").expect("parses");
        assert_eq!((sc.name.as_str(), sc.devices.len()), ("t", 1));
        assert_eq!(sc.devices[0].bars[0].phys, 0xff_0000_0000);
        assert_eq!(sc.devices[0].bars[0].size, 2 << 30);
        assert_eq!(sc.steps.len(), 1);
    }
}
