//! Snapshot behaviour through the public API: every format's rules in one
//! snapshot, precedence, profiles, answer-IP rules, local data and errors.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

use std::net::{IpAddr, Ipv4Addr};

use shieldns_index::{
    BlockResponse, IndexError, ListAction, ListFormat, ListPolicy, LocalData, Matched, ProfileConfig, RuleAction,
    Snapshot, SnapshotBuilder, Verdict,
};

fn policy(name: &str, category: Option<&str>, format: ListFormat, action: ListAction, mandatory: bool) -> ListPolicy {
    ListPolicy {
        action,
        mandatory,
        ..ListPolicy::block(name, category, format)
    }
}

fn profile(name: &str, clients: &[&str], block: &[&str]) -> ProfileConfig {
    ProfileConfig {
        block: block.iter().map(|&b| b.into()).collect(),
        ..ProfileConfig::new(name, clients.iter().map(|c| c.parse().unwrap()).collect())
    }
}

const RPZ: &str = "$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 300\n  NS localhost.\n\
    exact.example.com CNAME .\n\
    *.wild.example.com CNAME .\n\
    nodata.example.com CNAME *.\n\
    drop.example.com CNAME rpz-drop.\n\
    pass.exact.example.com CNAME rpz-passthru.\n\
    local.example.com A 192.0.2.1\n\
    local.example.com AAAA 2001:db8::1\n\
    cname.example.com CNAME target.example.net.\n\
    24.0.2.0.192.rpz-ip CNAME .\n\
    32.66.2.0.192.rpz-ip CNAME rpz-passthru.\n\
    48.zz.db8.2001.rpz-ip CNAME .\n";

const ADBLOCK: &str = "[Adblock Plus 2.0]\n! comment\n||ads.example.org^\n@@||ok.ads.example.org^\n\
    ||forced.example.org^$important\n@@||forced.example.org^\n||cdn*.example.org^\n\
    /^track[0-9]+\\.example\\.net$/\n|exact.example.org^\n";

