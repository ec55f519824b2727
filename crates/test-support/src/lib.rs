//! shieldns-test-support: the real parts the end-to-end tests drive.
//!
//! - [`daemon`]: the real `shieldns` binary as a child process, queried with
//!   the real `dig`, and its configuration and file fixtures.
//! - [`hierarchy`]: a fake DNS hierarchy (root, TLDs, zones) served by nsd,
//!   optionally signed with ldns-signzone, for recursion tests.
//! - [`upstream`]: a fake forwarding target with fixed answers.
//! - [`publisher`]: a loopback HTTPS list publisher with a test CA and
//!   fault injection, for list sync tests.
//! - [`tls`]: the test CA and the certificates it issues; [`doq`]: a DNS
//!   over QUIC client.
//!
//! Key design decision: test code only, never a dependency of the product
//! (only `[dev-dependencies]` name it), so it may panic on setup failures:
//! a panic is the test's failure report.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

pub mod daemon;
pub mod doq;
pub mod hierarchy;
pub mod publisher;
pub mod tls;
pub mod upstream;

use std::path::PathBuf;

/// The `shieldns` binary cargo built for the running test: next to the
/// test executable's `deps/` directory (`target/<profile>/shieldns`).
pub fn shieldns() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    profile_dir.join("shieldns")
}
