//! End-to-end tests of the list loading rules against a running daemon:
//! hostile or broken list files, given on SIGHUP or found at a restart,
//! never replace the lists in force, and `dig` shows the old verdicts hold.

use std::process::Command;

use shieldns_test_support::daemon::{Daemon, require, status};
use shieldns_test_support::upstream::FakeUpstream;

const CONFIG: &str = include_str!("fixtures/list_safety.toml");

fn skip() -> bool {
    !require(&[("dig", "dnsutils")])
}

/// `count` names ending with `blocked.example.test` (the one the fake
/// upstream serves), one per line.
fn adult_list(count: usize) -> String {
    let mut text = String::from("blocked.example.test\n");
    for i in 1..count {
        text.push_str(&format!("filler{i}.example.test\n"));
    }
    text
}

fn start(upstream: &FakeUpstream) -> Daemon {
    let config = CONFIG.replace("@UPSTREAM@", &upstream.addr.to_string());
    Daemon::start(
        &config,
        &[
            ("csam.txt", "mandatory.example.test\n"),
            ("adult.txt", &adult_list(100)),
            ("small.hosts", "0.0.0.0 reload.example.test\n"),
        ],
    )
}

/// The verdicts of the lists as first loaded.
fn assert_first_verdicts(daemon: &Daemon, when: &str) {
    for name in ["blocked.example.test", "mandatory.example.test", "reload.example.test"] {
        let out = daemon.dig(&[name, "A"]);
        assert_eq!(status(&out), "NXDOMAIN", "{when}: {name} must stay blocked: {out}");
    }
    let out = daemon.dig(&["www.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{when}: {out}");
}

fn shieldns(args: &[&str], daemon: &Daemon) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shieldns"))
        .args(args)
        .arg("--config")
        .arg(daemon.path("shieldns.toml"))
        .output()
        .unwrap()
}

/// A megabyte of pseudo-random bytes with terminal escapes in it.
fn garbage() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut bytes: Vec<u8> = (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    bytes.extend_from_slice(b"\n\x1b[31mred.example.test\x07\n\x1b]0;owned\x07\n");
    // The few lines that happen to look like names (five, as in the binary
    // file the first-day run loaded as "5 rules").
    for i in 0..5 {
        bytes.extend_from_slice(format!("lucky{i}.example.test\n").as_bytes());
    }
    bytes
}

