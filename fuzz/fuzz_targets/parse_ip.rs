//! Fuzzes the `ip` list parser (see `common.rs` for the check).

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use shieldns_index::ListFormat;

fuzz_target!(|data: &[u8]| common::check(ListFormat::Ip, data));
