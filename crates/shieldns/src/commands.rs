//! The one-shot commands: `check-config`, `explain`, `lists check`.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::json;
use shieldns_index::{
    BypassDefence, Decision, Hit, ListAction, ListFormat, ListPolicy, Matched, ProfilePolicy, RuleAction,
    SnapshotBuilder, Timestamp,
};
use shieldns_sync::{Built, FileLists, PolicySources, build_snapshot};

use crate::config::{Config, ConfigSource};

/// Who builds: the daemon keeps each accepted `path` list in the cache
/// and falls back to the kept version of a refused one; the one-shot
/// commands only read (see `shieldns_sync::local`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Builder {
    Daemon,
    Command,
}

/// Builds the snapshot a configuration describes.
pub(crate) fn build(config: &Config, source: &ConfigSource, builder: Builder) -> anyhow::Result<Built> {
    let base_dir = source.base_dir();
    let cache_dir = config.sync.resolved_cache_dir(&base_dir);
    let sources = PolicySources {
        lists: &config.lists,
        profiles: &config.profiles,
        allow: &config.server.allow,
        base_dir: &base_dir,
        files: match builder {
            Builder::Daemon => FileLists::Keep { cache_dir: &cache_dir },
            Builder::Command => FileLists::Read,
        },
    };
    build_snapshot(sources).with_context(|| format!("cannot build the policy from {}", source.describe()))
}

pub(crate) fn check_config(source: &ConfigSource) -> anyhow::Result<()> {
    let config = source.load()?;
    let built = build(&config, source, Builder::Command)?;
    shieldns_resolver::check_upstream(&config.upstream, &config.cache)?;
    shieldns_resolver::check_listeners(&config.server)?;
    outln!("configuration: {} (ok)", source.describe());
    outln!(
        "listen: {}; allow: {}; upstream: {:?} ({:?})",
        config
            .server
            .listen
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        config
            .server
            .allow
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        config.upstream.mode,
        config.upstream.engine
    );
    outln!("lists:");
    for (load, list) in built.lists.iter().zip(&config.lists) {
        outln!(
            "  {:<24} {:<9} {:<8} {:<10} {:>9} rules {:>7} rejected  {}",
            load.name,
            list.format.as_str(),
            list.category.as_deref().unwrap_or("-"),
            if list.mandatory {
                "mandatory"
            } else if list.action == ListAction::Allow {
                "allow"
            } else {
                "block"
            },
            load.rules,
            load.rejected,
            load.source
        );
        for example in &load.rejected_examples {
            outln!(
                "      line {}: {} ({})",
                example.line,
                example.text.trim(),
                example.reason
            );
        }
        let more = load.rejected.saturating_sub(load.rejected_examples.len() as u64);
        if more > 0 {
            outln!(
                "      … and {more} more rejected line{}",
                if more == 1 { "" } else { "s" }
            );
        }
    }
    outln!("profiles:");
    for profile in built.snapshot.profiles() {
        outln!(
            "  {:<16} clients [{}] blocks [{}] answer {:?} ttl {}",
            profile.name,
            profile
                .clients
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            profile.categories.join(", "),
            profile.block_response,
            profile.block_ttl
        );
    }
    for warning in built.snapshot.warnings() {
        outln!("warning: {warning}");
    }
    for name in &built.not_downloaded {
        let mandatory = config.lists.iter().any(|l| &l.name == name && l.mandatory);
        outln!(
            "warning: list `{name}` has no verified copy yet ({}); `shieldns lists update` downloads it now",
            if mandatory {
                "mandatory: the daemon downloads it before serving and does not start without it"
            } else {
                "enforced empty until its first download"
            }
        );
    }
    outln!(
        "snapshot: {} rules, {} distinct names, {} index bytes, built in {} ms",
        built.snapshot.rule_count(),
        built.snapshot.distinct_names(),
        built.snapshot.index_bytes(),
        built.elapsed.as_millis()
    );
    Ok(())
}

/// What `explain` is asked about.
pub(crate) struct ExplainQuery {
    pub(crate) name: String,
    pub(crate) client: IpAddr,
    pub(crate) client_id: Option<String>,
    pub(crate) qtype: String,
    pub(crate) at: Option<Timestamp>,
    pub(crate) json: bool,
}

