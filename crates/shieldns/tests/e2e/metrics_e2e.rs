//! End-to-end tests of the live metrics, the compliance store and
//! `shieldns report`: the real binary on loopback, a fake upstream, the real
//! `dig`, exact counter values scraped from `/metrics`, `promtool check
//! metrics` when installed, and a report after a restart.

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use shieldns_test_support::daemon::{Daemon, free_port, have, require, status};
use shieldns_test_support::upstream::FakeUpstream;

const CONFIG: &str = include_str!("fixtures/metrics_e2e.toml");

const FILES: &[(&str, &str)] = &[
    ("csam.txt", "mandatory.example.test\n"),
    ("adult.txt", "blocked.example.test\nother-adult.example.test\n"),
];

fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn config(upstream: &FakeUpstream, metrics: u16, store: &std::path::Path) -> String {
    CONFIG
        .replace("@UPSTREAM@", &upstream.addr.to_string())
        .replace("@METRICS@", &metrics.to_string())
        .replace("@STORE@", &store.display().to_string())
}

#[test]
fn known_traffic_gives_exact_counters_and_a_report_after_restart() {
    if !require(&[("dig", "bind9-dnsutils")]) {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let metrics_port = free_port("127.0.0.1");
    let store = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&config(&upstream, metrics_port, store.path()), FILES);

    // Over TCP every query takes the handler's path; the UDP queries below
    // are ones the UDP fast path hands to the handler too (ACL refusals,
    // first sight of a name), so every count is exact.
    for _ in 0..2 {
        assert_eq!(status(&daemon.dig(&["+tcp", "blocked.example.test", "A"])), "NXDOMAIN");
        assert_eq!(status(&daemon.dig(&["+tcp", "www.example.test", "A"])), "NOERROR");
    }
    assert_eq!(
        status(&daemon.dig(&["+tcp", "mandatory.example.test", "A"])),
        "NXDOMAIN"
    );
    assert_eq!(
        status(&daemon.dig(&["+tcp", "-b", "127.0.0.2", "mandatory.example.test", "A"])),
        "NXDOMAIN"
    );
    assert_eq!(
        status(&daemon.dig(&["-b", "127.0.0.2", "allowed.example.test", "A"])),
        "NOERROR"
    );
    assert_eq!(
        status(&daemon.dig(&["-b", "127.0.0.200", "www.example.test", "A"])),
        "REFUSED"
    );
    assert!(daemon.reload());

    let body = scrape(metrics_port);
    for line in [
        r#"shieldns_resolver_queries_total{profile="default",protocol="tcp",rcode="NXDOMAIN"} 3"#,
        r#"shieldns_resolver_queries_total{profile="default",protocol="tcp",rcode="NOERROR"} 2"#,
        r#"shieldns_resolver_queries_total{profile="staff",protocol="tcp",rcode="NXDOMAIN"} 1"#,
        r#"shieldns_resolver_queries_total{profile="staff",protocol="udp",rcode="NOERROR"} 1"#,
        r#"shieldns_resolver_queries_total{profile="none",protocol="udp",rcode="REFUSED"} 1"#,
        r#"shieldns_policy_list_blocks_total{category="adult",ede="17",list="adult",profile="default"} 2"#,
        r#"shieldns_policy_list_blocks_total{category="csam",ede="16",list="national-csam",profile="default"} 1"#,
        r#"shieldns_policy_list_blocks_total{category="csam",ede="16",list="national-csam",profile="staff"} 1"#,
        r#"shieldns_policy_blocked_total{ede="16"} 2"#,
        // Over TCP the stream transports' packet cache answers the repeated
        // name: one hit; the two other allowed answers come from libunbound.
        r#"shieldns_cache_lookups_total{result="hit"} 1"#,
        r#"shieldns_cache_lookups_total{result="miss"} 2"#,
        "shieldns_upstream_duration_seconds_count 2",
        r#"shieldns_resolver_response_duration_seconds_count{protocol="tcp"} 6"#,
        r#"shieldns_list_entries{list="adult"} 2"#,
        r#"shieldns_list_mandatory{list="national-csam"} 1"#,
        r#"shieldns_daemon_reloads_total{result="success"} 1"#,
        r#"shieldns_daemon_reloads_total{result="failure"} 0"#,
        r#"shieldns_build_info{version="0.1.0"} 1"#,
    ] {
        assert!(body.lines().any(|l| l == line), "missing `{line}` in:\n{body}");
    }
    assert!(
        body.lines()
            .any(|l| l.starts_with(r#"shieldns_list_version_age_seconds{list="adult"} "#)),
        "{body}"
    );
    // No label ever carries a client address or a query name.
    assert!(!body.contains("127.0.0") && !body.contains("example.test"), "{body}");

    if have("promtool") {
        let path = daemon.path("metrics.txt");
        std::fs::write(&path, &body).unwrap();
        let output = Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", path.display()))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        eprintln!("SKIP: promtool check metrics: promtool is not installed (apt-get install prometheus)");
    }

    // Let one flush pass, stop, start again on the same store: the rollups
    // are still there and the report counts both runs.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(daemon.stop(), Some(0));
    let daemon = Daemon::start(&config(&upstream, free_port("127.0.0.1"), store.path()), FILES);
    assert_eq!(
        status(&daemon.dig(&["+tcp", "other-adult.example.test", "A"])),
        "NXDOMAIN"
    );
    std::thread::sleep(Duration::from_millis(800));

    let today = jiff::Timestamp::now().to_string();
    let today = &today[..10];
    let report = |format: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_shieldns"))
            .args(["report", "--from", today, "--to", today, "--format", format, "--config"])
            .arg(daemon.path("shieldns.toml"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&report("json")).unwrap();
    assert_eq!(json["total_queries"], 9, "{json:#}");
    assert_eq!(json["total_blocked"], 5, "{json:#}");
    assert_eq!(json["blocked_per_list"]["adult"], 3, "{json:#}");
    assert_eq!(json["blocked_per_list"]["national-csam"], 2, "{json:#}");
    assert_eq!(json["blocked_per_category"]["csam"], 2, "{json:#}");
    assert_eq!(json["blocked_per_profile"]["staff"], 1, "{json:#}");
    assert_eq!(json["restarts"], 2, "{json:#}");
    assert_eq!(json["reloads_ok"], 1, "{json:#}");
    // The store was created seconds ago: the hours of the day before the
    // first start are not downtime (counted, availability was under 0.1 %).
    // The store keeps whole seconds, so over a span of a few seconds with a
    // restart in it the figure is coarse: a third or more.
    let availability = json["availability_percent"].as_f64().unwrap();
    assert!(availability > 20.0 && availability <= 100.0, "{json:#}");
    assert!(
        json["measured_from"]
            .as_str()
            .is_some_and(|from| from > json["from"].as_str().unwrap()),
        "{json:#}"
    );
    let mandatory = json["mandatory_lists"].as_array().unwrap();
    assert_eq!(mandatory.len(), 1, "{json:#}");
    assert_eq!(mandatory[0]["list"], "national-csam");
    let profiles: Vec<&str> = json["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(profiles.contains(&"staff") && profiles.contains(&"default"), "{json:#}");
    assert!(
        json["list_versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["list"] == "adult"),
        "{json:#}"
    );

    let markdown = report("md");
    assert!(markdown.contains("| Total queries | 9 |"), "{markdown}");
    assert!(markdown.contains("| Operator | Example Provincial ISP |"), "{markdown}");
    assert_eq!(json["header"]["operator"], "Example Provincial ISP", "{json:#}");
    assert!(markdown.contains("| adult | 3 |"), "{markdown}");
    let csv = report("csv");
    assert!(csv.lines().any(|l| l == "blocked_per_list,national-csam,2"), "{csv}");
    let html = report("html");
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg"), "{html}");
    assert!(html.contains("<td id=\"total-queries\">9</td>"), "{html}");
    assert!(
        !html.contains("<script") && !html.contains("src=\"http"),
        "not self-contained: {html}"
    );
    check_in_chromium(&html);
}

/// Renders the HTML report in headless Chromium: the DOM it builds keeps
/// the charts and the figures, and the page prints to a PDF.
fn check_in_chromium(html: &str) {
    let Some(chromium) = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| shieldns_test_support::daemon::have(c))
    else {
        eprintln!("SKIP: headless Chromium check: chromium is not installed (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(&page, html).unwrap();
    let pdf = dir.path().join("report.pdf");
    let run = |extra: &[String]| {
        let output = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
            .args(extra)
            .arg(format!("file://{}", page.display()))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let dom = run(&["--dump-dom".to_owned()]);
    assert!(
        dom.contains("<svg") && dom.contains("id=\"total-queries\">9</td>"),
        "{dom}"
    );
    // Every section of the Markdown report, and the header a regulator
    // needs, in the DOM Chromium built.
    for id in [
        "report",
        "service",
        "queries-per-day",
        "blocked-per-category",
        "blocked-per-list",
        "blocked-per-profile",
        "mandatory-lists",
        "sync-failures",
        "profiles",
        "list-versions",
    ] {
        assert!(
            dom.contains(&format!("<section id=\"{id}\">")),
            "no section {id}: {dom}"
        );
    }
    for id in [
        "operator",
        "host",
        "generated-at",
        "version",
        "measured",
        "up",
        "availability",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\">")), "no {id}: {dom}");
    }
    run(&[
        format!("--print-to-pdf={}", pdf.display()),
        "--no-pdf-header-footer".to_owned(),
    ]);
    let printed = std::fs::read(&pdf).unwrap();
    assert!(
        printed.starts_with(b"%PDF") && printed.len() > 2_000,
        "printed {} bytes",
        printed.len()
    );
}

#[test]
fn deploy_rules_and_dashboard_are_valid() {
    let root = shieldns_test_support::daemon::repo_root();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana/shieldns.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    // Every panel queries a metric the daemon exports.
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            assert!(target["expr"].as_str().unwrap().contains("shieldns_"), "{panel}");
        }
    }
    if !have("promtool") {
        eprintln!("SKIP: promtool check rules: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(root.join("deploy/prometheus/shieldns-alerts.yml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
