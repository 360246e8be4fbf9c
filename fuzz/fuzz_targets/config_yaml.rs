//! The cloud-config YAML path: user-data classification, parsing, checking, and writing the
//! result back out must never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paddock::config::{check_text, userdata, yaml};

fuzz_target!(|data: &[u8]| {
    let _ = userdata::classify(data);
    let text = String::from_utf8_lossy(data);
    if let Ok(c) = check_text("fuzz", &text) {
        let out = yaml::to_yaml(&c.value);
        // What we write must read back.
        if let Ok(back) = yaml::parse(&out) {
            assert_eq!(back.value, c.value);
        }
    }
    let _ = yaml::parse_scalar_or_yaml(&text);
});
