//! The syncer against a real HTTPS publisher on 127.0.0.1: conditional GET,
//! gzip, retries, timeouts, the size cap, integrity checks, the shrink
//! guard and the last-known-good cache.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::path::Path;
use std::time::{Duration, Instant};

use shieldns_sync::{ListConfig, NoProgress, Outcome, PassReport, SyncConfig, Syncer, read_list};
use shieldns_test_support::publisher::{Mode, Publisher, Signer, names};

/// Parses `[sync]` plus `[[list]]` tables the way the binary does.
#[derive(serde::Deserialize)]
struct Config {
    #[serde(default)]
    sync: SyncConfig,
    #[serde(rename = "list")]
    lists: Vec<ListConfig>,
}

struct Setup {
    dir: tempfile::TempDir,
    config: Config,
}

impl Setup {
    fn new(publisher: &Publisher, lists: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = publisher.write_ca(dir.path());
        Self::with_dir(dir, &ca, lists)
    }

    fn with_dir(dir: tempfile::TempDir, ca: &Path, lists: &str) -> Self {
        let text = format!(
            "[sync]\ncache_dir = \"cache\"\nca_file = \"{}\"\nconnect_timeout = \"2s\"\ntimeout = \"2s\"\nretries = 1\nretry_backoff = \"50ms\"\n{lists}",
            ca.display()
        );
        let mut config: Config = toml::from_str(&text).unwrap();
        config.sync.attach(&mut config.lists, dir.path());
        Self { dir, config }
    }

    fn syncer(&self) -> Syncer {
        let mut syncer = Syncer::new(&self.config.sync, self.dir.path()).unwrap();
        assert!(syncer.load(&self.config.lists).is_empty());
        syncer
    }

    async fn pass(&self, syncer: &mut Syncer, force: &[&str]) -> PassReport {
        let lists: Vec<&ListConfig> = self.config.lists.iter().collect();
        let force: Vec<String> = force.iter().map(|s| (*s).to_owned()).collect();
        syncer.update(&lists, &force, &NoProgress).await
    }

    /// Builds a snapshot from the lists as the daemon does (cached copies
    /// are parsed as they are read and verified on the way).
    fn build(&self) -> Result<shieldns_sync::Built, shieldns_sync::SyncError> {
        shieldns_sync::build_snapshot(shieldns_sync::PolicySources {
            lists: &self.config.lists,
            profiles: &[],
            allow: &[],
            base_dir: self.dir.path(),
            files: shieldns_sync::FileLists::Keep {
                cache_dir: &self.dir.path().join("cache"),
            },
        })
    }

    /// Overwrites the current cached copy of list `feed` with `body`, as a
    /// disk fault or an intruder would; returns its file name.
    fn overwrite_cached(&self, syncer: &Syncer, body: &str) -> String {
        let state = syncer.state("feed").unwrap().current.clone().unwrap();
        std::fs::write(self.dir.path().join("cache").join(&state.file), body).unwrap();
        state.file
    }

    fn read(&self, index: usize) -> Result<String, shieldns_sync::SyncError> {
        read_list(&self.config.lists[index], self.dir.path()).map(|(bytes, _, _)| String::from_utf8(bytes).unwrap())
    }
}

fn list_toml(url: &str, extra: &str) -> String {
    format!("[[list]]\nname = \"feed\"\nformat = \"domains\"\nurl = \"{url}\"\n{extra}\n")
}

