//! End-to-end tests of the child-protection policy: safe search,
//! schedules, CNAME cloaking, answer-IP lists, rebinding protection, bypass
//! defences, blocked query types and DNS64, each allowed once and blocked or
//! rewritten once, verified with `dig` against the real binary.

use std::time::Duration;

use shieldns_test_support::daemon::{Daemon, answers, ede, require, status};
use shieldns_test_support::upstream::FakeUpstream;

const CONFIG: &str = include_str!("fixtures/dns_policy.toml");

const FILES: &[(&str, &str)] = &[
    ("ads.txt", "adnet.test\n"),
    ("games.txt", "games.example.test\n"),
    ("bad-ips.txt", "# answer addresses to block\n198.51.100.0/24\n"),
];

/// Starts the daemon with its policy clock at `clock` (RFC 3339).
fn start(upstream: &FakeUpstream, clock: &str) -> Daemon {
    let config = CONFIG.replace("@UPSTREAM@", &upstream.addr.to_string());
    Daemon::start_with_env(
        tempfile::tempdir().unwrap(),
        &config,
        FILES,
        &[("SHIELDNS_CLOCK", clock)],
    )
}

fn skip() -> bool {
    !require(&[("dig", "bind9-dnsutils")])
}

#[test]
fn safe_search_rewrites_by_cname_resolved_live() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&upstream, "2026-11-29T10:00:00+07:00");
    let out = daemon.dig(&["www.google.com.vn", "A"]);
    assert_eq!(
        answers(&out),
        [
            "www.google.com.vn. 60 IN CNAME forcesafesearch.google.com.",
            "forcesafesearch.google.com. 300 IN A 216.239.38.120"
        ],
        "{out}"
    );
    let out = daemon.dig(&["m.youtube.com", "A"]);
    assert!(
        out.contains("CNAME\trestrictmoderate.youtube.com.") && out.contains("216.239.38.119"),
        "{out}"
    );
    let out = daemon.dig(&["www.bing.com", "A"]);
    assert!(out.contains("CNAME\tstrict.bing.com."), "{out}");
    // Other Google hosts and other clients' profiles are not rewritten.
    let out = daemon.dig(&["mail.google.com", "A"]);
    assert!(!out.contains("forcesafesearch"), "{out}");
    let out = daemon.dig(&["-b", "127.0.0.9", "www.google.com.vn", "A"]);
    assert!(!out.contains("forcesafesearch"), "{out}");
}

