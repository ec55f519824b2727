//! Reload under load: `dnsperf` queries the running daemon while the test
//! sends SIGHUP 20 times, swapping lists that change verdicts. Nothing may be
//! lost or answered SERVFAIL, and the last lists' verdicts are served after.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use shieldns_test_support::daemon::{Daemon, require, status};
use shieldns_test_support::upstream::FakeUpstream;

const CONFIG: &str = include_str!("fixtures/dns_reload_load.toml");

/// A list of `filler` synthetic names plus the names that flip verdicts.
fn list(flip: &str, filler: usize) -> String {
    let mut text = String::with_capacity(filler * 24);
    for i in 0..filler {
        writeln!(text, "filler{i}.example.net").ok();
    }
    writeln!(text, "{flip}").ok();
    text
}

#[test]
fn twenty_reloads_under_load_lose_nothing() {
    if !require(&[("dig", "bind9-dnsutils"), ("dnsperf", "dnsperf")]) {
        return;
    }
    const FILLER: usize = 200_000;
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let config = CONFIG.replace("@UPSTREAM@", &upstream.addr.to_string());
    let daemon = Daemon::start(&config, &[("adult.txt", &list("blocked.example.test", FILLER))]);

    let mut queries = String::new();
    for name in [
        "www.example.test",
        "blocked.example.test",
        "allowed.example.test",
        "reload.example.test",
    ] {
        writeln!(queries, "{name} A").ok();
        writeln!(queries, "{name} AAAA").ok();
    }
    for i in 0..50 {
        writeln!(queries, "filler{i}.example.net A").ok();
    }
    std::fs::write(daemon.path("queries.txt"), queries).unwrap();
    let dnsperf = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &daemon.addr.port().to_string(), "-d"])
        .arg(daemon.path("queries.txt"))
        .args(["-l", "12", "-Q", "2000", "-c", "4", "-t", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dnsperf");
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..20 {
        let flip = if round % 2 == 0 {
            "reload.example.test"
        } else {
            "blocked.example.test"
        };
        std::fs::write(daemon.path("adult.txt"), list(flip, FILLER)).unwrap();
        assert!(daemon.reload(), "reload {round} failed:\n{}", daemon.log_text());
    }
    let output = dnsperf.wait_with_output().expect("dnsperf finished");
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("{report}");
    let lost = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries lost:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("dnsperf reports lost queries");
    let completed = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries completed:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("dnsperf reports completed queries");
    assert_eq!(lost, 0, "{report}");
    assert!(completed > 5_000, "too little load to mean anything: {report}");
    assert!(!report.contains("SERVFAIL"), "{report}");
    assert!(
        report.contains("NXDOMAIN"),
        "blocked names were answered during the run: {report}"
    );

    // The last round (19, odd) listed blocked.example.test, not reload.
    assert_eq!(status(&daemon.dig(&["blocked.example.test", "A"])), "NXDOMAIN");
    assert_eq!(status(&daemon.dig(&["reload.example.test", "A"])), "NOERROR");
}