fn failure(report: &PassReport) -> String {
    match &report.outcomes[0].outcome {
        Outcome::Failed { reason, kept_previous } => {
            assert!(kept_previous, "a previous copy existed: {reason}");
            reason.clone()
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn conditional_get_gzip_and_the_cache_survive_a_restart() {
    let publisher = Publisher::start();
    publisher.put("feed.txt", names("a", 100));
    let setup = Setup::new(&publisher, &list_toml(&publisher.url("feed.txt"), ""));
    let mut syncer = setup.syncer();

    let report = setup.pass(&mut syncer, &[]).await;
    assert!(
        matches!(
            report.outcomes[0].outcome,
            Outcome::Updated {
                entries: 100,
                previous: None,
                serial: 1,
                ..
            }
        ),
        "{report:?}"
    );
    assert!(report.changed());
    assert_eq!(setup.read(0).unwrap(), names("a", 100));
    let state = syncer.state("feed").unwrap().clone();
    let current = state.current.clone().unwrap();
    assert!(current.etag.is_some() && current.last_modified.is_some(), "{current:?}");

    // The second pass asks with the ETag and gets 304.
    let report = setup.pass(&mut syncer, &[]).await;
    assert_eq!(report.outcomes[0].outcome, Outcome::Unchanged);
    assert!(!report.changed());
    let requests = publisher.requests("feed.txt");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].0, None, "the first GET is unconditional");
    assert_eq!(requests[1].0, current.etag, "the second sends If-None-Match");
    assert!(
        requests[0].1.as_deref().is_some_and(|a| a.contains("gzip")),
        "{requests:?}"
    );

    // A new syncer (a restart) sees the cached copy and its state.
    let restarted = setup.syncer();
    assert!(restarted.has_copy("feed"));
    assert_eq!(restarted.state("feed").unwrap().current, Some(current));
    assert!(
        restarted.next_check("feed") > std::time::SystemTime::now(),
        "not due again at once"
    );
}

#[tokio::test]
async fn server_errors_are_retried_client_errors_are_not_and_the_copy_stays() {
    let publisher = Publisher::start();
    publisher.put("feed.txt", names("a", 10));
    let setup = Setup::new(&publisher, &list_toml(&publisher.url("feed.txt"), ""));
    let mut syncer = setup.syncer();
    setup.pass(&mut syncer, &[]).await;

    publisher.mode("feed.txt", Mode::Status(500));
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(reason.contains("HTTP 500"), "{reason}");
    // One first try plus `retries = 1`.
    assert_eq!(publisher.requests("feed.txt").len(), 1 + 2);

    publisher.mode("feed.txt", Mode::Status(404));
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(reason.contains("HTTP 404"), "{reason}");
    assert_eq!(publisher.requests("feed.txt").len(), 3 + 1, "404 is not retried");

    let state = syncer.state("feed").unwrap();
    assert_eq!(state.consecutive_failures, 2);
    assert!(state.last_failure.as_ref().unwrap().reason.contains("HTTP 404"));
    assert_eq!(
        setup.read(0).unwrap(),
        names("a", 10),
        "the previous copy is still served"
    );
}

#[tokio::test]
async fn hangs_drips_truncation_and_oversized_bodies_are_cut_off() {
    let publisher = Publisher::start();
    publisher.put("feed.txt", names("a", 200));
    let setup = Setup::new(&publisher, &list_toml(&publisher.url("feed.txt"), "max_bytes = 100000"));
    let mut syncer = setup.syncer();
    setup.pass(&mut syncer, &[]).await;
    publisher.set_gzip(false);

    let started = Instant::now();
    publisher.mode("feed.txt", Mode::Hang);
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(reason.contains("timed out"), "{reason}");
    publisher.mode(
        "feed.txt",
        Mode::SlowDrip {
            every: Duration::from_millis(100),
        },
    );
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(reason.contains("timed out"), "{reason}");
    // Two attempts of 2 s each per fault, plus backoff: bounded.
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());

    publisher.mode("feed.txt", Mode::Truncate);
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(
        reason.contains("download from") && reason.contains("failed"),
        "{reason}"
    );

    let started = Instant::now();
    publisher.mode("feed.txt", Mode::Endless);
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(reason.contains("larger than max_bytes (100000 bytes)"), "{reason}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the cap ends the download, not the timeout"
    );

    // A declared length over the cap is refused before the body.
    publisher.put("feed.txt", names("b", 10_000));
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(reason.contains("larger than max_bytes"), "{reason}");
    assert_eq!(setup.read(0).unwrap(), names("a", 200));
}

