//! The access rules parser on arbitrary text: never panics, and whatever it accepts prints as
//! canonical text that parses back to the same rules.

#![no_main]

use blazedb_access::Rules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rules) = Rules::parse(text) {
        let again = Rules::parse(&rules.to_toml());
        assert!(again.is_ok_and(|r| r == rules), "canonical text does not round-trip");
    }
});
