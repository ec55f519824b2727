//! End-to-end tests of `shieldns run` in recursive mode, resolving through a
//! fake DNS hierarchy (root, TLD, authoritative servers, a signed and a
//! bogus zone) served by nsd on loopback, queried with the real `dig`.

use shieldns_test_support::daemon::{Daemon, answers, ede, require, status};
use shieldns_test_support::hierarchy::Hierarchy;

const CONFIG: &str = include_str!("fixtures/dns_recursive.toml");

fn start(instance: u8) -> Option<(Hierarchy, Daemon)> {
    if !require(&[("dig", "bind9-dnsutils")]) {
        return None;
    }
    let hierarchy = Hierarchy::start(instance)?;
    let anchor = hierarchy
        .trust_anchor_file()
        .map(|path| format!("trust_anchor_files = [\"{}\"]", path.display()))
        .unwrap_or_default();
    let daemon = Daemon::start(&config(&hierarchy, &anchor), &[("adult.txt", "blocked.example.test\n")]);
    Some((hierarchy, daemon))
}

/// `CONFIG` for `hierarchy`, with `anchor` (trust-anchor keys) in `[upstream]`.
fn config(hierarchy: &Hierarchy, anchor: &str) -> String {
    CONFIG
        .replace("@HINTS@", &hierarchy.root_hints_file().display().to_string())
        .replace("@ANCHOR@", anchor)
}