#[tokio::test]
async fn garbage_pins_signatures_and_the_shrink_guard() {
    let publisher = Publisher::start();
    let signer = Signer::new();
    let good = names("a", 100);
    publisher.put("feed.txt", good.clone());
    publisher.put("feed.txt.minisig", signer.sign(good.as_bytes()));
    let extra = format!("minisign = \"{}\"", signer.public_key());
    let setup = Setup::new(&publisher, &list_toml(&publisher.url("feed.txt"), &extra));
    let mut syncer = setup.syncer();
    let report = setup.pass(&mut syncer, &[]).await;
    assert!(report.changed(), "{report:?}");

    // Garbage, even correctly signed, has no entries.
    let garbage = "<html>\x01\x02 not a list</html>\n";
    publisher.put("feed.txt", garbage);
    publisher.put("feed.txt.minisig", signer.sign(garbage.as_bytes()));
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(reason.contains("no valid domains entries"), "{reason}");

    // A new list with the old signature.
    publisher.put("feed.txt", names("b", 100));
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(
        reason.contains("minisign signature") && reason.contains("does not verify"),
        "{reason}"
    );

    // Signed by someone else.
    let other = Signer::new();
    publisher.put("feed.txt.minisig", other.sign(names("b", 100).as_bytes()));
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(reason.contains("minisign signature"), "{reason}");

    // No signature at all.
    publisher.mode("feed.txt.minisig", Mode::Status(404));
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(reason.contains("HTTP 404") && reason.contains("minisig"), "{reason}");

    // A 60 % shrink, correctly signed: refused, then forced.
    let shrunk = names("a", 40);
    publisher.put("feed.txt", shrunk.clone());
    publisher.put("feed.txt.minisig", signer.sign(shrunk.as_bytes()));
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(
        reason.contains("from 100 to 40 entries") && reason.contains("--force feed"),
        "{reason}"
    );
    assert_eq!(setup.read(0).unwrap(), good);
    let report = setup.pass(&mut syncer, &["feed"]).await;
    assert!(
        matches!(
            report.outcomes[0].outcome,
            Outcome::Updated {
                entries: 40,
                previous: Some(100),
                serial: 2,
                ..
            }
        ),
        "{report:?}"
    );
    assert_eq!(setup.read(0).unwrap(), shrunk);

    let built = setup.build().unwrap();
    assert_eq!(built.lists[0].rules, 40);
    assert!(
        built.lists[0].source.contains("cached, serial 2"),
        "{}",
        built.lists[0].source
    );

    // The cached copy is verified on every read, and by every build that
    // parses it: a tampered copy is refused.
    setup.overwrite_cached(&syncer, &names("evil", 40));
    let error = setup.read(0).unwrap_err().to_string();
    assert!(error.contains("does not verify"), "{error}");
    let error = setup.build().err().unwrap().to_string();
    assert!(error.contains("feed") && error.contains("does not verify"), "{error}");
}

#[tokio::test]
async fn a_sha256_pin_refuses_other_bytes() {
    use sha2::Digest as _;
    let publisher = Publisher::start();
    let body = names("a", 5);
    publisher.put("feed.txt", body.clone());
    let pin = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    let extra = format!("sha256 = \"{pin}\"");
    let setup = Setup::new(&publisher, &list_toml(&publisher.url("feed.txt"), &extra));
    let mut syncer = setup.syncer();
    assert!(setup.pass(&mut syncer, &[]).await.changed());
    publisher.put("feed.txt", names("b", 5));
    let reason = failure(&setup.pass(&mut syncer, &[]).await);
    assert!(reason.contains("sha256 mismatch") && reason.contains(&pin), "{reason}");
    assert_eq!(setup.read(0).unwrap(), body);
    assert_eq!(setup.build().unwrap().lists[0].rules, 5);
    // A cached copy changed since its download fails the build on the pin.
    setup.overwrite_cached(&syncer, &names("c", 5));
    let error = setup.build().err().unwrap().to_string();
    assert!(error.contains("sha256 mismatch") && error.contains(&pin), "{error}");
}

