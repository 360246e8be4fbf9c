//! The kernel command line parser, and checking what it produces, must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paddock::config::{check_value, cmdline, path::KeyPath};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let c = cmdline::parse(&text);
    let _ = check_value("cmdline", c.config, &Default::default(), &[]);
    let _ = check_value("cmdline", c.extra, &Default::default(), &[]);
    let _ = KeyPath::parse(&text);
});