fn build() -> Snapshot {
    let mut builder = SnapshotBuilder::new();
    builder.set_access(vec!["127.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()]);
    builder
        .add_list(
            policy("csam", Some("csam"), ListFormat::Domains, ListAction::Block, true),
            b"csam.example.com\n",
        )
        .unwrap();
    let digest = hex(&shieldns_index::name_digest("hashed.example.com"));
    builder
        .add_list(
            policy("csam-hashed", Some("csam"), ListFormat::Sha256, ListAction::Block, true),
            digest.as_bytes(),
        )
        .unwrap();
    builder
        .add_list(
            policy("rpz", Some("malware"), ListFormat::Rpz, ListAction::Block, false),
            RPZ.as_bytes(),
        )
        .unwrap();
    builder
        .add_list(
            policy("ads", Some("ads"), ListFormat::Adblock, ListAction::Block, false),
            ADBLOCK.as_bytes(),
        )
        .unwrap();
    builder
        .add_list(
            policy("allow", None, ListFormat::Domains, ListAction::Allow, false),
            b"csam.example.com\nads.example.org\nexact.example.com\n",
        )
        .unwrap();
    builder.add_profile(profile("all", &["0.0.0.0/0", "::/0"], &["csam", "malware", "ads"]));
    builder.add_profile(profile("lan", &["10.0.0.0/8"], &["malware"]));
    builder.add_profile(profile("host", &["10.1.2.3/32"], &[]));
    builder.build().unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn kind(verdict: Verdict) -> (&'static str, Option<RuleAction>) {
    match verdict {
        Verdict::Pass => ("pass", None),
        Verdict::Allow(hit) => ("allow", Some(hit.action)),
        Verdict::Block(hit) => ("block", Some(hit.action)),
    }
}

#[test]
fn mandatory_lists_beat_allowlists_and_apply_to_every_profile() {
    let snapshot = build();
    for client in ["192.0.2.1", "10.9.9.9", "10.1.2.3", "2001:db8::1"] {
        let profile = snapshot.profile_for(client.parse().unwrap());
        let Verdict::Block(hit) = snapshot.verdict("www.csam.example.com", profile) else {
            panic!("{client}")
        };
        assert_eq!(snapshot.ede_code(&hit), 16);
        assert_eq!(snapshot.list(hit.list).unwrap().policy.name, "csam");
        assert_eq!(
            hit.matched,
            Matched::Name {
                labels: 3,
                scope: shieldns_index::Scope::Subtree
            }
        );
        // A hashed mandatory list reports the parent whose digest matched.
        let Verdict::Block(hit) = snapshot.verdict("a.b.hashed.example.com", profile) else {
            panic!()
        };
        assert_eq!(hit.matched, Matched::Digest { labels: 3 });
        assert_eq!(snapshot.ede_code(&hit), 16);
    }
}

#[test]
fn rpz_triggers_and_actions() {
    let snapshot = build();
    let all = snapshot.profile_for("192.0.2.1".parse().unwrap());
    assert_eq!(
        kind(snapshot.verdict("exact.example.com", all)).0,
        "allow",
        "allowlist beats a category block"
    );
    assert_eq!(
        kind(snapshot.verdict("x.drop.example.com", all)),
        ("pass", None),
        "RPZ names are exact"
    );
    assert_eq!(
        kind(snapshot.verdict("wild.example.com", all)),
        ("pass", None),
        "*.x does not cover x in RPZ"
    );
    assert_eq!(
        kind(snapshot.verdict("a.b.wild.example.com", all)),
        ("block", Some(RuleAction::Block))
    );
    assert_eq!(
        kind(snapshot.verdict("nodata.example.com", all)),
        ("block", Some(RuleAction::NoData))
    );
    assert_eq!(
        kind(snapshot.verdict("drop.example.com", all)),
        ("block", Some(RuleAction::Drop))
    );
    let Verdict::Block(hit) = snapshot.verdict("local.example.com", all) else {
        panic!()
    };
    assert_eq!(hit.action, RuleAction::Rewrite);
    assert_eq!(
        snapshot.local_data(&hit),
        [
            LocalData::A("192.0.2.1".parse().unwrap()),
            LocalData::Aaaa("2001:db8::1".parse().unwrap())
        ]
    );
    let Verdict::Block(hit) = snapshot.verdict("cname.example.com", all) else {
        panic!()
    };
    assert_eq!(
        snapshot.local_data(&hit),
        [LocalData::Cname("target.example.net".into())]
    );
    assert_eq!(snapshot.ede_code(&hit), 17);

    // Answer-IP triggers: the most specific prefix wins (a /32 passthru
    // inside a blocked /24).
    assert_eq!(
        kind(snapshot.decide_answer_ip("192.0.2.7".parse().unwrap(), all)).0,
        "block"
    );
    assert_eq!(
        kind(snapshot.decide_answer_ip("192.0.2.66".parse().unwrap(), all)).0,
        "allow"
    );
    assert_eq!(
        kind(snapshot.decide_answer_ip("192.0.3.1".parse().unwrap(), all)).0,
        "pass"
    );
    assert_eq!(
        kind(snapshot.decide_answer_ip("2001:db8:0:1::5".parse().unwrap(), all)).0,
        "block"
    );
    assert_eq!(
        kind(snapshot.decide_answer_ip("2001:db9::5".parse().unwrap(), all)).0,
        "pass"
    );
    // Only for profiles that block the list's category.
    let host = snapshot.profile_for("10.1.2.3".parse().unwrap());
    assert_eq!(
        kind(snapshot.decide_answer_ip("192.0.2.7".parse().unwrap(), host)).0,
        "pass"
    );
}

#[test]
fn adblock_exceptions_important_and_patterns() {
    let snapshot = build();
    let all = snapshot.profile_for("192.0.2.1".parse().unwrap());
    assert_eq!(
        kind(snapshot.verdict("x.ads.example.org", all)).0,
        "allow",
        "the allowlist covers ads.example.org"
    );
    assert_eq!(kind(snapshot.verdict("ok.ads.example.org", all)).0, "allow");
    assert_eq!(
        kind(snapshot.verdict("forced.example.org", all)),
        ("block", Some(RuleAction::BlockImportant))
    );
    let Verdict::Block(hit) = snapshot.verdict("cdn42.example.org", all) else {
        panic!("wildcard pattern")
    };
    assert_eq!(hit.matched, Matched::Pattern);
    assert_eq!(
        kind(snapshot.verdict("track7.example.net", all)).0,
        "block",
        "regex rule"
    );
    assert_eq!(kind(snapshot.verdict("tracker.example.net", all)).0, "pass");
    assert_eq!(kind(snapshot.verdict("exact.example.org", all)).0, "block");
    assert_eq!(
        kind(snapshot.verdict("www.exact.example.org", all)).0,
        "pass",
        "|x^ is exact"
    );
    // The `lan` profile does not block ads.
    let lan = snapshot.profile_for("10.9.9.9".parse().unwrap());
    assert_eq!(kind(snapshot.verdict("cdn42.example.org", lan)).0, "pass");
}

#[test]
fn profiles_by_longest_prefix_and_the_access_list() {
    let snapshot = build();
    let name = |ip: &str| snapshot.profile(snapshot.profile_for(ip.parse().unwrap())).name.clone();
    assert_eq!(name("10.1.2.3"), "host");
    assert_eq!(name("10.1.2.4"), "lan");
    assert_eq!(name("192.0.2.1"), "all");
    assert_eq!(
        name("::ffff:10.1.2.3"),
        "host",
        "IPv4-mapped addresses use the IPv4 map"
    );
    assert!(snapshot.client_allowed("127.0.0.9".parse().unwrap()));
    assert!(snapshot.client_allowed("2001:db8::9".parse().unwrap()));
    assert!(!snapshot.client_allowed("192.0.2.1".parse().unwrap()));
    assert!(!snapshot.client_allowed("::1".parse().unwrap()));
}

#[test]
fn build_errors_name_the_culprit() {
    let mut builder = SnapshotBuilder::new();
    builder
        .add_list(
            policy("a", None, ListFormat::Domains, ListAction::Block, false),
            b"a.com\n",
        )
        .unwrap();
    let error = builder.add_list(
        policy("a", None, ListFormat::Domains, ListAction::Block, false),
        b"b.com\n",
    );
    assert!(matches!(error, Err(IndexError::DuplicateList { .. })));
    let error = builder
        .add_list(
            policy("broken", None, ListFormat::Domains, ListAction::Block, false),
            b"# c\nnot!valid\n",
        )
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "list `broken`: none of its 1 rule lines is valid (first: line 2: invalid character in name)"
    );

    let mut builder = SnapshotBuilder::new();
    builder.add_profile(profile("p1", &["10.0.0.0/8"], &[]));
    builder.add_profile(profile("p2", &["10.0.0.0/8"], &[]));
    let error = builder.build().unwrap_err().to_string();
    assert_eq!(
        error,
        "client network 10.0.0.0/8 is in both profile `p1` and profile `p2`"
    );

    let mut builder = SnapshotBuilder::new();
    let mut sinkhole = profile("s", &["0.0.0.0/0"], &[]);
    sinkhole.block_response = BlockResponse::Sinkhole;
    builder.add_profile(sinkhole);
    assert!(matches!(
        builder.build(),
        Err(IndexError::SinkholeWithoutAddress { .. })
    ));

    let mut builder = SnapshotBuilder::new();
    builder.add_profile(profile("p", &["0.0.0.0/0"], &["nonexistent"]));
    let snapshot = builder.build().unwrap();
    assert_eq!(
        snapshot.warnings(),
        ["profile `p` blocks category `nonexistent`, which no list provides"]
    );
}

#[test]
fn lists_read_from_a_reader_load_like_lists_given_whole() {
    let hosts = b"\xef\xbb\xbf0.0.0.0 a.example b.example\r\n# comment\n0.0.0.0 bad..name\n0.0.0.0 c.example".to_vec();
    for (format, text) in [
        (ListFormat::Hosts, hosts.clone()),
        (ListFormat::Adblock, ADBLOCK.as_bytes().to_vec()),
        (ListFormat::Rpz, RPZ.as_bytes().to_vec()),
    ] {
        let mut whole = SnapshotBuilder::new();
        let expected = whole
            .add_list(policy("l", None, format, ListAction::Block, false), &text)
            .unwrap()
            .clone();
        let mut streamed = SnapshotBuilder::new();
        let (info, bytes) = streamed
            .add_list_from(
                policy("l", None, format, ListAction::Block, false),
                std::io::Cursor::new(&text),
            )
            .unwrap();
        assert_eq!(bytes, text.len() as u64);
        assert_eq!(info.counts, expected.counts, "{format:?}");
        let lines = |i: &shieldns_index::ListInfo| i.rejected_examples.iter().map(|r| r.line).collect::<Vec<_>>();
        assert_eq!(lines(info), lines(&expected), "{format:?}");
    }
    // A list that cannot be read names itself.
    struct Broken;
    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let error = SnapshotBuilder::new()
        .add_list_from(
            policy("broken", None, ListFormat::Domains, ListAction::Block, false),
            Broken,
        )
        .unwrap_err();
    assert!(
        matches!(&error, IndexError::Read { name, .. } if name == "broken"),
        "{error}"
    );
    assert!(error.to_string().contains("disk on fire"));
}

/// The naive reading of `server.allow` and the profiles' `clients`: the
/// longest matching network of each, looked up separately.
fn naive_client_policy(access: &[ipnet::Ipv4Net], profiles: &[Vec<ipnet::Ipv4Net>], ip: Ipv4Addr) -> Option<usize> {
    if !access.iter().any(|net| net.contains(&ip)) {
        return None;
    }
    let best = profiles
        .iter()
        .enumerate()
        .flat_map(|(index, nets)| nets.iter().map(move |net| (net, index)))
        .filter(|(net, _)| net.contains(&ip))
        .max_by_key(|(net, _)| net.prefix_len());
    // No profile names the client: the fallback, built after the others.
    Some(best.map_or(profiles.len(), |(_, index)| index))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// The access list and the client networks share one prefix map; its
    /// answer must be the one each list gives on its own, for nested and
    /// overlapping networks of both.
    #[test]
    fn one_client_lookup_answers_like_the_access_list_and_the_profiles(
        access in proptest::collection::vec((0u8..4, 0u8..4, 4u8..=24), 1..4),
        clients in proptest::collection::vec(proptest::collection::vec((0u8..4, 0u8..4, 4u8..=24), 1..3), 1..4),
        probes in proptest::collection::vec((0u8..4, 0u8..4, 0u8..4), 16),
    ) {
        // Networks inside 10.0.0.0/8 built from few distinct octets, so
        // that they nest and overlap often.
        let net = |(b, c, len): (u8, u8, u8)| ipnet::Ipv4Net::new(Ipv4Addr::new(10, b * 64, c * 64, 0), len).unwrap().trunc();
        let access: Vec<ipnet::Ipv4Net> = access.into_iter().map(net).collect();
        let mut clients: Vec<Vec<ipnet::Ipv4Net>> = clients.into_iter().map(|nets| nets.into_iter().map(net).collect()).collect();
        // A network may belong to one profile only (the build refuses a
        // second); keep each at its first profile.
        let mut seen = std::collections::HashSet::new();
        for nets in &mut clients {
            nets.retain(|n| seen.insert(*n));
        }
        let mut builder = SnapshotBuilder::new();
        builder.set_access(access.iter().map(|n| ipnet::IpNet::V4(*n)).collect());
        for (index, nets) in clients.iter().enumerate() {
            builder.add_profile(ProfileConfig::new(format!("p{index}"), nets.iter().map(|n| ipnet::IpNet::V4(*n)).collect()));
        }
        let snapshot = builder.build().unwrap();
        for (b, c, d) in probes {
            let ip = Ipv4Addr::new(10, b * 64, c * 64 + d, 7);
            let expected = naive_client_policy(&access, &clients, ip);
            let got = snapshot.client_policy(IpAddr::V4(ip)).map(|id| {
                let name = &snapshot.profile(id).name;
                name.strip_prefix('p').and_then(|i| i.parse().ok()).unwrap_or(clients.len())
            });
            proptest::prop_assert_eq!(got, expected, "client {}", ip);
            proptest::prop_assert_eq!(snapshot.client_allowed(IpAddr::V4(ip)), expected.is_some());
        }
    }
}