#[tokio::test]
async fn a_build_refuses_a_cached_copy_changed_since_its_download() {
    let publisher = Publisher::start();
    publisher.put("feed.txt", names("a", 50));
    let setup = Setup::new(&publisher, &list_toml(&publisher.url("feed.txt"), ""));
    let mut syncer = setup.syncer();
    assert!(setup.pass(&mut syncer, &[]).await.changed());
    assert_eq!(setup.build().unwrap().lists[0].rules, 50);
    // Neither pin nor key: the state file's digest is what catches it.
    let file = setup.overwrite_cached(&syncer, &names("b", 50));
    let error = setup.build().err().unwrap().to_string();
    assert!(
        error.contains("the state file says") && error.contains(&file),
        "{error}"
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused() {
    let publisher = Publisher::start();
    publisher.put("feed.txt", names("a", 5));
    // Trust another CA than the one that issued the publisher's certificate.
    let other = Publisher::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = other.write_ca(dir.path());
    let setup = Setup::with_dir(dir, &ca, &list_toml(&publisher.url("feed.txt"), ""));
    let mut syncer = setup.syncer();
    let report = setup.pass(&mut syncer, &[]).await;
    match &report.outcomes[0].outcome {
        Outcome::Failed {
            reason,
            kept_previous: false,
        } => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let error = setup.read(0).unwrap_err().to_string();
    assert!(error.contains("no verified copy"), "{error}");
}

#[test]
fn list_keys_are_checked_and_errors_name_the_list() {
    let parse = |text: &str| toml::from_str::<Config>(text).map(|_| ()).unwrap_err().to_string();
    let both = parse("[[list]]\nname = \"x\"\nformat = \"domains\"\npath = \"a\"\nurl = \"https://127.0.0.1/a\"\n");
    assert!(both.contains("list `x`") && both.contains("exactly one of"), "{both}");
    let transfer = |extra: &str| parse(&format!("[[list]]\nname = \"x\"\n{extra}\n"));
    let error = transfer("format = \"domains\"\nsource = \"axfr://127.0.0.1/rpz.test\"");
    assert!(error.contains("format = \"rpz\""), "{error}");
    let error = transfer("format = \"rpz\"\nsource = \"https://127.0.0.1/rpz.test\"");
    assert!(error.contains("axfr://HOST[:PORT]/ZONE"), "{error}");
    let error = transfer("format = \"rpz\"\npath = \"a\"\ntsig = \"hmac-sha256:k:c2VjcmV0\"");
    assert!(error.contains("`tsig` applies only"), "{error}");
    let error = transfer("format = \"rpz\"\nsource = \"axfr://127.0.0.1/rpz.test\"\ntsig = \"hmac-md5:k:c2VjcmV0\"");
    assert!(error.contains("not supported"), "{error}");
    let error = transfer("format = \"rpz\"\nsource = \"axfr://127.0.0.1/rpz.test\"\nminisign = \"x\"");
    assert!(error.contains("authenticated with `tsig`"), "{error}");
    let config: Config = toml::from_str(
        "[[list]]\nname = \"x\"\nformat = \"rpz\"\nsource = \"axfr://127.0.0.1:5300/RPZ.test.\"\ntsig = \"hmac-sha256:k:c2VjcmV0\"\n",
    )
    .unwrap();
    let transfer = config.lists[0].remote().unwrap().transfer.clone().unwrap();
    assert_eq!(
        (transfer.host.as_str(), transfer.port, transfer.zone.as_str()),
        ("127.0.0.1", 5300, "rpz.test.")
    );
    assert_eq!(transfer.tsig.unwrap().secret, b"secret");
    let neither = parse("[[list]]\nname = \"x\"\nformat = \"domains\"\n");
    assert!(
        neither.contains("list `x`") && neither.contains("needs `path`"),
        "{neither}"
    );
    let refresh = parse("[[list]]\nname = \"x\"\nformat = \"domains\"\npath = \"a\"\nrefresh = \"1h\"\n");
    assert!(
        refresh.contains("`refresh` applies only to lists with a `url`"),
        "{refresh}"
    );
    let scheme = parse("[[list]]\nname = \"x\"\nformat = \"domains\"\nurl = \"ftp://127.0.0.1/a\"\n");
    assert!(scheme.contains("https://"), "{scheme}");
    let key =
        parse("[[list]]\nname = \"x\"\nformat = \"domains\"\nurl = \"https://127.0.0.1/a\"\nminisign = \"nope\"\n");
    assert!(key.contains("minisign"), "{key}");
    let duration =
        parse("[[list]]\nname = \"x\"\nformat = \"domains\"\nurl = \"https://127.0.0.1/a\"\nrefresh = \"soon\"\n");
    assert!(duration.contains("refresh") || duration.contains("soon"), "{duration}");
    let unknown =
        parse("[[list]]\nname = \"x\"\nformat = \"domains\"\nurl = \"https://127.0.0.1/a\"\nrefrsh = \"1h\"\n");
    assert!(unknown.contains("refrsh"), "{unknown}");
    let name = parse("[[list]]\nname = \"../x\"\nformat = \"domains\"\nurl = \"https://127.0.0.1/a\"\n");
    assert!(name.contains("names its files in sync.cache_dir"), "{name}");
    // A `path` list's name names its kept copy: no way out of the cache.
    let name = parse("[[list]]\nname = \"../../etc/x\"\nformat = \"domains\"\npath = \"x.txt\"\n");
    assert!(name.contains("names its files in sync.cache_dir"), "{name}");
    let line = parse("[sync]\n\n[[list]]\nname = \"x\"\nformat = \"domains\"\n");
    assert!(line.contains("line 3"), "the error names the table's line: {line}");

    let config: Config = toml::from_str(
        "[[list]]\nname = \"x\"\nformat = \"domains\"\nurl = \"https://127.0.0.1/a.txt\"\nminisign = \"RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\"\n",
    )
    .unwrap();
    let remote = config.lists[0].remote().unwrap();
    assert_eq!(remote.signature_url.as_str(), "https://127.0.0.1/a.txt.minisig");
    assert_eq!(remote.refresh, Duration::from_secs(3600));
    assert_eq!(config.lists[0].max_shrink, 50);
    assert_eq!(config.sync, SyncConfig::default());
}

#[test]
fn a_list_never_downloaded_is_empty_unless_mandatory() {
    use shieldns_sync::{PolicySources, SyncError, build_snapshot};
    let dir = tempfile::tempdir().unwrap();
    let text = "[sync]\ncache_dir = \"cache\"\n[[list]]\nname = \"feed\"\nformat = \"domains\"\nurl = \"https://127.0.0.1:9/feed.txt\"\n";
    let mut config: Config = toml::from_str(text).unwrap();
    config.sync.attach(&mut config.lists, dir.path());
    let cache_dir = dir.path().join("cache");
    // As the daemon builds.
    let sources = |lists| PolicySources {
        lists,
        profiles: &[],
        allow: &[],
        base_dir: dir.path(),
        files: shieldns_sync::FileLists::Keep { cache_dir: &cache_dir },
    };
    let built = build_snapshot(sources(&config.lists)).unwrap();
    assert_eq!(built.lists[0].rules, 0);
    assert!(
        built.lists[0].source.contains("no verified copy yet"),
        "{}",
        built.lists[0].source
    );

    let mut mandatory = config.lists.clone();
    mandatory[0].mandatory = true;
    let error = build_snapshot(sources(&mandatory)).unwrap_err();
    assert!(matches!(error, SyncError::NotCached { .. }), "{error}");
    assert!(error.to_string().contains("list `feed`: no verified copy"), "{error}");
    // As `check-config` builds: reported, not fatal.
    let built = build_snapshot(PolicySources {
        files: shieldns_sync::FileLists::Read,
        ..sources(&mandatory)
    })
    .unwrap();
    assert_eq!(built.not_downloaded, ["feed"]);
}

#[test]
fn a_path_list_is_held_to_its_version_in_force_wherever_its_file_moves() {
    use shieldns_sync::local::{Kept, keep};
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("kept");
    std::fs::write(dir.path().join("a.txt"), names("a", 100)).unwrap();
    std::fs::write(dir.path().join("b.txt"), names("b", 10)).unwrap();
    let list_at = |file: &str| -> ListConfig {
        let text = format!("[[list]]\nname = \"adult\"\nformat = \"domains\"\npath = \"{file}\"\n");
        let config: Config = toml::from_str(&text).unwrap();
        config.lists.into_iter().next().unwrap()
    };
    let (a, b) = (list_at("a.txt"), list_at("b.txt"));
    let accepted = keep(&a, &dir.path().join("a.txt"), &cache, false).unwrap();
    assert!(
        matches!(
            accepted,
            Kept::Accepted {
                entries: 100,
                previous: None
            }
        ),
        "{accepted:?}"
    );
    assert!(matches!(
        keep(&a, &dir.path().join("a.txt"), &cache, false).unwrap(),
        Kept::Unchanged
    ));
    // The same list pointed at a tenth of the entries: refused, then forced.
    let error = keep(&b, &dir.path().join("b.txt"), &cache, false).unwrap_err();
    assert!(error.to_string().contains("from 100 to 10 entries"), "{error}");
    let forced = keep(&b, &dir.path().join("b.txt"), &cache, true).unwrap();
    assert!(
        matches!(
            forced,
            Kept::Accepted {
                entries: 10,
                previous: Some(100)
            }
        ),
        "{forced:?}"
    );
    // Nothing but the kept version and the state is left in the cache.
    let mut files: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].starts_with("adult-") && files[1] == "adult.json", "{files:?}");
}
