//! The one-shot commands: `lists check`, `explain`, `check-config`.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn shieldns(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shieldns"))
        .args(args)
        .output()
        .expect("run shieldns")
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("one JSON object")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn lists_check_reports_entries_rejections_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "list.hosts",
        "# header\n0.0.0.0 a.example.com b.example.com\n0.0.0.0 1.2.3.4\n127.0.0.1 localhost\n::  c.example.com # why\n",
    );
    let report = json(&shieldns(&["lists", "check", &file, "--format", "hosts", "--json"]));
    assert_eq!(report["format"], "hosts");
    assert_eq!(report["entries"], 3);
    assert_eq!(report["rejected"], 1);
    assert_eq!(report["rejected_examples"][0]["line"], 3);
    assert_eq!(report["rejected_examples"][0]["text"], "0.0.0.0 1.2.3.4");
    assert_eq!(
        report["rejected_examples"][0]["reason"],
        "IP literal, not a domain name"
    );
    assert_eq!(report["distinct_names"], 3);
    assert!(report["bytes"].as_u64().unwrap() > 0);

    let text = shieldns(&["lists", "check", &file, "--format", "hosts"]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("line 3: 0.0.0.0 1.2.3.4 (IP literal, not a domain name)"),
        "{text}"
    );
}

#[test]
fn lists_check_fails_clearly_on_unreadable_or_useless_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt").display().to_string();
    let output = shieldns(&["lists", "check", &missing, "--format", "domains"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot read"),
        "{output:?}"
    );

    let garbage = write(dir.path(), "garbage.txt", "not a name\nalso not\n");
    let output = shieldns(&["lists", "check", &garbage, "--format", "domains"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("none of its 2 rule lines is valid") && stderr.contains("line 1"),
        "{stderr}"
    );

    let empty = write(dir.path(), "empty.txt", "# only a comment\n");
    assert!(
        !shieldns(&["lists", "check", &empty, "--format", "domains"])
            .status
            .success()
    );

    let output = shieldns(&["lists", "check", &garbage, "--format", "yaml"]);
    assert!(!output.status.success());
}

#[test]
fn lists_check_accepts_hashed_lists() {
    let dir = tempfile::tempdir().unwrap();
    let digest = hex_sha256("bad.example.com");
    let file = write(dir.path(), "hashed.sha256", &format!("# national list\n{digest}\n"));
    let report = json(&shieldns(&["lists", "check", &file, "--format", "sha256", "--json"]));
    assert_eq!(report["entries"], 1);
    assert_eq!(report["digest_rules"], 1);
}

#[test]
fn explain_names_list_line_rule_and_ede() {
    // The embedded default configuration and its built-in starter lists.
    let report = json(&shieldns(&["explain", "WWW.csam-test.shieldns.example.", "--json"]));
    assert_eq!(report["name"], "www.csam-test.shieldns.example");
    assert_eq!(report["profile"], "default");
    assert_eq!(report["verdict"], "block");
    assert_eq!(report["list"], "national-csam");
    assert_eq!(report["category"], "csam");
    assert_eq!(report["rule"], "csam-test.shieldns.example");
    assert_eq!(report["matched_name"], "csam-test.shieldns.example");
    assert_eq!(report["ede"], 16);
    let line = report["line"].as_u64().unwrap();
    let source = include_str!("../../../../blocklists/example-csam.txt");
    assert_eq!(
        source.lines().nth(usize::try_from(line).unwrap() - 1),
        Some("csam-test.shieldns.example")
    );

    // A hashed list reports the parent name whose digest matched.
    let report = json(&shieldns(&[
        "explain",
        "a.b.hashed-csam-test.shieldns.example",
        "--json",
    ]));
    assert_eq!(report["verdict"], "block");
    assert_eq!(report["list"], "national-csam-hashed");
    assert_eq!(report["matched_name"], "hashed-csam-test.shieldns.example");
    assert_eq!(report["ede"], 16);

    let report = json(&shieldns(&["explain", "allowed-test.shieldns.example", "--json"]));
    assert_eq!(report["verdict"], "allow");
    assert_eq!(report["list"], "allowlist");
    assert!(report["ede"].is_null());

    let report = json(&shieldns(&[
        "explain",
        "nothing-matches.example.org",
        "--json",
        "--client",
        "::1",
    ]));
    assert_eq!(report["verdict"], "allow");
    assert!(report["list"].is_null());
    assert_eq!(report["client"], "::1");

    let text = shieldns(&["explain", "csam-test.shieldns.example"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("ede:      16 (Censored)") && text.contains("(mandatory)"),
        "{text}"
    );
}

#[test]
fn explain_follows_profiles_by_client() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "adult.txt", "adult.example.com\n");
    let config = write(
        dir.path(),
        "shieldns.toml",
        r#"
[server]
allow = ["10.20.0.0/16", "192.0.2.0/24"]

[[list]]
name = "adult"
category = "adult"
format = "domains"
path = "adult.txt"

[[profile]]
name = "pupils"
clients = ["10.20.0.0/16"]
block = ["adult"]
client_ids = ["Pupil-Tablet"]

[[profile]]
name = "staff"
clients = ["10.20.100.0/24"]
"#,
    );
    let report = json(&shieldns(&[
        "explain",
        "adult.example.com",
        "--client",
        "10.20.1.1",
        "--config",
        &config,
        "--json",
    ]));
    assert_eq!(
        (report["profile"].as_str(), report["verdict"].as_str()),
        (Some("pupils"), Some("block"))
    );
    assert_eq!(report["ede"], 17);
    let report = json(&shieldns(&[
        "explain",
        "adult.example.com",
        "--client",
        "10.20.100.7",
        "--config",
        &config,
        "--json",
    ]));
    assert_eq!(
        (report["profile"].as_str(), report["verdict"].as_str()),
        (Some("staff"), Some("allow"))
    );
    // The list matched, and explain says why it does not count here.
    let matches = report["matches"].as_array().unwrap();
    assert_eq!(matches.len(), 1, "{report}");
    assert_eq!(matches[0]["list"], "adult");
    assert_eq!(matches[0]["applies"], false);
    assert_eq!(matches[0]["why"], "profile `staff` does not block category `adult`");
    // A staff address naming a pupil's device ID (any case) gets the
    // pupils' profile, as an encrypted listener would give it; an unknown
    // ID keeps the address's.
    let with_id = |id: &str| {
        json(&shieldns(&[
            "explain",
            "adult.example.com",
            "--client",
            "10.20.100.7",
            "--client-id",
            id,
            "--config",
            &config,
            "--json",
        ]))
    };
    let report = with_id("pupil-tablet");
    assert_eq!(
        (
            report["profile"].as_str(),
            report["verdict"].as_str(),
            report["client_id_known"].as_bool()
        ),
        (Some("pupils"), Some("block"), Some(true))
    );
    let report = with_id("someone-else");
    assert_eq!(
        (report["profile"].as_str(), report["client_id_known"].as_bool()),
        (Some("staff"), Some(false))
    );
    let text = String::from_utf8_lossy(
        &shieldns(&[
            "explain",
            "adult.example.com",
            "--client",
            "10.20.100.7",
            "--config",
            &config,
        ])
        .stdout,
    )
    .into_owned();
    assert!(!text.contains("no list matches"), "{text}");
    assert!(
        text.contains("adult line 1 (adult.example.com): does not apply"),
        "{text}"
    );
    let report = json(&shieldns(&[
        "explain",
        "adult.example.com",
        "--client",
        "192.0.2.1",
        "--config",
        &config,
        "--json",
    ]));
    assert_eq!(report["profile"], "unmatched");
    // A client the access list refuses is REFUSED before any list.
    let report = json(&shieldns(&[
        "explain",
        "adult.example.com",
        "--client",
        "198.51.100.9",
        "--config",
        &config,
        "--json",
    ]));
    assert_eq!(
        (report["client_allowed"].as_bool(), report["verdict"].as_str()),
        (Some(false), Some("refused"))
    );
    assert!(report["ede"].is_null());
}

