//! Fuzzes the `dnsmasq` list parser: no input may make it panic, and it may
//! never report more rule lines than the input has lines.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shieldns_index::format::CountingSink;
use shieldns_index::{ListFormat, parse};

fuzz_target!(|data: &[u8]| {
    let mut sink = CountingSink::default();
    parse(ListFormat::Dnsmasq, data, &mut sink);
    // Every line ends in at most one outcome (rules, one skip or one
    // rejection), so the rule-line count is bounded by the line count.
    let lines = data.split(|&b| b == b'\n').count() as u64;
    assert!(
        sink.counts.rule_lines() <= lines,
        "{} rule lines from {lines} lines: {:?}",
        sink.counts.rule_lines(),
        sink.counts
    );
});
