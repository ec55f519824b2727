//! Parser tests over real blocklists and over small in-repo fixtures.
//!
//! The real lists live in the shared test corpus next to the repository
//! (`../shared/data/blocklists`, described by its README). They are not
//! shipped with the source, so every test that needs them prints a `SKIP`
//! line and passes when they are absent; the fixture test at the bottom runs
//! everywhere.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use shieldns_index::format::{CollectingSink, OwnedTarget};
use shieldns_index::name::NameRejection;
use shieldns_index::rule::SkipReason;
use shieldns_index::{
    LineRejection, ListFormat, ListPolicy, LocalData, Rule, RuleAction, RuleSink, RuleTarget, Scope, parse,
};

/// The corpus's blocklist folder, relative to this crate.
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/blocklists");

/// One row of the corpus README's blocklist table.
struct Row {
    /// The path under `blocklists/`; its folder names the format.
    path: &'static str,
    /// The README's "Entries": rule lines, without comments, blank lines and
    /// (for RPZ) `$TTL`/SOA/NS lines; hosts files include their localhost
    /// lines.
    entries: u64,
    /// How many of those lines the parsers refuse, as observed and checked
    /// by hand: a clean list refuses none.
    rejected: u64,
}

const TABLE: &[Row] = &[
    // 88,763 blocked names plus 14 localhost/broadcast lines, which are
    // skipped rather than refused.
    Row {
        path: "hosts/stevenblack-unified.hosts",
        entries: 88_777,
        rejected: 0,
    },
    Row {
        path: "hosts/stevenblack-gambling-porn-only.hosts",
        entries: 82_614,
        rejected: 0,
    },
    // Five bare IPv4 addresses (`0.0.0.0 85.17.187.83`) and the junk third
    // token of `0.0.0.0 xxxhindi.to en`.
    Row {
        path: "hosts/sinfonietta-pornography.hosts",
        entries: 61_186,
        rejected: 6,
    },
    Row {
        path: "domains/hagezi-nsfw.domains.txt",
        entries: 110_861,
        rejected: 0,
    },
    Row {
        path: "domains/hagezi-gambling-mini.domains.txt",
        entries: 100_981,
        rejected: 0,
    },
    Row {
        path: "domains/hagezi-doh-bypass.domains.txt",
        entries: 3_778,
        rejected: 0,
    },
    // 23,079 bare IPv4 literals, checked one by one below.
    Row {
        path: "domains/urlhaus-filter.domains.txt",
        entries: 25_768,
        rejected: 23_079,
    },
    Row {
        path: "adblock/hagezi-nsfw.adblock.txt",
        entries: 110_861,
        rejected: 0,
    },
    Row {
        path: "adblock/hagezi-allowlist-referral.adblock.txt",
        entries: 928,
        rejected: 0,
    },
    // 67 `||1.2.3.4^`-style IP rules; its 5 `$badfilter` lines and the one
    // rule they disable are skipped, not refused.
    Row {
        path: "adblock/adguard-dns-filter-noprivacy.adblock.txt",
        entries: 71_101,
        rejected: 67,
    },
    Row {
        path: "wildcard/hagezi-nsfw.wildcard.txt",
        entries: 110_861,
        rejected: 0,
    },
    // `*.1.0.209.238`: the same 23,079 addresses as the domains form.
    Row {
        path: "wildcard/urlhaus-filter.wildcard.txt",
        entries: 25_768,
        rejected: 23_079,
    },
    Row {
        path: "dnsmasq/hagezi-nsfw.dnsmasq.txt",
        entries: 110_861,
        rejected: 0,
    },
    Row {
        path: "dnsmasq/urlhaus-filter.dnsmasq.conf",
        entries: 2_689,
        rejected: 0,
    },
    Row {
        path: "dnsmasq/blocklistproject-drugs.dnsmasq.txt",
        entries: 26_029,
        rejected: 0,
    },
    Row {
        path: "rpz/hagezi-fake.rpz.txt",
        entries: 33_252,
        rejected: 0,
    },
    Row {
        path: "rpz/hagezi-tif-ips.rpz.txt",
        entries: 59_510,
        rejected: 0,
    },
    Row {
        path: "rpz/hagezi-nosafesearch.rpz.txt",
        entries: 410,
        rejected: 0,
    },
    Row {
        path: "rpz/urlhaus-filter.rpz.conf",
        entries: 2_689,
        rejected: 0,
    },
];