/// A verdict reached by profile policy rather than a list rule.
struct PolicyVerdict {
    verdict: &'static str,
    policy: &'static str,
    reason: String,
    rewrite_to: Option<&'static str>,
}

impl PolicyVerdict {
    fn new(policy: ProfilePolicy, qtype: &str) -> Self {
        match policy {
            ProfilePolicy::Bypass(defence) => Self {
                verdict: "block",
                policy: "bypass_protection",
                reason: match defence {
                    BypassDefence::Nxdomain(what) => format!("NXDOMAIN ({what})"),
                    BypassDefence::Nodata(what) => format!("NODATA ({what})"),
                },
                rewrite_to: None,
            },
            ProfilePolicy::BlockedQueryType => Self {
                verdict: "block",
                policy: "block_qtypes",
                reason: format!("NODATA for {}", qtype.to_ascii_uppercase()),
                rewrite_to: None,
            },
            ProfilePolicy::SafeSearch(rewrite) => Self {
                verdict: "rewrite",
                policy: "safe_search",
                reason: format!("{} safe search", rewrite.engine),
                rewrite_to: Some(rewrite.target),
            },
        }
    }
}

pub(crate) fn explain(source: &ConfigSource, query: &ExplainQuery) -> anyhow::Result<()> {
    let config = source.load()?;
    let built = build(&config, source, Builder::Command)?;
    let snapshot = &built.snapshot;
    let raw_name = query.name.as_str();
    let name = shieldns_index::name::normalize(raw_name)
        .map_err(|reason| anyhow::anyhow!("`{raw_name}` is not a valid name: {reason}"))?;
    let client = query.client;
    let at = query.at.unwrap_or_else(Timestamp::now);
    // A client ID selects its profile (an unknown one the address's, as a
    // listener with `unknown_client_id = "address"` does).
    let by_id = query
        .client_id
        .as_deref()
        .and_then(|id| snapshot.profile_for_client_id(id));
    let profile_id = by_id.unwrap_or_else(|| snapshot.profile_for(client));
    let profile = snapshot.profile(profile_id);
    // An unknown type name blocks no query type but still meets the other
    // policies.
    let qtype_code = shieldns_index::childsafe::qtype_code(&query.qtype).unwrap_or(0);
    // The decision the resolver makes for this query.
    let decision = snapshot.decide(profile_id, &name, qtype_code, at);
    let allowed = snapshot.client_allowed(client);
    let ede = decision.ede_code(snapshot);
    let (kind, policy, hit) = match decision {
        Decision::Resolve(hit) => ("allow", None, hit),
        Decision::List(hit) if hit.action == RuleAction::Rewrite => ("rewrite", None, Some(hit)),
        Decision::List(hit) => ("block", None, Some(hit)),
        Decision::Policy(policy) => {
            let policy = PolicyVerdict::new(policy, &query.qtype);
            (policy.verdict, Some(policy), None)
        }
    };
    // A client outside the access list is refused before any list.
    let (kind, policy, hit) = if allowed {
        (kind, policy, hit)
    } else {
        ("refused", None, None)
    };
    let detail = hit.map(|hit| HitDetail::new(&hit, &config, source, &name));
    // Every list that matched, and whether it counts for this client now.
    let matches: Vec<(HitDetail, bool, String)> = snapshot
        .all_matches(&name)
        .iter()
        .map(|hit| {
            let (applies, why) = snapshot.list_applies(hit.list, profile_id, at);
            (HitDetail::new(hit, &config, source, &name), applies, why)
        })
        .collect();
    // A hit whose category only an open schedule blocks names that schedule.
    let schedule = detail.as_ref().and_then(|d| d.category.as_ref()).and_then(|category| {
        (!profile.categories.contains(category))
            .then(|| {
                snapshot
                    .active_schedules(profile_id, at)
                    .find(|s| s.categories.contains(category))
            })
            .flatten()
            .map(|s| format!("{} {}", s.time, s.time_zone))
    });
    let ede = ede.filter(|_| allowed);
    if query.json {
        let value = json!({
            "name": name,
            "client": client.to_string(),
            "client_allowed": allowed,
            "client_id": query.client_id,
            "client_id_known": query.client_id.as_ref().map(|_| by_id.is_some()),
            "profile": profile.name,
            "qtype": query.qtype.to_ascii_uppercase(),
            "at": at.to_string(),
            "verdict": kind,
            "policy": policy.as_ref().map(|p| p.policy),
            "reason": policy.as_ref().map(|p| p.reason.clone()),
            "rewrite_to": policy.as_ref().and_then(|p| p.rewrite_to),
            "list": detail.as_ref().map(|d| d.list.clone()),
            "category": detail.as_ref().and_then(|d| d.category.clone()),
            "line": detail.as_ref().map(|d| d.line),
            "rule": detail.as_ref().and_then(|d| d.rule.clone()),
            "matched_name": detail.as_ref().map(|d| d.matched_name.clone()),
            "mandatory": detail.as_ref().map(|d| d.mandatory),
            "schedule": schedule,
            "ede": ede,
            "inspect_cnames": profile.inspect_cnames,
            "rebinding_protection": profile.rebinding.is_some(),
            "dns64_prefix": profile.dns64.map(|d| d.prefix.to_string()),
            "matches": matches.iter().map(|(d, applies, why)| json!({
                "list": d.list,
                "category": d.category,
                "line": d.line,
                "rule": d.rule,
                "matched_name": d.matched_name,
                "applies": applies,
                "why": why,
            })).collect::<Vec<_>>(),
        });
        outln!("{value}");
        return Ok(());
    }
    outln!("name:     {name}");
    outln!(
        "client:   {client}{}",
        if allowed {
            ""
        } else {
            " (not in server.allow: would be REFUSED)"
        }
    );
    if let Some(id) = &query.client_id {
        outln!(
            "id:       {id}{}",
            if by_id.is_some() {
                ""
            } else {
                " (no profile lists it: the address's profile, or REFUSED where unknown_client_id = \"refuse\")"
            }
        );
    }
    outln!("profile:  {}", profile.name);
    if allowed {
        outln!("verdict:  {kind}");
    } else {
        outln!("verdict:  refused (REFUSED before any list: add the client to server.allow)");
    }
    if let Some(policy) = &policy {
        outln!("policy:   {} ({})", policy.policy, policy.reason);
        if let Some(target) = policy.rewrite_to {
            outln!("rewrite:  CNAME {target}");
        }
    }
    match &detail {
        None if !allowed => {}
        None if policy.is_none() && matches.is_empty() => outln!("reason:   no list matches"),
        None if policy.is_none() => outln!("reason:   no list that applies to this client matches (see below)"),
        None => {}
        Some(detail) => {
            outln!(
                "list:     {}{}",
                detail.list,
                if detail.mandatory { " (mandatory)" } else { "" }
            );
            outln!("category: {}", detail.category.as_deref().unwrap_or("-"));
            if let Some(schedule) = &schedule {
                outln!("schedule: {schedule} (window open)");
            }
            outln!("matched:  {}", detail.matched_name);
            outln!("line:     {}", detail.line);
            outln!(
                "rule:     {}",
                detail.rule.as_deref().unwrap_or("(source no longer readable)")
            );
        }
    }
    if let Some(ede) = ede {
        outln!("ede:      {ede} ({})", shieldns_index::ede::name(ede));
    }
    if !matches.is_empty() {
        outln!("matches:");
        for (detail, applies, why) in &matches {
            outln!(
                "  {} line {} ({}): {}: {why}",
                detail.list,
                detail.line,
                detail.rule.as_deref().unwrap_or("source no longer readable"),
                if *applies { "applies" } else { "does not apply" }
            );
        }
    }
    Ok(())
}