#[test]
fn hostile_list_files_given_on_sighup_never_replace_the_lists_in_force() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&upstream);
    assert_first_verdicts(&daemon, "at start");
    let adult = daemon.path("adult.txt");
    let good = std::fs::read(&adult).unwrap();

    let sparse = |size: u64| {
        std::fs::remove_file(&adult).unwrap();
        std::fs::File::create(&adult).unwrap().set_len(size).unwrap();
    };
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        ("empty", Box::new(|| std::fs::write(&adult, "").unwrap()), "no rules"),
        (
            "comments only",
            Box::new(|| std::fs::write(&adult, "# gone\n\n").unwrap()),
            "no rules",
        ),
        (
            "binary garbage",
            Box::new(|| std::fs::write(&adult, garbage()).unwrap()),
            "of its lines are not domains rules, more than the 5 that are",
        ),
        (
            "/dev/zero",
            Box::new(|| {
                std::fs::remove_file(&adult).unwrap();
                std::os::unix::fs::symlink("/dev/zero", &adult).unwrap();
            }),
            "is not a regular file",
        ),
        (
            "a 2 GiB sparse file",
            Box::new(|| sparse(2 << 30)),
            "larger than max_bytes",
        ),
        (
            "a 32 MiB line of NULs",
            Box::new(|| sparse(32 << 20)),
            "line is longer than 4096 bytes",
        ),
        (
            "a 10 MB line",
            Box::new(|| std::fs::write(&adult, "a".repeat(10_000_000)).unwrap()),
            "line is longer than 4096 bytes",
        ),
        (
            "a list shrunk by 90 %",
            Box::new(|| std::fs::write(&adult, adult_list(10)).unwrap()),
            "would shrink the list from 100 to 10 entries",
        ),
    ];
    for (case, break_it, reason) in &cases {
        break_it();
        assert!(!daemon.reload(), "{case}: the reload must fail");
        let log = daemon.log_text();
        let last = log.lines().rfind(|l| l.contains("reload failed")).unwrap();
        assert!(last.contains(reason), "{case}: {last}");
        assert_first_verdicts(&daemon, case);
        std::fs::remove_file(&adult).unwrap();
        std::fs::write(&adult, &good).unwrap();
    }
    let log = daemon.log_text();
    assert!(
        !log.contains('\u{1b}') && !log.contains('\u{7}'),
        "control bytes reached the log"
    );
    assert!(
        log.lines().all(|line| line.len() < 4000),
        "a list line was echoed whole into the log"
    );
    // The size cap is per list.
    std::fs::write(daemon.path("small.hosts"), "0.0.0.0 reload.example.test\n".repeat(200)).unwrap();
    assert!(!daemon.reload());
    assert!(daemon.log_text().contains("larger than max_bytes (4096 bytes)"));
    std::fs::write(daemon.path("small.hosts"), "0.0.0.0 reload.example.test\n").unwrap();

    // A single-label line is refused alone: it would block all of `.test`.
    std::fs::write(&adult, format!("{}test\n", String::from_utf8_lossy(&good))).unwrap();
    assert!(daemon.reload(), "{}", daemon.log_text());
    assert!(daemon.log_text().contains("would block a whole TLD"));
    assert_first_verdicts(&daemon, "after a TLD line");

    // The operator accepts a shrink on purpose; the next SIGHUP enforces it.
    std::fs::write(&adult, "filler1.example.test\n").unwrap();
    assert!(!daemon.reload());
    let forced = shieldns(&["lists", "update", "--force", "adult"], &daemon);
    let stdout = String::from_utf8_lossy(&forced.stdout);
    assert!(
        forced.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&forced.stderr)
    );
    assert!(stdout.contains("adult: accepted: 1 entries (was 100)"), "{stdout}");
    assert!(daemon.reload(), "{}", daemon.log_text());
    assert_eq!(status(&daemon.dig(&["blocked.example.test", "A"])), "NOERROR");

    // After all that, SIGTERM still stops it cleanly.
    assert_eq!(daemon.stop(), Some(0));
}

#[test]
fn a_restart_with_broken_list_files_enforces_their_last_accepted_versions() {
    if skip() {
        return;
    }
    let upstream = FakeUpstream::start("127.0.0.1", 300);
    let daemon = start(&upstream);
    assert_first_verdicts(&daemon, "at start");
    // Broken while the daemon is down: the mandatory list emptied, the
    // category list shrunk to a tenth, the small list turned to garbage.
    std::fs::write(daemon.path("csam.txt"), "").unwrap();
    std::fs::write(daemon.path("adult.txt"), adult_list(10)).unwrap();
    std::fs::write(daemon.path("small.hosts"), "\x1b[2J\x00\x01\x02\n").unwrap();
    let daemon = daemon.restart();
    assert_first_verdicts(&daemon, "after the restart");
    let log = daemon.log_text();
    let refused: Vec<&str> = log
        .lines()
        .skip_while(|l| !l.contains("--- restart ---"))
        .filter(|l| l.contains("list file refused, its last accepted version stays in force"))
        .collect();
    assert_eq!(refused.len(), 3, "{log}");
    assert!(
        refused
            .iter()
            .any(|l| l.contains("national-csam") && l.contains("mandatory"))
    );
    assert!(refused.iter().any(|l| l.contains("would shrink")));

    // `lists status` tells the operator the same.
    let status_out = shieldns(&["lists", "status"], &daemon);
    let text = String::from_utf8_lossy(&status_out.stdout);
    assert!(status_out.status.success(), "{text}");
    assert!(text.contains("last failure") && text.contains("would shrink"), "{text}");
    assert!(text.contains("entries: 100"), "{text}");
}
