//! RPZ by zone transfer: the real binary takes an RPZ zone from Debian's
//! `nsd` on 127.0.0.1 (AXFR, TSIG-signed), follows SOA serial bumps that add
//! and remove names, and keeps the zone in force when a transfer is
//! refused. NSD 4.6 answers IXFR with the full zone, which exercises the
//! full-answer path; the incremental path is unit-tested in the sync crate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shieldns_test_support::daemon::{Daemon, dig_at, ede, free_port, require, status};
use shieldns_test_support::hierarchy::find_tool;
use shieldns_test_support::upstream::FakeUpstream;

const SECRET: &str = "c2hpZWxkbnMgdGVzdCB0c2lnIHNlY3JldCAwMTIzNDU2Nzg5";
const WRONG_SECRET: &str = "d3Jvbmcgc2VjcmV0IHdyb25nIHNlY3JldCB3cm9uZyBzZWNy";

/// One `nsd -d` serving `rpz.test` on 127.0.0.1, transfers allowed with
/// the TSIG key `xfr-key`.
struct Nsd {
    child: Child,
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
}

impl Nsd {
    fn start(nsd: &Path, zone: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port("127.0.0.1");
        let d = |f: &str| dir.path().join(f).display().to_string();
        std::fs::write(d("rpz.zone"), zone).unwrap();
        let conf = format!(
            "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  do-ip4: yes\n  do-ip6: no\n  \
             username: \"\"\n  chroot: \"\"\n  zonesdir: \"{dir}\"\n  pidfile: \"{pid}\"\n  database: \"\"\n  \
             zonelistfile: \"{zonelist}\"\n  xfrdfile: \"{xfrd}\"\n  xfrdir: \"{dir}\"\n  logfile: \"{log}\"\n  \
             verbosity: 2\n  server-count: 1\nremote-control:\n  control-enable: no\n\
             key:\n  name: \"xfr-key\"\n  algorithm: hmac-sha256\n  secret: \"{SECRET}\"\n\
             zone:\n  name: \"rpz.test\"\n  zonefile: \"{zonefile}\"\n  provide-xfr: 127.0.0.1 xfr-key\n",
            dir = dir.path().display(),
            pid = d("nsd.pid"),
            zonelist = d("zone.list"),
            xfrd = d("xfrd.state"),
            log = d("nsd.log"),
            zonefile = d("rpz.zone"),
        );
        std::fs::write(d("nsd.conf"), conf).unwrap();
        let child = Command::new(nsd)
            .args(["-d", "-c"])
            .arg(d("nsd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d("stderr")).unwrap())
            .spawn()
            .unwrap();
        let nsd = Self {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        nsd.wait_serial(1);
        nsd
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Rewrites the zone and has nsd reload it (SIGHUP).
    fn publish(&self, zone: &str, serial: u32) {
        std::fs::write(self.path("rpz.zone"), zone).unwrap();
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_serial(serial);
    }

    fn wait_serial(&self, serial: u32) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = dig_at(self.addr, &["rpz.test", "SOA", "+short"]);
            if out.split_whitespace().nth(2) == Some(&serial.to_string()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nsd does not serve serial {serial}: {out}\n{}",
                std::fs::read_to_string(self.path("nsd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn zone(serial: u32, names: &[&str]) -> String {
    let mut text = format!(
        "$ORIGIN rpz.test.\n$TTL 60\n@ SOA ns.rpz.test. admin.rpz.test. {serial} 3600 600 86400 60\n@ NS ns.rpz.test.\n"
    );
    for name in names {
        text.push_str(&format!("{name} CNAME .\n"));
    }
    text
}

fn config(upstream: &FakeUpstream, nsd: &Nsd, cache: &Path, secret: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:@PORT@"]
allow = ["127.0.0.0/8"]

[upstream]
mode = "forward"
# The fake upstream serves unsigned test. data.
dnssec = false
resolve_local_zones = ["test."]
forward = ["{upstream}"]
timeout_ms = 400

[sync]
cache_dir = "{cache}"
connect_timeout = "1s"
timeout = "2s"
retries = 0

[[list]]
name = "rpz"
format = "rpz"
source = "axfr://{nsd}/rpz.test"
tsig = "hmac-sha256:xfr-key:{secret}"
mandatory = true

[[profile]]
name = "default"
clients = ["0.0.0.0/0"]
block = []
"#,
        upstream = upstream.addr,
        cache = cache.display(),
        nsd = nsd.addr,
    )
}

fn status_of(daemon: &Daemon) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_shieldns"))
        .args(["lists", "status", "--json", "--config"])
        .arg(daemon.path("shieldns.toml"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let all: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    all[0].clone()
}

fn blocked(daemon: &Daemon, name: &str) -> bool {
    let out = daemon.dig(&[name, "A"]);
    match status(&out) {
        "NXDOMAIN" => {
            assert!(ede(&out).unwrap_or_default().contains("list=rpz"), "{out}");
            true
        }
        "NOERROR" => false,
        other => panic!("{name}: {other}: {out}"),
    }
}

#[test]
fn rpz_by_zone_transfer_follows_serial_bumps_and_survives_refusals() {
    if !require(&[("dig", "bind9-dnsutils")]) {
        return;
    }
    let Some(nsd_binary) = find_tool("nsd") else {
        eprintln!("SKIP: nsd is not installed (apt-get install nsd)");
        return;
    };
    let nsd = Nsd::start(&nsd_binary, &zone(1, &["blocked.example.test", "www.example.test"]));
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let cache = tempfile::tempdir().unwrap();
    let text = config(&upstream, &nsd, cache.path(), SECRET);
    let daemon = Daemon::start(&text, &[]);

    // The first transfer (AXFR, TSIG-signed) happened before serving.
    assert!(blocked(&daemon, "blocked.example.test"));
    assert!(blocked(&daemon, "www.example.test"));
    assert!(!blocked(&daemon, "reload.example.test"));
    let status = status_of(&daemon);
    assert!(status["version"].as_str().unwrap().contains("SOA serial 1"), "{status}");
    assert_eq!(status["entries"], 2);

    // An unchanged serial: no transfer, no rebuild.
    let line = daemon.sync_pass();
    assert!(line.contains("policy unchanged") && line.contains("failed=0"), "{line}");

    // Serial 2 removes www and adds reload.
    nsd.publish(&zone(2, &["blocked.example.test", "reload.example.test"]), 2);
    let line = daemon.sync_pass();
    assert!(line.contains("new policy in force"), "{line}");
    assert!(blocked(&daemon, "reload.example.test"));
    assert!(!blocked(&daemon, "www.example.test"));
    assert!(status_of(&daemon)["version"].as_str().unwrap().contains("SOA serial 2"));

    // Serial 3, but our TSIG key is wrong: the transfer is refused and
    // serial 2 stays in force.
    nsd.publish(&zone(3, &["blocked.example.test"]), 3);
    std::fs::write(
        daemon.path("shieldns.toml"),
        text.replace(SECRET, WRONG_SECRET)
            .replace("@PORT@", &daemon.addr.port().to_string()),
    )
    .unwrap();
    let line = daemon.sync_pass();
    assert!(line.contains("failed=1") && line.contains("policy unchanged"), "{line}");
    assert!(blocked(&daemon, "reload.example.test"));
    let status = status_of(&daemon);
    let reason = status["last_failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("zone transfer") && reason.contains("TSIG verification failed"),
        "{reason}"
    );
    assert!(status["version"].as_str().unwrap().contains("SOA serial 2"), "{status}");

    // The right key again: serial 3.
    std::fs::write(
        daemon.path("shieldns.toml"),
        text.replace("@PORT@", &daemon.addr.port().to_string()),
    )
    .unwrap();
    let line = daemon.sync_pass();
    assert!(line.contains("new policy in force"), "{line}");
    assert!(!blocked(&daemon, "reload.example.test"));
    assert!(blocked(&daemon, "blocked.example.test"));

    // A restart with nsd gone: the cached zone is enforced at once.
    assert_eq!(daemon.stop(), Some(0));
    drop(nsd);
    let daemon = Daemon::start(&text, &[]);
    assert!(blocked(&daemon, "blocked.example.test"));
    assert!(!blocked(&daemon, "reload.example.test"));
}
