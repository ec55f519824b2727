//! End-to-end list sync: the real binary, a real HTTPS publisher on
//! 127.0.0.1 (rustls, a test CA trusted through `sync.ca_file`), a fake
//! upstream, and the real `dig`. Every publisher fault must leave the
//! previous verdict in force and show its reason in `lists status`.
//!
//! Sync passes are triggered with SIGHUP (which re-reads the configuration,
//! rebuilds from the cache and runs a pass), so no test waits for a timer
//! except the one that tests the timer.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use shieldns_test_support::daemon::{Daemon, ede, require, status};
use shieldns_test_support::publisher::{Mode, Publisher, Signer, names};
use shieldns_test_support::upstream::FakeUpstream;

const TOOLS: &[(&str, &str)] = &[("dig", "bind9-dnsutils")];

/// `@URL_*@`, `@CA@`, `@CACHE@`, `@KEY@`, `@PIN@`, `@REFRESH@` are filled
/// per test; `@PORT@` and `@DIR@` by the daemon support.
const CONFIG: &str = include_str!("fixtures/sync_e2e.toml");

struct Feed {
    publisher: Publisher,
    signer: Signer,
    cache: tempfile::TempDir,
    ca_dir: tempfile::TempDir,
    upstream: FakeUpstream,
    pinned_body: String,
}

impl Feed {
    fn new() -> Self {
        let publisher = Publisher::start();
        let signer = Signer::new();
        let pinned_body = "global.example.test\n".to_owned();
        publisher.put("pinned.txt", pinned_body.clone());
        let feed = Self {
            publisher,
            signer,
            cache: tempfile::tempdir().unwrap(),
            ca_dir: tempfile::tempdir().unwrap(),
            upstream: FakeUpstream::start("127.0.0.1", 300),
            pinned_body,
        };
        feed.publish(&national(&["blocked.example.test"], 100));
        feed
    }

    /// Publishes the national list, correctly signed.
    fn publish(&self, body: &str) {
        self.publisher.put("national.txt", body.to_owned());
        self.publisher
            .put("national.txt.minisig", self.signer.sign(body.as_bytes()));
    }

    fn config(&self, refresh: &str) -> String {
        use sha2::Digest as _;
        let ca = self.publisher.write_ca(self.ca_dir.path());
        CONFIG
            .replace("@UPSTREAM@", &self.upstream.addr.to_string())
            .replace("@CACHE@", &self.cache.path().display().to_string())
            .replace("@CA@", &ca.display().to_string())
            .replace("@URL_NATIONAL@", &self.publisher.url("national.txt"))
            .replace("@URL_PINNED@", &self.publisher.url("pinned.txt"))
            .replace("@KEY@", &self.signer.public_key())
            .replace("@PIN@", &hex::encode(sha2::Sha256::digest(self.pinned_body.as_bytes())))
            .replace("@REFRESH@", refresh)
            .replace(
                "@METRICS@",
                &shieldns_test_support::daemon::free_port("127.0.0.1").to_string(),
            )
    }
}

/// The national list: `extra` names plus `filler` unrelated ones.
fn national(extra: &[&str], filler: usize) -> String {
    let mut body: String = extra.iter().map(|n| format!("{n}\n")).collect();
    body.push_str(&names("filler", filler));
    body
}

