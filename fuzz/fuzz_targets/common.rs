//! The check every parser target runs: no input may make a parser panic,
//! and a parser may never report more rule lines than the input has lines
//! (each line ends in at most one outcome: rules, one skip or one rejection).

use shieldns_index::format::CountingSink;
use shieldns_index::{ListFormat, parse};

pub fn check(format: ListFormat, data: &[u8]) {
    let mut sink = CountingSink::default();
    parse(format, data, &mut sink);
    let lines = data.split(|&b| b == b'\n').count() as u64;
    assert!(
        sink.counts.rule_lines() <= lines,
        "{format}: {} rule lines from {lines} lines: {:?}",
        sink.counts.rule_lines(),
        sink.counts
    );
}