#[test]
fn check_config_summarizes_or_fails_naming_the_problem() {
    let output = shieldns(&["check-config"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("national-csam") && text.contains("mandatory"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "bad.toml",
        "[server]\nlisten = [\"127.0.0.1:5353\"]\nallow_from = []\n",
    );
    let output = shieldns(&["check-config", "--config", &config]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("allow_from") && stderr.contains("bad.toml"), "{stderr}");

    let config = write(
        dir.path(),
        "missing-list.toml",
        "[[list]]\nname = \"x\"\nformat = \"domains\"\npath = \"nowhere.txt\"\n",
    );
    let output = shieldns(&["check-config", "--config", &config]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("list `x`") && stderr.contains("nowhere.txt"),
        "{stderr}"
    );

    let config = write(
        dir.path(),
        "sinkhole.toml",
        "[[profile]]\nname = \"p\"\nclients = [\"0.0.0.0/0\"]\nblock_response = \"sinkhole\"\n",
    );
    let output = shieldns(&["check-config", "--config", &config]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("sinkhole_ipv4"), "{stderr}");

    // An encrypted listener's certificate is read as the daemon would:
    // a key that is not one names its file.
    write(dir.path(), "tls.key", "not a key\n");
    write(
        dir.path(),
        "tls.pem",
        "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
    );
    let config = write(
        dir.path(),
        "listener.toml",
        "[[server.listener]]\nprotocol = \"dot\"\naddress = \"127.0.0.1:8853\"\ncertificate = \"tls.pem\"\nkey = \"tls.key\"\n",
    );
    let output = shieldns(&["check-config", "--config", &config]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("server.listener") && stderr.contains("tls.key"),
        "{stderr}"
    );

    // The engine's own settings are checked too: libunbound names the
    // option it refuses, and an anchor file that is not there.
    let config = write(
        dir.path(),
        "engine.toml",
        r#"[upstream.unbound_options]
"qname-minimisation" = "perhaps"
"#,
    );
    let output = shieldns(&["check-config", "--config", &config]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("qname-minimisation: perhaps"),
        "{stderr}"
    );
    let config = write(
        dir.path(),
        "anchor.toml",
        r#"[upstream]
trust_anchor_files = ["/nonexistent/root.key"]
"#,
    );
    let output = shieldns(&["check-config", "--config", &config]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success()
            && stderr.contains("upstream.trust_anchor_files")
            && stderr.contains("/nonexistent/root.key"),
        "{stderr}"
    );
}

fn hex_sha256(name: &str) -> String {
    // Use the index crate's own digest to keep the test free of a second
    // SHA-256 implementation.
    shieldns_index::name_digest(name)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    // `shieldns check-config | head -1`: the reader is gone before the
    // command writes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_shieldns"))
        .arg("check-config")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

#[test]
fn check_config_speaks_in_config_terms_and_warns_about_what_protects_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut hosts = String::from("0.0.0.0 ok.example.com\n");
    for i in 0..3 {
        hosts.push_str(&format!("0.0.0.0 good{i}.example.com\n"));
    }
    for i in 0..14 {
        hosts.push_str(&format!("0.0.0.0 fine{i}.example.com 1.2.3.{i}\n"));
    }
    write(dir.path(), "adult.hosts", &hosts);
    write(dir.path(), "games.txt", "games.example.com\n");
    let base = r#"
[server]
allow = ["10.0.0.0/8", "192.0.2.0/24"]

[[list]]
name = "adult"
category = "adult"
format = "hosts"
path = "adult.hosts"

[[list]]
name = "games"
category = "games"
format = "domains"
path = "games.txt"

[[profile]]
name = "pupils"
clients = ["10.0.0.0/8"]
block = ["adult", "social"]
"#;
    let config = write(dir.path(), "shieldns.toml", base);
    let output = shieldns(&["check-config", "--config", &config]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for warning in [
        "warning: profile `pupils` blocks category `social`, which no list provides",
        "warning: list `games` (category `games`) is blocked by no profile or schedule",
        "warning: clients of server.allow 192.0.2.0/24 outside every profile's `clients` get the `unmatched` profile",
    ] {
        assert!(text.contains(warning), "missing `{warning}` in:\n{text}");
    }
    // 14 rejected lines, 10 shown, and the rest counted.
    assert!(text.contains("… and 4 more rejected lines"), "{text}");

    // A typo in a safe-search table names the key and the allowed ones.
    let config = write(
        dir.path(),
        "typo.toml",
        &format!("{base}safe_search = {{ gogle = true }}\n"),
    );
    let output = shieldns(&["check-config", "--config", &config]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("unknown field `gogle`, expected one of `google`, `bing`, `duckduckgo`, `youtube`"),
        "{stderr}"
    );
    assert!(!stderr.contains("untagged"), "{stderr}");
    // A `url` list not downloaded yet is reported, not fatal.
    let config = write(
        dir.path(),
        "remote.toml",
        &format!(
            "{base}\n[[list]]\nname = \"national\"\ncategory = \"csam\"\nformat = \"domains\"\nurl = \"https://127.0.0.1:9/national.txt\"\nmandatory = true\n\n[sync]\ncache_dir = \"never-synced\"\n"
        ),
    );
    let output = shieldns(&["check-config", "--config", &config]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains(
            "warning: list `national` has no verified copy yet (mandatory: the daemon downloads it before serving"
        ),
        "{text}"
    );
    assert!(
        !dir.path().join("never-synced").exists(),
        "check-config wrote the cache"
    );
    // Each cause is said once.
    let config = write(dir.path(), "missing.toml", &base.replace("games.txt", "nowhere.txt"));
    let stderr = String::from_utf8_lossy(&shieldns(&["check-config", "--config", &config]).stderr).into_owned();
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}