fn shieldns(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shieldns"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// `lists status --json` for one list.
fn list_status(daemon: &Daemon, list: &str) -> serde_json::Value {
    let output = shieldns(&["lists", "status", "--json"], &daemon.path("shieldns.toml"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let all: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|l| l["list"] == list)
        .cloned()
        .unwrap()
}

fn assert_blocked(daemon: &Daemon, name: &str, list: &str) {
    let out = daemon.dig(&[name, "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{name}: {out}");
    let ede = ede(&out).unwrap_or_default();
    assert!(ede.contains(&format!("list={list}")), "{name}: {out}");
}

fn assert_resolves(daemon: &Daemon, name: &str) {
    let out = daemon.dig(&[name, "A"]);
    assert_eq!(status(&out), "NOERROR", "{name}: {out}");
}

/// The verdicts of national list version 2 (below), which every fault must
/// leave in force.
fn assert_version_2(daemon: &Daemon) {
    assert_blocked(daemon, "blocked.example.test", "national");
    assert_blocked(daemon, "sub.blocked.example.test", "national");
    assert_blocked(daemon, "reload.example.test", "national");
    assert_blocked(daemon, "global.example.test", "pinned");
    assert_resolves(daemon, "www.example.test");
}

#[test]
fn publisher_faults_keep_the_previous_verdict_and_report_why() {
    if !require(TOOLS) {
        return;
    }
    let feed = Feed::new();
    let daemon = Daemon::start(&feed.config("1h"), &[]);

    // First start: both lists downloaded before serving.
    assert_blocked(&daemon, "blocked.example.test", "national");
    assert_resolves(&daemon, "reload.example.test");
    let national_status = list_status(&daemon, "national");
    assert_eq!(national_status["serial"], 1);
    assert_eq!(national_status["entries"], 101);

    // 200 with a new signed version: in force after one pass (one swap).
    let version_2 = national(&["blocked.example.test", "reload.example.test"], 100);
    feed.publish(&version_2);
    let line = daemon.sync_pass();
    assert!(line.contains("new policy in force"), "{line}");
    assert_version_2(&daemon);
    assert_eq!(list_status(&daemon, "national")["serial"], 2);
    assert_eq!(daemon.log_text().matches("sync: new lists verified").count(), 1);

    // 304: nothing changes, no rebuild.
    let requests = feed.publisher.requests("national.txt").len();
    let line = daemon.sync_pass();
    assert!(line.contains("policy unchanged") && line.contains("failed=0"), "{line}");
    let last = feed.publisher.requests("national.txt");
    assert_eq!(last.len(), requests + 1);
    assert!(last.last().unwrap().0.is_some(), "conditional GET with If-None-Match");
    assert_eq!(daemon.log_text().matches("sync: new lists verified").count(), 1);

    // Each fault: the pass fails, the verdicts stay, the status says why.
    // (fault, how to inject it, what the status must say)
    type Fault<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let faults: Vec<Fault<'_>> = vec![
        (
            "404",
            Box::new(|| feed.publisher.mode("national.txt", Mode::Status(404))),
            "HTTP 404",
        ),
        (
            "500",
            Box::new(|| feed.publisher.mode("national.txt", Mode::Status(500))),
            "HTTP 500",
        ),
        (
            "timeout",
            Box::new(|| feed.publisher.mode("national.txt", Mode::Hang)),
            "timed out",
        ),
        (
            "slow drip",
            Box::new(|| {
                feed.publisher.mode(
                    "national.txt",
                    Mode::SlowDrip {
                        every: Duration::from_millis(50),
                    },
                );
            }),
            "timed out",
        ),
        (
            "truncated",
            Box::new(|| feed.publisher.mode("national.txt", Mode::Truncate)),
            "failed",
        ),
        (
            "over the cap",
            Box::new(|| feed.publisher.mode("national.txt", Mode::Endless)),
            "larger than max_bytes",
        ),
        (
            "garbage",
            Box::new(|| feed.publish("<html><body>\u{1}maintenance</body></html>\n")),
            "no valid domains entries",
        ),
        (
            "bad signature",
            Box::new(|| {
                feed.publisher
                    .put("national.txt", national(&["blocked.example.test"], 150));
            }),
            "does not verify",
        ),
        (
            "60 % shrink",
            Box::new(|| feed.publish(&national(&["blocked.example.test"], 40))),
            "from 102 to 41 entries",
        ),
    ];
    for (fault, inject, reason) in &faults {
        inject();
        let line = daemon.sync_pass();
        assert!(
            line.contains("failed=1") && line.contains("policy unchanged"),
            "{fault}: {line}"
        );
        assert_version_2(&daemon);
        let national_status = list_status(&daemon, "national");
        let failure = national_status["last_failure"]["reason"].as_str().unwrap_or_default();
        assert!(failure.contains(reason), "{fault}: status says {failure:?}");
        assert_eq!(national_status["serial"], 2, "{fault}");
        assert_eq!(national_status["entries"], 102, "{fault}");
    }
    // One count of those failures, told alike by `lists status`, the
    // counter and the compliance report.
    let failed_checks = faults.len() as u64;
    assert_eq!(list_status(&daemon, "national")["consecutive_failures"], failed_checks);
    let config_text = std::fs::read_to_string(daemon.path("shieldns.toml")).unwrap();
    let metrics_port: u16 = config_text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:")?.strip_suffix('"')?.parse().ok())
        .unwrap();
    let counted: f64 = shieldns_test_support::daemon::scrape(metrics_port)
        .lines()
        .filter(|l| l.starts_with("shieldns_sync_failures_total{") && l.contains("list=\"national\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as u64, failed_checks);
    std::thread::sleep(Duration::from_millis(600));
    let today = jiff::Timestamp::now().to_string();
    let output = shieldns(
        &[
            "report",
            "--from",
            &today[..10],
            "--to",
            &today[..10],
            "--format",
            "json",
        ],
        &daemon.path("shieldns.toml"),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let national_row = report["mandatory_lists"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["list"] == "national")
        .cloned()
        .unwrap();
    assert_eq!(national_row["sync_failures"], failed_checks, "{report:#}");

    // A pinned list whose bytes change: refused.
    feed.publish(&version_2);
    feed.publisher.put("pinned.txt", "other.example.test\n");
    let line = daemon.sync_pass();
    assert!(line.contains("failed=1"), "{line}");
    assert_version_2(&daemon);
    let pinned = list_status(&daemon, "pinned");
    assert!(
        pinned["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("sha256 mismatch"),
        "{pinned}"
    );
    // The national list came back to version 2's bytes: a success again.
    let national_status = list_status(&daemon, "national");
    assert!(national_status["last_success"].as_str() >= national_status["last_failure"]["at"].as_str());

    // The operator forces the shrink with `lists update --force`; SIGHUP
    // puts it in force.
    let shrunk = national(&["blocked.example.test"], 40);
    feed.publish(&shrunk);
    let config = daemon.path("shieldns.toml");
    let output = shieldns(&["lists", "update"], &config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "a mandatory list failed: {stdout}");
    assert!(
        stdout.contains("national: FAILED") && stdout.contains("--force national"),
        "{stdout}"
    );
    let output = shieldns(&["lists", "update", "--force", "national"], &config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("national: updated: 41 entries (was 102)"), "{stdout}");
    let line = daemon.sync_pass();
    assert!(line.contains("failed=1"), "the pin still fails: {line}");
    assert_blocked(&daemon, "blocked.example.test", "national");
    assert_resolves(&daemon, "reload.example.test");

    let text = shieldns(&["lists", "status"], &config);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("national  (url, mandatory)") && text.contains("serial 3"),
        "{text}"
    );
    assert!(
        text.contains("last failure:") && text.contains("sha256 mismatch"),
        "{text}"
    );
}

#[test]
fn a_restart_with_the_publisher_down_enforces_the_cached_lists() {
    if !require(TOOLS) {
        return;
    }
    let feed = Feed::new();
    let config = feed.config("1h");
    let daemon = Daemon::start(&config, &[]);
    assert_blocked(&daemon, "blocked.example.test", "national");
    assert_eq!(daemon.stop(), Some(0));
    let Feed {
        publisher,
        signer: _signer,
        cache,
        ca_dir: _ca_dir,
        upstream: _upstream,
        pinned_body: _,
    } = feed;
    publisher.stop();

    // The publisher is gone: the cached, verified copies are enforced from
    // the first query.
    let daemon = Daemon::start(&config, &[]);
    assert_blocked(&daemon, "blocked.example.test", "national");
    assert_blocked(&daemon, "global.example.test", "pinned");
    assert_resolves(&daemon, "www.example.test");
    let line = daemon.sync_pass();
    assert!(line.contains("failed=2"), "{line}");
    assert_blocked(&daemon, "blocked.example.test", "national");
    let national_status = list_status(&daemon, "national");
    let reason = national_status["last_failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("download from") && reason.contains("failed"),
        "{reason}"
    );
    assert_eq!(national_status["serial"], 1);
    drop(daemon);

    // A first start with no cached copy and no publisher cannot enforce the
    // mandatory list: it refuses to start, naming the list.
    // (A first boot: the cache directory does not exist yet.)
    let empty_cache = tempfile::tempdir().unwrap();
    let first_cache = empty_cache.path().join("lists");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shieldns.toml");
    let port = shieldns_test_support::daemon::free_port("127.0.0.1");
    std::fs::write(
        &path,
        config
            .replace(&cache.path().display().to_string(), &first_cache.display().to_string())
            .replace("@PORT@", &port.to_string())
            .replace("@DIR@", &dir.path().display().to_string()),
    )
    .unwrap();
    let output = shieldns(&["run"], &path);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("list `national`: no verified copy"), "{stderr}");
    assert!(!stderr.contains("cannot record"), "{stderr}");
    // The failed first download is on record for the operator.
    let status = shieldns(&["lists", "status", "--json"], &path);
    let all: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let national_row = all
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["list"] == "national")
        .unwrap();
    assert!(
        national_row["last_failure"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("download from")),
        "{national_row}"
    );
}

#[test]
fn lists_refresh_on_their_own_schedule() {
    if !require(TOOLS) {
        return;
    }
    let feed = Feed::new();
    let daemon = Daemon::start(&feed.config("1s"), &[]);
    assert_resolves(&daemon, "reload.example.test");
    feed.publish(&national(&["blocked.example.test", "reload.example.test"], 100));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = daemon.dig(&["reload.example.test", "A"]);
        if status(&out) == "NXDOMAIN" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 1s refresh never applied the update:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_blocked(&daemon, "reload.example.test", "national");
}

#[test]
fn sighup_adopts_a_new_url_list_once_it_is_downloaded() {
    if !require(TOOLS) {
        return;
    }
    let feed = Feed::new();
    let config = feed.config("1h");
    let daemon = Daemon::start(&config, &[]);
    assert_resolves(&daemon, "www.example.test");

    // A new, non-mandatory list: the reload enforces it empty (it has no
    // verified copy yet), the pass that SIGHUP starts downloads it, and the
    // rebuild it triggers puts it in force.
    feed.publisher.put("extra.txt", "www.example.test\n");
    let text = std::fs::read_to_string(daemon.path("shieldns.toml")).unwrap();
    let extra = format!(
        "{text}\n[[list]]\nname = \"extra\"\nformat = \"domains\"\nurl = \"{}\"\n",
        feed.publisher.url("extra.txt")
    );
    std::fs::write(daemon.path("shieldns.toml"), extra).unwrap();
    let line = daemon.sync_pass();
    assert!(
        line.contains("new policy in force") && line.contains("lists=3"),
        "{line}"
    );
    assert_blocked(&daemon, "www.example.test", "extra");
    assert_blocked(&daemon, "blocked.example.test", "national");
    let log = daemon.log_text();
    assert!(
        log.contains("no verified copy yet: empty until the first successful download"),
        "{log}"
    );
}