/// Lines allowed to break the one-outcome-per-line contract of `RuleSink`:
/// none. Parsers check every name on a line before emitting any, so a line
/// like `0.0.0.0 xxxhindi.to en` is rejected once, whole; the check below
/// keeps it that way.
const KNOWN_DOUBLE_OUTCOMES: &[(&str, u32)] = &[];

/// The corpus folder, or `None` after printing why the test is skipped.
fn corpus() -> Option<PathBuf> {
    let dir = Path::new(CORPUS);
    if dir.is_dir() {
        Some(dir.to_path_buf())
    } else {
        eprintln!("SKIP: ../shared corpus not present (looked for {})", dir.display());
        None
    }
}

/// The format a corpus file is in, named by its folder.
fn format_of(path: &str) -> ListFormat {
    let folder = path.split('/').next().unwrap_or_default();
    folder.parse().unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn read(dir: &Path, path: &str) -> Vec<u8> {
    std::fs::read(dir.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Records which kinds of call each line received, to check that every
/// rule line ends in exactly one of: rules, one skip, one rejection.
#[derive(Default)]
struct OutcomeSink {
    /// Per line: rules, skips and rejections received.
    lines: HashMap<u32, [u32; 3]>,
}

impl OutcomeSink {
    /// Lines that received anything other than rules only, one skip only or
    /// one rejection only, in order.
    fn broken_lines(&self) -> Vec<u32> {
        let mut broken: Vec<u32> = self
            .lines
            .iter()
            .filter(|(_, [rules, skips, rejects])| {
                !matches!(
                    (*rules > 0, *skips, *rejects),
                    (true, 0, 0) | (false, 1, 0) | (false, 0, 1)
                )
            })
            .map(|(line, _)| *line)
            .collect();
        broken.sort_unstable();
        broken
    }
}

impl RuleSink for OutcomeSink {
    fn rule(&mut self, rule: Rule<'_>) {
        self.lines.entry(rule.line).or_default()[0] += 1;
    }
    fn skip(&mut self, line: u32, _reason: SkipReason) {
        self.lines.entry(line).or_default()[1] += 1;
    }
    fn reject(&mut self, line: u32, _text: &str, _reason: LineRejection) {
        self.lines.entry(line).or_default()[2] += 1;
    }
}

#[test]
fn every_corpus_list_matches_the_readme_entry_count() {
    let Some(dir) = corpus() else {
        return;
    };
    let mut failures = Vec::new();
    for row in TABLE {
        let text = read(&dir, row.path);
        let format = format_of(row.path);
        // The loading rules the resolver applies (the single-label guard,
        // the verdicts), not the bare parser.
        let policy = ListPolicy::block(row.path, None, format);
        let checked = match shieldns_index::check_list(policy, &text) {
            Ok(info) => info,
            Err(error) => {
                failures.push(format!("{}: refused: {error}", row.path));
                continue;
            }
        };
        let mut outcomes = OutcomeSink::default();
        parse(format, &text, &mut outcomes);

        let known: Vec<u32> = KNOWN_DOUBLE_OUTCOMES
            .iter()
            .filter(|(path, _)| *path == row.path)
            .map(|(_, line)| *line)
            .collect();
        let broken = outcomes.broken_lines();
        if !broken.iter().all(|line| known.contains(line)) {
            failures.push(format!("{}: lines with more than one outcome: {broken:?}", row.path));
        }
        let counts = checked.counts;
        let rule_lines = counts.rule_lines() - broken.len() as u64;
        if rule_lines != row.entries || outcomes.lines.len() as u64 != row.entries {
            failures.push(format!(
                "{}: {rule_lines} rule lines ({} distinct), README says {} ({counts:?})",
                row.path,
                outcomes.lines.len(),
                row.entries
            ));
        }
        if counts.rejected != row.rejected {
            failures.push(format!(
                "{}: {} rejected, expected {} ({counts:?})",
                row.path, counts.rejected, row.rejected
            ));
        }
        // Every line of a file is at most one rule line, whatever the
        // parser does with it.
        let lines = text.split(|&b| b == b'\n').count() as u64;
        assert!(counts.rule_lines() <= lines + known.len() as u64, "{}", row.path);
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn corpus_table_lists_every_file() {
    let Some(dir) = corpus() else {
        return;
    };
    let mut on_disk = BTreeSet::new();
    for folder in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{CORPUS}: {e}")) {
        let folder = folder.expect("readable corpus folder").path();
        for file in std::fs::read_dir(&folder).expect("readable corpus folder") {
            let file = file.expect("readable corpus entry").path();
            let relative = file
                .strip_prefix(&dir)
                .expect("file under the corpus")
                .to_string_lossy()
                .into_owned();
            on_disk.insert(relative);
        }
    }
    let in_table: BTreeSet<String> = TABLE.iter().map(|row| row.path.to_owned()).collect();
    assert_eq!(on_disk, in_table);
}

/// The rejected lines of a list, as (trimmed text, reason).
fn rejections(dir: &Path, path: &str) -> Vec<(String, LineRejection)> {
    let mut sink = CollectingSink::default();
    parse(format_of(path), &read(dir, path), &mut sink);
    sink.rejected
        .into_iter()
        .map(|(_, text, reason)| (text.trim().to_owned(), reason))
        .collect()
}

#[test]
fn urlhaus_rejects_exactly_its_ipv4_literals() {
    let Some(dir) = corpus() else {
        return;
    };
    for (path, prefix) in [
        ("domains/urlhaus-filter.domains.txt", ""),
        ("wildcard/urlhaus-filter.wildcard.txt", "*."),
    ] {
        let rejected = rejections(&dir, path);
        assert_eq!(rejected.len(), 23_079, "{path}");
        for (text, reason) in rejected {
            assert_eq!(reason, LineRejection::Name(NameRejection::IpLiteral), "{path}: {text}");
            let address = text.strip_prefix(prefix).unwrap_or(&text);
            assert!(
                address.parse::<Ipv4Addr>().is_ok(),
                "{path}: {text} is not an IPv4 address"
            );
        }
    }
}

#[test]
fn adguard_filter_rejects_only_ip_rules() {
    let Some(dir) = corpus() else {
        return;
    };
    let rejected = rejections(&dir, "adblock/adguard-dns-filter-noprivacy.adblock.txt");
    assert_eq!(rejected.len(), 67);
    for (text, reason) in rejected {
        assert_eq!(reason, LineRejection::Name(NameRejection::IpLiteral), "{text}");
        let address = text.trim_start_matches('|').trim_end_matches('^');
        assert!(address.parse::<Ipv4Addr>().is_ok(), "{text}");
    }
}

/// The (name, scope) pairs of a list whose every rule is a name block rule.
/// `clean` says whether the list must also have no rejected line.
fn name_set(dir: &Path, path: &str, clean: bool) -> BTreeSet<(String, Scope)> {
    let mut sink = CollectingSink::default();
    parse(format_of(path), &read(dir, path), &mut sink);
    assert!(
        !clean || sink.rejected.is_empty(),
        "{path}: {:?}",
        &sink.rejected[..sink.rejected.len().min(5)]
    );
    sink.rules
        .into_iter()
        .map(|(line, action, target)| match target {
            OwnedTarget::Name(name, scope) if action == RuleAction::Block => (name, scope),
            other => panic!("{path}:{line}: unexpected {action:?} {other:?}"),
        })
        .collect()
}

#[test]
fn hagezi_nsfw_is_the_same_set_in_four_formats() {
    let Some(dir) = corpus() else {
        return;
    };
    let domains = name_set(&dir, "domains/hagezi-nsfw.domains.txt", true);
    assert_eq!(domains.len(), 110_861);
    assert!(domains.iter().all(|(_, scope)| *scope == Scope::Subtree));
    for path in [
        "adblock/hagezi-nsfw.adblock.txt",
        "wildcard/hagezi-nsfw.wildcard.txt",
        "dnsmasq/hagezi-nsfw.dnsmasq.txt",
    ] {
        let other = name_set(&dir, path, true);
        assert!(
            other == domains,
            "{path}: {} names differ",
            other.symmetric_difference(&domains).count()
        );
    }
}

#[test]
fn urlhaus_names_agree_across_domains_dnsmasq_and_rpz() {
    let Some(dir) = corpus() else {
        return;
    };
    let names =
        |path: &str| -> BTreeSet<String> { name_set(&dir, path, false).into_iter().map(|(name, _)| name).collect() };
    let domains = names("domains/urlhaus-filter.domains.txt");
    assert_eq!(domains.len(), 2_689);
    assert_eq!(names("wildcard/urlhaus-filter.wildcard.txt"), domains);
    assert_eq!(names("dnsmasq/urlhaus-filter.dnsmasq.conf"), domains);
    assert_eq!(names("rpz/urlhaus-filter.rpz.conf"), domains);
}

#[test]
fn hagezi_rpz_pairs_and_ip_triggers() {
    let Some(dir) = corpus() else {
        return;
    };
    // `name CNAME .` and `*.name CNAME .` for each of 16,626 names.
    let fake = name_set(&dir, "rpz/hagezi-fake.rpz.txt", true);
    let exact: BTreeSet<&str> = fake
        .iter()
        .filter(|(_, scope)| *scope == Scope::Exact)
        .map(|(name, _)| name.as_str())
        .collect();
    let below: BTreeSet<&str> = fake
        .iter()
        .filter(|(_, scope)| *scope == Scope::SubdomainsOnly)
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(exact.len(), 16_626);
    assert_eq!(exact, below);

    let mut sink = CollectingSink::default();
    parse(ListFormat::Rpz, &read(&dir, "rpz/hagezi-tif-ips.rpz.txt"), &mut sink);
    assert_eq!(sink.rules.len(), 59_510);
    for (line, action, target) in &sink.rules {
        assert_eq!(*action, RuleAction::Block, "line {line}");
        assert!(
            matches!(target, OwnedTarget::AnswerIp(net) if net.prefix_len() == 32),
            "line {line}: {target:?}"
        );
    }
    // The first record is `32.165.164.0.1.rpz-ip CNAME .`.
    assert_eq!(
        sink.rules[0].2,
        OwnedTarget::AnswerIp("1.0.164.165/32".parse().expect("valid network"))
    );
}

/// A rule with everything owned, local data and required literal included
/// (which [`CollectingSink`] leaves out).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owned {
    line: u32,
    action: RuleAction,
    target: OwnedTarget,
    literal: Option<String>,
    local_data: Vec<LocalData>,
}

/// Keeps whole rules, skipped lines and rejection reasons.
#[derive(Default)]
struct Recorder {
    rules: Vec<Owned>,
    skipped: Vec<(u32, SkipReason)>,
    rejected: Vec<(u32, LineRejection)>,
}

impl RuleSink for Recorder {
    fn rule(&mut self, rule: Rule<'_>) {
        let (target, literal) = match rule.target {
            RuleTarget::Name { name, scope } => (OwnedTarget::Name(name.to_owned(), scope), None),
            RuleTarget::Pattern {
                regex,
                required_literal,
            } => (OwnedTarget::Pattern(regex), required_literal),
            RuleTarget::AnswerIp(net) => (OwnedTarget::AnswerIp(net), None),
            RuleTarget::NameDigest(digest) => (OwnedTarget::NameDigest(digest), None),
        };
        self.rules.push(Owned {
            line: rule.line,
            action: rule.action,
            target,
            literal,
            local_data: rule.local_data,
        });
    }
    fn skip(&mut self, line: u32, reason: SkipReason) {
        self.skipped.push((line, reason));
    }
    fn reject(&mut self, line: u32, _text: &str, reason: LineRejection) {
        self.rejected.push((line, reason));
    }
}

fn record(format: ListFormat, text: &[u8]) -> Recorder {
    let mut sink = Recorder::default();
    parse(format, text, &mut sink);
    sink
}

/// A block rule on a name, with no literal and no local data.
fn block(line: u32, name: &str, scope: Scope) -> Owned {
    with(line, RuleAction::Block, OwnedTarget::Name(name.to_owned(), scope))
}

fn with(line: u32, action: RuleAction, target: OwnedTarget) -> Owned {
    Owned {
        line,
        action,
        target,
        literal: None,
        local_data: Vec::new(),
    }
}

fn syntax(rejection: &LineRejection) -> bool {
    matches!(rejection, LineRejection::Syntax(_))
}

const IP_LITERAL: LineRejection = LineRejection::Name(NameRejection::IpLiteral);

#[test]
fn fixtures_parse_to_exact_rules() {
    use OwnedTarget::{AnswerIp, NameDigest, Pattern};
    use Scope::{Exact, SubdomainsOnly, Subtree};

    let hosts = record(ListFormat::Hosts, include_bytes!("fixtures/hosts.txt"));
    assert_eq!(
        hosts.rules,
        [
            block(4, "ads.example.com", Subtree),
            block(5, "tracker.example.net", Subtree),
            block(5, "metrics.example.org", Subtree),
            block(6, "upper.example.com", Subtree),
        ]
    );
    assert_eq!(
        hosts.skipped,
        [(2, SkipReason::LocalHostEntry), (3, SkipReason::LocalHostEntry)]
    );
    assert_eq!(hosts.rejected, [(8, IP_LITERAL)]);

    let domains = record(ListFormat::Domains, include_bytes!("fixtures/domains.txt"));
    assert_eq!(
        domains.rules,
        [
            block(2, "ads.example.com", Subtree),
            block(3, "tracker.example.net", Subtree),
            block(4, "xn--bcher-kva.example", Subtree),
        ]
    );
    assert_eq!(domains.rejected, [(6, IP_LITERAL)]);

    let wildcard = record(ListFormat::Wildcard, include_bytes!("fixtures/wildcard.txt"));
    assert_eq!(
        wildcard.rules,
        [
            block(2, "ads.example.com", Subtree),
            block(3, "tracker.example.net", Subtree)
        ]
    );
    assert_eq!(wildcard.rejected.len(), 2);
    assert_eq!(wildcard.rejected[0], (4, IP_LITERAL));
    assert!(wildcard.rejected[1].0 == 5 && syntax(&wildcard.rejected[1].1));

    let adblock = record(ListFormat::Adblock, include_bytes!("fixtures/adblock.txt"));
    assert_eq!(
        adblock.rules,
        [
            block(3, "ads.example.com", Subtree),
            block(4, "exact.example.com", Exact),
            with(
                5,
                RuleAction::Allow,
                OwnedTarget::Name("good.ads.example.com".to_owned(), Subtree)
            ),
            with(
                6,
                RuleAction::BlockImportant,
                OwnedTarget::Name("important.example.net".to_owned(), Subtree)
            ),
            Owned {
                literal: Some(".example.org".to_owned()),
                ..with(
                    7,
                    RuleAction::Block,
                    Pattern(r"(?:^|\.)cdn.*\.example\.org$".to_owned())
                )
            },
            with(
                8,
                RuleAction::Block,
                Pattern(r"(?i)^track[0-9]+\.example\.net$".to_owned())
            ),
            block(13, "sub.example.com", SubdomainsOnly),
            block(15, "plain.example.org", Subtree),
        ]
    );
    assert_eq!(
        adblock.skipped,
        [
            (9, SkipReason::DisabledByBadfilter),
            (10, SkipReason::DisabledByBadfilter)
        ]
    );
    assert_eq!(adblock.rejected.len(), 3);
    assert_eq!(
        adblock.rejected[0],
        (11, LineRejection::UnsupportedModifier("third-party".to_owned()))
    );
    assert_eq!(
        adblock.rejected[1],
        (12, LineRejection::Syntax("cosmetic rule, not DNS"))
    );
    assert_eq!(adblock.rejected[2], (16, IP_LITERAL));

    let dnsmasq = record(ListFormat::Dnsmasq, include_bytes!("fixtures/dnsmasq.txt"));
    assert_eq!(
        dnsmasq.rules,
        [
            block(2, "ads.example.com", Subtree),
            block(3, "tracker.example.net", Subtree),
            block(4, "metrics.example.org", Subtree),
            block(5, "a.example.com", Subtree),
            block(5, "b.example.com", Subtree),
        ]
    );
    assert!(matches!(dnsmasq.rejected.as_slice(), [(6, reason)] if syntax(reason)));

    let rpz = record(ListFormat::Rpz, include_bytes!("fixtures/rpz.txt"));
    let name = |n: &str| OwnedTarget::Name(n.to_owned(), Exact);
    let net = |n: &str| AnswerIp(n.parse().expect("valid network"));
    assert_eq!(
        rpz.rules,
        [
            block(8, "ads.example.com", Exact),
            block(9, "ads.example.com", SubdomainsOnly),
            with(10, RuleAction::NoData, name("nodata.example.com")),
            with(11, RuleAction::Allow, name("ok.example.com")),
            with(12, RuleAction::Drop, name("drop.example.com")),
            Owned {
                local_data: vec![LocalData::Cname("safe-target.example.net".to_owned())],
                ..with(13, RuleAction::Rewrite, name("safe.example.com"))
            },
            Owned {
                local_data: vec![LocalData::A(Ipv4Addr::new(192, 0, 2, 1))],
                ..with(14, RuleAction::Rewrite, name("local.example.com"))
            },
            Owned {
                local_data: vec![LocalData::Aaaa("2001:db8::1".parse().expect("valid address"))],
                ..with(15, RuleAction::Rewrite, name("local.example.com"))
            },
            with(16, RuleAction::Block, net("192.0.2.1/32")),
            with(17, RuleAction::Drop, net("2001:db8::/48")),
        ]
    );
    assert_eq!(
        rpz.rejected,
        [
            (18, LineRejection::UnsupportedRpz("TXT local data")),
            (19, LineRejection::UnsupportedRpz("rpz-nsdname trigger")),
        ]
    );

    let sha256 = record(ListFormat::Sha256, include_bytes!("fixtures/sha256.txt"));
    let digest = |hex: &str| {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex, &mut digest).expect("valid hex");
        NameDigest(digest)
    };
    assert_eq!(
        sha256.rules,
        [
            with(
                2,
                RuleAction::Block,
                digest("c125d1a324c6227ccc4bc643dfcfe484d1eb133b44ba4fde8d6a77e4ffe30bf5")
            ),
            with(
                3,
                RuleAction::Block,
                digest("38d1d7eca86710dd4edb67d1e33e6974e6e11667fd2e264ec58af1d4ee3fff9e")
            ),
        ]
    );
    assert!(matches!(sha256.rejected.as_slice(), [(4, reason)] if syntax(reason)));
}

#[test]
fn fixture_digests_are_of_the_normalized_names() {
    use sha2::{Digest, Sha256};
    // The sha256 fixture must stay in step with the names it stands for.
    for (name, hex) in [
        (
            "ads.example.com",
            "c125d1a324c6227ccc4bc643dfcfe484d1eb133b44ba4fde8d6a77e4ffe30bf5",
        ),
        (
            "tracker.example.net",
            "38d1d7eca86710dd4edb67d1e33e6974e6e11667fd2e264ec58af1d4ee3fff9e",
        ),
    ] {
        assert_eq!(hex::encode(Sha256::digest(name.as_bytes())), hex);
    }
}