/// Everything `explain` reports about a hit.
struct HitDetail {
    list: String,
    category: Option<String>,
    mandatory: bool,
    line: u32,
    rule: Option<String>,
    matched_name: String,
}

impl HitDetail {
    fn new(hit: &Hit, config: &Config, source: &ConfigSource, name: &str) -> Self {
        let list_config = config.lists.get(usize::from(hit.list.0));
        // Provenance is (list, line); the rule text is re-read from the
        // list's source rather than kept in memory for every rule.
        let rule = list_config.and_then(|list| {
            let (bytes, _, _) = shieldns_sync::read_list(list, &source.base_dir()).ok()?;
            let text = String::from_utf8_lossy(&bytes);
            // Parsers number lines the same way: split on LF, a BOM ignored.
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            text.lines()
                .nth(usize::try_from(hit.line).ok()?.checked_sub(1)?)
                .map(|l| l.trim().to_owned())
        });
        let matched_name = match hit.matched {
            Matched::Name { labels, .. } | Matched::Digest { labels } => {
                shieldns_index::name::suffix(name, usize::from(labels)).to_owned()
            }
            Matched::Pattern | Matched::AnswerIp { .. } => name.to_owned(),
        };
        Self {
            list: list_config.map_or_else(String::new, |l| l.name.clone()),
            category: list_config.and_then(|l| l.category.clone()),
            mandatory: list_config.is_some_and(|l| l.mandatory),
            line: hit.line,
            rule,
            matched_name,
        }
    }
}

