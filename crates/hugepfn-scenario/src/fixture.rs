//! Scenario text that tests of the model runner, the lab and the probe start from.

/// The start of a scenario named `t`: device `d` with BAR 2 of `bar_size` (a size string such
/// as `"2G"`) at 0xff00000000, where SeaBIOS puts the lab's ivshmem-plain device, and a step
/// mapping all of BAR 2 as `m`, with `mmap_keys` (TOML lines such as `va = "align:1G"\n`, or
/// nothing) in its table. Append `[[step]]` tables to it.
pub fn bar2_head(bar_size: &str, mmap_keys: &str) -> String {
    format!(
        "name = \"t\"\n{}{}",
        one_bar_device("d", 2, "0xff00000000", bar_size),
        mmap_step("m", "d", 2, mmap_keys)
    )
}

/// A `[[device]]` table: device `name` with one BAR, `index`, of `size` at `phys` (size strings
/// such as `"2G"` and `"0xff00000000"`).
pub fn one_bar_device(name: &str, index: u8, phys: &str, size: &str) -> String {
    format!(
        "[[device]]\n\
         name = \"{name}\"\n\
         bars = [{{ index = {index}, phys = \"{phys}\", size = \"{size}\" }}]\n"
    )
}

/// A `[[step]]` table of `op`, with `keys` (TOML lines, each ending in a newline, or nothing).
pub fn step(op: &str, keys: &str) -> String {
    format!("[[step]]\nop = \"{op}\"\n{keys}")
}

/// A `[[step]]` mapping all of BAR `bar` of `device` as `map`, with `keys` (TOML lines such as
/// `va = "align:1G"\n`, or nothing) in its table.
pub fn mmap_step(map: &str, device: &str, bar: u8, keys: &str) -> String {
    step(
        "mmap",
        &format!("name = \"{map}\"\ndevice = \"{device}\"\nbar = {bar}\n{keys}"),
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

    #[test]
    fn the_head_is_the_text_it_always_was() {
        assert_eq!(
            super::bar2_head("2G", "va = \"kernel\"\n"),
            "name = \"t\"\n[[device]]\nname = \"d\"\n\
             bars = [{ index = 2, phys = \"0xff00000000\", size = \"2G\" }]\n\
             [[step]]\nop = \"mmap\"\nname = \"m\"\ndevice = \"d\"\nbar = 2\nva = \"kernel\"\n"
        );
    }
}