#[test]
fn resolves_through_the_hierarchy_and_filters() {
    let Some((_hierarchy, daemon)) = start(31) else { return };

    let out = daemon.dig(&["www.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}\n{}", daemon.log_text());
    assert_eq!(answers(&out), ["www.example.test. 3600 IN A 192.0.2.10"], "{out}");

    let out = daemon.dig(&["www.example.test", "AAAA"]);
    assert_eq!(answers(&out), ["www.example.test. 3600 IN AAAA 2001:db8::10"], "{out}");

    // A CNAME into another zone is followed.
    let out = daemon.dig(&["alias.example.test", "A"]);
    let records = answers(&out);
    assert!(
        records.contains(&"alias.example.test. 3600 IN CNAME www.other.test.".to_owned()),
        "{out}"
    );
    assert!(
        records.contains(&"www.other.test. 3600 IN A 192.0.2.20".to_owned()),
        "{out}"
    );

    // NXDOMAIN from the authority comes back with its SOA.
    let out = daemon.dig(&["nonexistent.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(out.contains("IN\tSOA"), "{out}");

    // Blocked names never leave the resolver.
    let out = daemon.dig(&["sub.blocked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(ede(&out).is_some_and(|e| e.contains("list=adult")), "{out}");

    // Large answers: TC over UDP, complete over TCP.
    let out = daemon.dig(&["+tcp", "big.example.test", "TXT"]);
    assert_eq!(answers(&out).len(), 10, "{out}");
}

#[test]
fn validates_dnssec() {
    let Some((hierarchy, daemon)) = start(32) else { return };
    if hierarchy.trust_anchor_file().is_none() {
        eprintln!("SKIP: zone signing tools missing (apt-get install ldnsutils)");
        return;
    }
    let out = daemon.dig(&["+dnssec", "www.signed.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}\n{}", daemon.log_text());
    assert!(out.contains("192.0.2.30"), "{out}");
    assert!(
        out.contains(" ad;") || out.contains(" ad "),
        "a secure answer carries AD: {out}"
    );

    let out = daemon.dig(&["www.bogus.test", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}\n{}", daemon.log_text());
    assert!(
        ede(&out).is_some_and(|e| e.starts_with("; EDE: 6 (DNSSEC Bogus)")),
        "{out}"
    );

    // Insecure delegations still resolve with validation on.
    let out = daemon.dig(&["www.example.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
}

#[test]
fn policy_checks_apply_to_recursive_answers() {
    if !require(&[("dig", "bind9-dnsutils")]) {
        return;
    }
    let Some(hierarchy) = Hierarchy::start(33) else { return };
    let config = config(&hierarchy, "")
        .replace("dnssec = true", "dnssec = false")
        .replace(
            "block = [\"adult\"]",
            "block = [\"adult\"]\nrebinding_protection = true\ndns64 = true",
        );
    let daemon = Daemon::start(&config, &[("adult.txt", "blocked.example.test\n")]);

    // CNAME cloaking: the alias is not listed, its target is.
    let out = daemon.dig(&["cname-to-blocked.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}\n{}", daemon.log_text());
    assert!(
        ede(&out).is_some_and(|e| e.contains("cname=blocked.example.test")),
        "{out}"
    );
    // A public name answering with a private address.
    let out = daemon.dig(&["rebind.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(ede(&out).is_some_and(|e| e.contains("rebinding")), "{out}");
    // DNS64 for an IPv4-only name, through the cross-zone CNAME.
    let out = daemon.dig(&["alias.example.test", "AAAA"]);
    assert_eq!(
        answers(&out),
        [
            "alias.example.test. 3600 IN CNAME www.other.test.",
            "www.other.test. 3600 IN AAAA 64:ff9b::c000:214"
        ],
        "{out}"
    );
    // Real AAAA records are kept.
    let out = daemon.dig(&["www.example.test", "AAAA"]);
    assert_eq!(answers(&out), ["www.example.test. 3600 IN AAAA 2001:db8::10"], "{out}");
}

/// Lame, SERVFAILing and glueless delegations: each zone has a working
/// server, and the resolver must find it whatever order it tries them in.
#[test]
fn resolves_past_lame_servfailing_and_glueless_delegations() {
    let Some((_hierarchy, daemon)) = start(34) else { return };
    // Several rounds, each on a fresh name, so that both server orders of
    // the lame and SERVFAIL zones are met.
    for round in 0..4 {
        for (zone, address) in [
            ("lame.test", "192.0.2.50"),
            ("retry.test", "192.0.2.51"),
            ("glueless.test", "192.0.2.52"),
        ] {
            let out = daemon.dig(&[&format!("www.{zone}"), "A"]);
            assert_eq!(status(&out), "NOERROR", "round {round}: {out}\n{}", daemon.log_text());
            assert_eq!(answers(&out), [format!("www.{zone}. 3600 IN A {address}")], "{out}");
            let out = daemon.dig(&[&format!("n{round}.{zone}"), "A"]);
            assert_eq!(status(&out), "NXDOMAIN", "round {round}: {out}");
        }
    }
}

/// A CNAME whose target does not exist: NXDOMAIN, with the CNAME kept and
/// the target zone's SOA in the authority section; positive answers carry
/// no authority NS records (minimal responses).
#[test]
fn keeps_a_cname_to_nxdomain_and_answers_minimally() {
    let Some((_hierarchy, daemon)) = start(35) else { return };
    let out = daemon.dig(&["dangling.example.test", "A"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}\n{}", daemon.log_text());
    assert_eq!(
        answers(&out),
        ["dangling.example.test. 3600 IN CNAME nothing.other.test."],
        "{out}"
    );
    assert!(
        out.contains("other.test.\t\t300\tIN\tSOA") || out.contains("IN\tSOA"),
        "{out}"
    );

    let out = daemon.dig(&["WwW.ExAmPlE.TeSt", "A"]);
    assert!(
        out.contains("AUTHORITY: 0,"),
        "no authority records on a positive answer: {out}"
    );
    assert!(
        out.contains(";WwW.ExAmPlE.TeSt.\t"),
        "the question in the client's case: {out}"
    );
    assert_eq!(
        answers(&out),
        ["WwW.ExAmPlE.TeSt. 3600 IN A 192.0.2.10"],
        "the answer's owner in the client's case: {out}"
    );
}

/// With every server of a zone gone, the client gets SERVFAIL with EDE 22
/// (No Reachable Authority) once the resolution deadline passes, never
/// EDE 6 (DNSSEC Bogus).
#[test]
fn an_unreachable_authority_is_ede_22() {
    let Some((mut hierarchy, daemon)) = start(36) else {
        return;
    };
    hierarchy.stop_server("example");
    let out = daemon.dig(&["+tries=1", "+time=5", "www.other.test", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}\n{}", daemon.log_text());
    let ede = ede(&out).unwrap_or_default();
    assert!(ede.starts_with("; EDE: 22 (No Reachable Authority)"), "{out}");
}

/// Trust anchors given as a DS line (not a file), and a negative trust
/// anchor that turns the bogus zone insecure.
#[test]
fn ds_anchor_and_negative_trust_anchor() {
    if !require(&[("dig", "bind9-dnsutils")]) {
        return;
    }
    let Some(hierarchy) = Hierarchy::start(37) else { return };
    let Some(ds) = hierarchy.root_ds() else {
        eprintln!("SKIP: zone signing tools missing (apt-get install ldnsutils)");
        return;
    };
    let anchor = format!("trust_anchors = [\"{ds}\"]\nnegative_trust_anchors = [\"bogus.test.\"]");
    let daemon = Daemon::start(&config(&hierarchy, &anchor), &[("adult.txt", "blocked.example.test\n")]);

    let out = daemon.dig(&["+dnssec", "www.signed.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}\n{}", daemon.log_text());
    assert!(
        out.contains(" ad;") || out.contains(" ad "),
        "secure under the DS anchor: {out}"
    );
    assert!(out.contains("\tRRSIG\t"), "a DO client gets the signatures: {out}");
    let out = daemon.dig(&["www.signed.test", "A"]);
    assert!(!out.contains("RRSIG"), "a client without DO gets none: {out}");

    // The negative trust anchor: bogus.test. answers, insecure (no AD).
    let out = daemon.dig(&["+dnssec", "www.bogus.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}\n{}", daemon.log_text());
    assert!(out.contains("192.0.2.40"), "{out}");
    assert!(!(out.contains(" ad;") || out.contains(" ad ")), "{out}");
}

/// A bogus answer to a client that set CD: the data, without AD.
#[test]
fn checking_disabled_gets_bogus_data() {
    let Some((hierarchy, daemon)) = start(38) else { return };
    if hierarchy.trust_anchor_file().is_none() {
        eprintln!("SKIP: zone signing tools missing (apt-get install ldnsutils)");
        return;
    }
    let out = daemon.dig(&["+cd", "www.bogus.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}\n{}", daemon.log_text());
    assert!(out.contains("192.0.2.40"), "{out}");
    let out = daemon.dig(&["www.bogus.test", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "without CD it stays SERVFAIL: {out}");
}

/// An IPv6-only network (the plan's move to IPv6): one nsd on `[::1]:53`
/// serves the root, `test.` and `v6.test.`, every name server has only an
/// AAAA address, and shieldns recurses with `do_ip4 = false`. With IPv6
/// off as well, nothing is reachable: SERVFAIL with EDE 22.
#[test]
fn recurses_over_ipv6_alone() {
    use std::process::{Command, Stdio};
    if !require(&[("dig", "bind9-dnsutils")]) {
        return;
    }
    let Some(nsd) = shieldns_test_support::hierarchy::find_tool("nsd") else {
        eprintln!("SKIP: nsd is not installed (Debian package `nsd`)");
        return;
    };
    if let Err(error) = std::net::UdpSocket::bind("[::1]:53") {
        eprintln!("SKIP: cannot bind [::1]:53 ({error}); the test needs root and a free port");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let zone = |origin: &str, body: &str| {
        format!("$ORIGIN {origin}\n$TTL 3600\n@ IN SOA ns.root. hostmaster.root. 1 3600 600 86400 300\n{body}")
    };
    std::fs::write(
        path("root.zone"),
        zone(
            ".",
            "@ NS ns.root.\nns.root. AAAA ::1\ntest. NS ns.nic.test.\nns.nic.test. AAAA ::1\n",
        ),
    )
    .unwrap();
    std::fs::write(
        path("test.zone"),
        zone(
            "test.",
            "@ NS ns.nic.test.\nns.nic AAAA ::1\nv6 NS ns.v6.test.\nns.v6 AAAA ::1\n",
        ),
    )
    .unwrap();
    std::fs::write(
        path("v6.test.zone"),
        zone(
            "v6.test.",
            "@ NS ns.v6.test.\nns AAAA ::1\nwww A 192.0.2.60\nwww AAAA 2001:db8::60\n",
        ),
    )
    .unwrap();
    let mut conf = format!(
        "server:\n  ip-address: ::1@53\n  do-ip4: no\n  do-ip6: yes\n  username: \"\"\n  chroot: \"\"\n  \
         zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n  database: \"\"\n  zonelistfile: \"{d}/zone.list\"\n  \
         xfrdfile: \"{d}/xfrd.state\"\n  xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  server-count: 1\n\
         remote-control:\n  control-enable: no\n",
        d = dir.path().display()
    );
    for (name, file) in [(".", "root.zone"), ("test.", "test.zone"), ("v6.test.", "v6.test.zone")] {
        conf.push_str(&format!("zone:\n  name: \"{name}\"\n  zonefile: \"{}\"\n", path(file)));
    }
    std::fs::write(path("nsd.conf"), conf).unwrap();
    let mut server = Command::new(nsd)
        .args(["-d", "-c", &path("nsd.conf")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill nsd (by its PID) whatever happens below.
    struct Stop<'a>(&'a mut std::process::Child);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _stop = Stop(&mut server);
    let ready = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let out = shieldns_test_support::daemon::dig_at("[::1]:53".parse().unwrap(), &["+norec", "v6.test", "SOA"]);
        status(&out) == "NOERROR"
    });
    assert!(
        ready,
        "nsd on [::1]:53 did not come up: {:?}",
        std::fs::read_to_string(path("nsd.log"))
    );
    std::fs::write(path("hints"), ". 3600000 NS ns.root.\nns.root. 3600000 AAAA ::1\n").unwrap();

    let config = |do_ip6: bool| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:@PORT@\"]\n[upstream]\nmode = \"recursive\"\nroot_hints = \"{}\"\n\
             trust_anchors = []\ndo_ip4 = false\ndo_ip6 = {do_ip6}\nallow_loopback_nameservers = true\n\
             resolve_local_zones = [\"test.\"]\nresolution_timeout_ms = 1500\n\
             [[profile]]\nname = \"default\"\nclients = [\"0.0.0.0/0\", \"::/0\"]\nblock = []\n",
            path("hints")
        )
    };
    let daemon = Daemon::start(&config(true), &[]);
    let out = daemon.dig(&["www.v6.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}\n{}", daemon.log_text());
    assert_eq!(answers(&out), ["www.v6.test. 3600 IN A 192.0.2.60"], "{out}");
    drop(daemon);

    let daemon = Daemon::start(&config(false), &[]);
    let out = daemon.dig(&["+tries=1", "+time=5", "www.v6.test", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "neither IPv4 nor IPv6: {out}");
    assert!(
        ede(&out).is_some_and(|e| e.starts_with("; EDE: 22 (No Reachable Authority)")),
        "{out}"
    );
}

/// Forward mode validates too: a second shieldns forwards to the first
/// (recursing through the hierarchy) and checks the answers against the
/// hierarchy's root DS itself, so a secure answer carries AD and a bogus
/// one is SERVFAIL with EDE 6, even though its forwarder hands CD queries
/// the bogus data.
#[test]
fn forward_mode_validates_with_its_own_anchor() {
    let Some((hierarchy, recursor)) = start(39) else { return };
    let Some(ds) = hierarchy.root_ds() else {
        eprintln!("SKIP: zone signing tools missing (apt-get install ldnsutils)");
        return;
    };
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:@PORT@\"]\n[upstream]\nmode = \"forward\"\nforward = [\"{}\"]\n\
         trust_anchors = [\"{ds}\"]\nresolve_local_zones = [\"test.\"]\nresolution_timeout_ms = 3000\n\
         [[profile]]\nname = \"default\"\nclients = [\"0.0.0.0/0\", \"::/0\"]\nblock = []\n",
        recursor.addr
    );
    let forwarder = Daemon::start(&config, &[]);
    let out = forwarder.dig(&["+dnssec", "www.signed.test", "A"]);
    assert_eq!(status(&out), "NOERROR", "{out}\n{}", forwarder.log_text());
    assert!(
        out.contains(" ad;") || out.contains(" ad "),
        "validated by the forwarder: {out}"
    );
    let out = forwarder.dig(&["www.bogus.test", "A"]);
    assert_eq!(status(&out), "SERVFAIL", "{out}\n{}", forwarder.log_text());
    assert!(
        ede(&out).is_some_and(|e| e.starts_with("; EDE: 6 (DNSSEC Bogus)")),
        "{out}"
    );
}