#[test]
fn schedules_change_verdicts_at_the_window_edge_without_a_reload() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    // Monday 30 November 2026, two seconds before school starts.
    let daemon = start(&upstream, "2026-11-30T07:59:58+07:00");
    let out = daemon.dig(&["games.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "before the window: {out}");
    std::thread::sleep(Duration::from_millis(2500));
    let out = daemon.dig(&["games.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "inside the window: {out}");
    assert_eq!(
        ede(&out).as_deref(),
        Some("; EDE: 17 (Filtered): (list=games category=games)"),
        "{out}"
    );

    // Saturday: the weekday schedule is closed all day.
    let weekend = start(&upstream, "2026-12-05T10:00:00+07:00");
    assert_eq!(status(&weekend.dig(&["games.example.test", "A"])), "NOERROR");
}

#[test]
fn cname_cloaking_and_answer_ips_are_blocked() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&upstream, "2026-11-29T10:00:00+07:00");
    let out = daemon.dig(&["cloaked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(
        ede(&out).as_deref(),
        Some("; EDE: 17 (Filtered): (list=ads category=ads cname=tracker.adnet.test)"),
        "{out}"
    );
    let out = daemon.dig(&["bad-ip.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(
        ede(&out).is_some_and(|e| e.contains("list=bad-ips") && e.contains("ip=198.51.100.66")),
        "{out}"
    );
    // The open profile does not block ads: both resolve.
    let out = daemon.dig(&["-b", "127.0.0.9", "cloaked.example.test", "A"]);
    assert_eq!(answers(&out).len(), 2, "{out}");
    let out = daemon.dig(&["-b", "127.0.0.9", "bad-ip.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
}

#[test]
fn rebinding_bypass_and_query_types() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&upstream, "2026-11-29T10:00:00+07:00");
    let out = daemon.dig(&["rebind.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert_eq!(
        ede(&out).as_deref(),
        Some("; EDE: 15 (Blocked): (policy=rebinding-protection ip=10.0.0.1)"),
        "{out}"
    );
    let out = daemon.dig(&["nas.home.arpa", "A"]);
    assert_eq!(
        answers(&out),
        ["nas.home.arpa. 300 IN A 192.168.1.10"],
        "local domains are exempt: {out}"
    );

    let out = daemon.dig(&["use-application-dns.net", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(ede(&out).is_some_and(|e| e.contains("firefox-canary")), "{out}");
    let out = daemon.dig(&["mask.icloud.com", "AAAA"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    let out = daemon.dig(&["_dns.resolver.arpa", "TYPE64"]);
    assert_eq!((status(&out), answers(&out).len()), ("NOERROR", 0), "{out}");
    assert!(ede(&out).is_some_and(|e| e.contains("ddr")), "{out}");

    let out = daemon.dig(&["www.example.test", "HTTPS"]);
    assert_eq!((status(&out), answers(&out).len()), ("NOERROR", 0), "{out}");
    assert!(
        ede(&out).is_some_and(|e| e.contains("policy=block-qtypes type=HTTPS")),
        "{out}"
    );
    // The open profile has none of these defences.
    let out = daemon.dig(&["-b", "127.0.0.9", "rebind.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    let out = daemon.dig(&["-b", "127.0.0.9", "use-application-dns.net", "A"]);
    assert!(ede(&out).is_none(), "{out}");
}

#[test]
fn dns64_synthesizes_aaaa_for_ipv4_only_names() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&upstream, "2026-11-29T10:00:00+07:00");
    let out = daemon.dig(&["v4only.example.test", "AAAA"]);
    assert_eq!(
        answers(&out),
        ["v4only.example.test. 300 IN AAAA 64:ff9b::c000:221"],
        "{out}"
    );
    // A name with real AAAA records keeps them.
    let out = daemon.dig(&["www.example.test", "AAAA"]);
    assert_eq!(answers(&out), ["www.example.test. 300 IN AAAA 2001:db8::10"], "{out}");
    // Never for blocked names, and never for rebinding answers.
    let out = daemon.dig(&["tracker.adnet.test", "AAAA"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    let out = daemon.dig(&["rebind.example.test", "AAAA"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    // Not for profiles without DNS64.
    let out = daemon.dig(&["-b", "127.0.0.9", "v4only.example.test", "AAAA"]);
    assert_eq!((status(&out), answers(&out).len()), ("NOERROR", 0), "{out}");
}

#[test]
fn explain_names_the_cause_of_each_policy_verdict() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in FILES {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let config = CONFIG
        .replace("@UPSTREAM@", "127.0.0.1:53")
        .replace("@DIR@", &dir.path().display().to_string());
    let path = dir.path().join("shieldns.toml");
    std::fs::write(&path, config.replace("@PORT@", "5353")).unwrap();
    let explain = |args: &[&str]| -> serde_json::Value {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_shieldns"))
            .arg("explain")
            .args(args)
            .arg("--config")
            .arg(&path)
            .arg("--json")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let report = explain(&["games.example.test", "--at", "2026-11-30T09:00:00+07:00"]);
    assert_eq!(report["verdict"], "block");
    assert_eq!(report["schedule"], "08:00-16:30 Asia/Ho_Chi_Minh");
    assert_eq!(report["ede"], 17);
    let report = explain(&["games.example.test", "--at", "2026-11-30T16:30:00+07:00"]);
    assert_eq!(report["verdict"], "allow");
    let why = report["matches"][0]["why"].as_str().unwrap_or_default();
    assert!(
        report["matches"][0]["applies"] == false
            && why.contains("only in its schedule 08:00-16:30")
            && why.contains("closed"),
        "{report}"
    );

    let report = explain(&["www.youtube.com"]);
    assert_eq!(
        (report["verdict"].as_str(), report["policy"].as_str()),
        (Some("rewrite"), Some("safe_search"))
    );
    assert_eq!(report["rewrite_to"], "restrictmoderate.youtube.com");
    let report = explain(&["use-application-dns.net"]);
    assert_eq!(report["policy"], "bypass_protection");
    let report = explain(&["www.example.test", "--qtype", "https"]);
    assert_eq!(
        (report["verdict"].as_str(), report["policy"].as_str()),
        (Some("block"), Some("block_qtypes"))
    );
    let report = explain(&["www.example.test"]);
    assert_eq!(report["verdict"], "allow");
    assert_eq!(report["rebinding_protection"], true);
    assert_eq!(report["dns64_prefix"], "64:ff9b::/96");
    assert_eq!(report["inspect_cnames"], true);
}
