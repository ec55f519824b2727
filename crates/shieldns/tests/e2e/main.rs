//! shieldns's end-to-end tests, one binary: the real `shieldns` against
//! real `dig`, `kdig`, nsd, dnsdist and an HTTPS list publisher, driven
//! through `shieldns-test-support`. Each module is one area; `tests/README.md`
//! maps them. Configurations are fixture files in `fixtures/`.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod cli;
mod dns_forward;
mod dns_hardening;
mod dns_policy;
mod dns_recursive;
mod dns_reload_load;
mod encrypted;
mod fuzz_request_path;
mod hierarchy_selftest;
mod list_safety;
mod metrics_e2e;
mod proxied;
mod querylog_e2e;
mod sync_axfr;
mod sync_e2e;