/// `shieldns report`: the compliance report of a period, from the store.
pub(crate) fn report(
    source: &ConfigSource,
    from: &str,
    to: &str,
    format: shieldns_compliance::report::ReportFormat,
) -> anyhow::Result<()> {
    use shieldns_compliance::report;
    let config = source.load()?;
    let Some(path) = config.storage.database(&source.base_dir()) else {
        bail!(
            "storage.dir is not set in {}: there is no compliance store to report from",
            source.describe()
        );
    };
    let connection = report::open_read_only(&path)?;
    let (start, end) = report::period(from, to)?;
    let now = Timestamp::now().as_second();
    let report = report::build(&connection, start, end, now, config.storage.operator.as_deref())?;
    std::io::Write::write_all(
        &mut std::io::stdout().lock(),
        report::render(&report, format)?.as_bytes(),
    )?;
    Ok(())
}

pub(crate) fn lists_check(file: &Path, format: ListFormat, as_json: bool) -> anyhow::Result<()> {
    // A device or FIFO (`/dev/zero`) would be read forever.
    let metadata = std::fs::metadata(file).with_context(|| format!("cannot read {}", file.display()))?;
    if !metadata.is_file() {
        bail!("{} is not a regular file", file.display());
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut builder = SnapshotBuilder::new();
    let policy = ListPolicy::block(file.display().to_string(), None, format);
    let info = builder
        .add_list(policy, &bytes)
        .with_context(|| format!("{}", file.display()))?
        .clone();
    // `add_list` refuses a list without rules (empty, nothing valid, mostly
    // malformed: "is it the right file and `format`?").
    let snapshot = builder.build()?;
    if as_json {
        let value = json!({
            "file": file.display().to_string(),
            "format": format.as_str(),
            "entries": info.counts.rules,
            "accepted_lines": info.counts.accepted,
            "skipped_lines": info.counts.skipped,
            "rejected": info.counts.rejected,
            "rejected_examples": info.rejected_examples,
            "distinct_names": snapshot.distinct_names(),
            "name_rules": info.name_rules,
            "pattern_rules": info.pattern_rules,
            "digest_rules": info.digest_rules,
            "answer_ip_rules": info.answer_ip_rules,
            "bytes": snapshot.index_bytes(),
        });
        outln!("{value}");
        return Ok(());
    }
    outln!("file:      {}", file.display());
    outln!("format:    {format}");
    outln!(
        "entries:   {} ({} names, {} patterns, {} hashed, {} answer-IP)",
        info.counts.rules,
        info.name_rules,
        info.pattern_rules,
        info.digest_rules,
        info.answer_ip_rules
    );
    outln!("distinct:  {} names", snapshot.distinct_names());
    outln!(
        "skipped:   {} lines (localhost entries, $badfilter)",
        info.counts.skipped
    );
    outln!("rejected:  {} lines", info.counts.rejected);
    for example in &info.rejected_examples {
        outln!("  line {}: {} ({})", example.line, example.text.trim(), example.reason);
    }
    let more = info.counts.rejected.saturating_sub(info.rejected_examples.len() as u64);
    if more > 0 {
        outln!("  … and {more} more");
    }
    outln!("bytes:     {} (index arrays)", snapshot.index_bytes());
    Ok(())
}
