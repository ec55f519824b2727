//! `shieldns report --from DATE --to DATE`: the compliance report a provider
//! sends, computed from the compliance store alone (the daemon need not be
//! running). Dates are UTC days, both inclusive.
//!
//! Availability is the share of the period covered by runs of the service:
//! a run spans from its start to its recorded stop, or, after a crash, to
//! its last heartbeat (written on every rollup flush), so a crash is
//! charged from the last proof of life.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

use crate::config::ConfigSource;

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReportFormat {
    /// Markdown.
    Md,
    /// CSV: `section,key,value` rows.
    Csv,
    /// One JSON object.
    Json,
    /// One self-contained HTML page with inline SVG charts.
    Html,
}

/// Everything the report states.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) period_seconds: i64,
    pub(crate) up_seconds: i64,
    pub(crate) availability_percent: f64,
    pub(crate) restarts: u64,
    pub(crate) total_queries: u64,
    pub(crate) total_blocked: u64,
    pub(crate) queries_per_day: BTreeMap<String, u64>,
    pub(crate) blocked_per_category: BTreeMap<String, u64>,
    pub(crate) blocked_per_list: BTreeMap<String, u64>,
    pub(crate) blocked_per_profile: BTreeMap<String, u64>,
    pub(crate) mandatory_lists: Vec<Freshness>,
    pub(crate) sync_failures: Vec<SyncFailure>,
    pub(crate) reloads_ok: u64,
    pub(crate) reloads_failed: u64,
    pub(crate) profiles: Vec<serde_json::Value>,
    pub(crate) list_versions: Vec<ListVersion>,
}

/// A mandatory list's freshness over the period.
#[derive(Debug, Serialize)]
pub(crate) struct Freshness {
    pub(crate) list: String,
    /// The oldest its version in force got, seconds.
    pub(crate) max_age_seconds: Option<i64>,
    /// The longest time without a successful sync (`url` lists), seconds.
    pub(crate) longest_gap_seconds: Option<i64>,
    pub(crate) sync_failures: u64,
}

/// One failed sync check.
#[derive(Debug, Serialize)]
pub(crate) struct SyncFailure {
    pub(crate) at: String,
    pub(crate) list: String,
    pub(crate) mandatory: bool,
    pub(crate) reason: String,
}

/// A list version in force during the period.
#[derive(Debug, Serialize)]
pub(crate) struct ListVersion {
    pub(crate) list: String,
    pub(crate) version: String,
    pub(crate) sha256: String,
    pub(crate) entries: u64,
    pub(crate) since: String,
}

/// `shieldns report`.
pub(crate) fn run(source: &ConfigSource, from: &str, to: &str, format: ReportFormat) -> anyhow::Result<()> {
    let config = source.load()?;
    let Some(path) = config.storage.database(&source.base_dir()) else {
        bail!(
            "storage.dir is not set in {}: there is no compliance store to report from",
            source.describe()
        );
    };
    if !path.exists() {
        bail!(
            "no compliance store at {} (has the daemon run with this storage.dir?)",
            path.display()
        );
    }
    let connection = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let (start, end) = period(from, to)?;
    let report = build(&connection, start, end, shieldns_index::Timestamp::now().as_second())?;
    std::io::Write::write_all(&mut std::io::stdout().lock(), render(&report, format)?.as_bytes())?;
    Ok(())
}

/// `[from 00:00 UTC, to + 1 day 00:00 UTC)` as Unix seconds.
fn period(from: &str, to: &str) -> anyhow::Result<(i64, i64)> {
    let day = |text: &str| -> anyhow::Result<i64> {
        let date: jiff::civil::Date = text
            .parse()
            .with_context(|| format!("{text:?} is not a date (YYYY-MM-DD)"))?;
        Ok(date
            .to_datetime(jiff::civil::Time::midnight())
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)?
            .timestamp()
            .as_second())
    };
    let (start, end) = (day(from)?, day(to)? + 86_400);
    if end <= start {
        bail!("--to {to} is before --from {from}");
    }
    Ok((start, end))
}

fn iso(at: i64) -> String {
    jiff::Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string())
}

/// Computes the report for `[start, end)`; `now` caps the period (a report
/// on the current half-year counts time up to now).
pub(crate) fn build(db: &Connection, start: i64, end: i64, now: i64) -> anyhow::Result<Report> {
    let horizon = end.min(now).max(start);
    let mut up = 0i64;
    let mut restarts = 0u64;
    let mut runs = db.prepare("SELECT started, COALESCE(stopped, last_seen) FROM runs ORDER BY started")?;
    for run in runs.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
        let (run_start, run_end) = run?;
        let overlap = run_end.min(horizon) - run_start.max(start);
        if overlap > 0 {
            up += overlap;
        }
        if run_start >= start && run_start < end {
            restarts += 1;
        }
    }
    let period_seconds = horizon - start;
    let availability_percent = if period_seconds > 0 {
        (up as f64 * 100.0 / period_seconds as f64).min(100.0)
    } else {
        0.0
    };

    let mut queries_per_day = BTreeMap::new();
    let mut total_queries = 0;
    let mut statement =
        db.prepare("SELECT hour, SUM(queries) FROM rollup_queries WHERE hour >= ?1 AND hour < ?2 GROUP BY hour")?;
    for row in statement.query_map(params![start, end], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
        let (hour, count) = row?;
        let count = u64::try_from(count).unwrap_or(0);
        total_queries += count;
        *queries_per_day
            .entry(iso(hour).get(..10).unwrap_or_default().to_owned())
            .or_insert(0) += count;
    }
    let sum_by = |column: &str| -> anyhow::Result<BTreeMap<String, u64>> {
        let mut statement = db.prepare(&format!(
            "SELECT {column}, SUM(blocks) FROM rollup_blocks WHERE hour >= ?1 AND hour < ?2 GROUP BY {column}"
        ))?;
        let rows = statement.query_map(params![start, end], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut map = BTreeMap::new();
        for row in rows {
            let (key, count) = row?;
            map.insert(key, u64::try_from(count).unwrap_or(0));
        }
        Ok(map)
    };
    let blocked_per_category = sum_by("category")?;
    let blocked_per_list = sum_by("list")?;
    let blocked_per_profile = sum_by("profile")?;
    let total_blocked = blocked_per_list.values().sum();

    let mut sync_failures = Vec::new();
    let mut statement = db.prepare(
        "SELECT at, list, mandatory, reason FROM sync_events WHERE ok = 0 AND at >= ?1 AND at < ?2 ORDER BY at",
    )?;
    for row in statement.query_map(params![start, end], |r| {
        Ok(SyncFailure {
            at: iso(r.get(0)?),
            list: r.get(1)?,
            mandatory: r.get(2)?,
            reason: r.get(3)?,
        })
    })? {
        sync_failures.push(row?);
    }

    let count = |sql: &str| -> anyhow::Result<u64> {
        let value: i64 = db.query_row(sql, params![start, end], |r| r.get(0))?;
        Ok(u64::try_from(value).unwrap_or(0))
    };
    let reloads_ok = count("SELECT COUNT(*) FROM reloads WHERE ok = 1 AND at >= ?1 AND at < ?2")?;
    let reloads_failed = count("SELECT COUNT(*) FROM reloads WHERE ok = 0 AND at >= ?1 AND at < ?2")?;

    // Versions in force: every version recorded in the period, plus the
    // last one recorded before it, per list.
    let mut versions: BTreeMap<String, Vec<VersionRow>> = BTreeMap::new();
    let mut statement = db.prepare(
        "SELECT at, list, version, sha256, entries, version_time, mandatory FROM list_versions WHERE at < ?1 ORDER BY at",
    )?;
    for row in statement.query_map(params![end], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, bool>(6)?,
        ))
    })? {
        let (at, list, version, sha256, entries, version_time, mandatory) = row?;
        let history = versions.entry(list).or_default();
        if at <= start {
            history.clear();
        }
        // The same version seen again (a restart) is not a new version.
        if history.last().is_none_or(|last| last.2 != sha256) {
            history.push((
                at,
                version,
                sha256,
                u64::try_from(entries).unwrap_or(0),
                version_time,
                mandatory,
            ));
        }
    }
    let mut list_versions = Vec::new();
    let mut mandatory_lists = Vec::new();
    for (list, history) in &versions {
        for (at, version, sha256, entries, _, _) in history {
            list_versions.push(ListVersion {
                list: list.clone(),
                version: version.clone(),
                sha256: sha256.clone(),
                entries: *entries,
                since: iso(*at),
            });
        }
        if !history.last().is_some_and(|v| v.5) {
            continue;
        }
        let mut max_age = None::<i64>;
        for (i, (_, _, _, _, version_time, _)) in history.iter().enumerate() {
            let until = history.get(i + 1).map_or(horizon, |next| next.0.min(horizon));
            if let Some(version_time) = version_time {
                let age = until - version_time;
                max_age = Some(max_age.map_or(age, |m| m.max(age)));
            }
        }
        let mut successes = Vec::new();
        let mut statement =
            db.prepare("SELECT at FROM sync_events WHERE ok = 1 AND list = ?1 AND at < ?2 ORDER BY at")?;
        for row in statement.query_map(params![list, horizon], |r| r.get::<_, i64>(0))? {
            successes.push(row?);
        }
        let longest_gap = (!successes.is_empty()).then(|| {
            let before = successes
                .iter()
                .rev()
                .find(|&&at| at <= start)
                .copied()
                .unwrap_or(start);
            let mut points: Vec<i64> = std::iter::once(before)
                .chain(successes.iter().copied().filter(|&at| at > start))
                .collect();
            points.push(horizon);
            points.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
        });
        mandatory_lists.push(Freshness {
            list: list.clone(),
            max_age_seconds: max_age,
            longest_gap_seconds: longest_gap,
            sync_failures: sync_failures.iter().filter(|f| &f.list == list).count() as u64,
        });
    }

    let mut profiles = Vec::new();
    let mut statement = db.prepare(
        "SELECT profiles FROM policies WHERE at >= ?1 AND at < ?2
         UNION ALL SELECT profiles FROM (SELECT profiles FROM policies WHERE at < ?1 ORDER BY at DESC LIMIT 1)",
    )?;
    for row in statement.query_map(params![start, end], |r| r.get::<_, String>(0))? {
        let parsed: serde_json::Value = serde_json::from_str(&row?).unwrap_or_default();
        for profile in parsed.as_array().into_iter().flatten() {
            if !profiles.contains(profile) {
                profiles.push(profile.clone());
            }
        }
    }

    Ok(Report {
        from: iso(start),
        to: iso(end),
        period_seconds,
        up_seconds: up,
        availability_percent,
        restarts,
        total_queries,
        total_blocked,
        queries_per_day,
        blocked_per_category,
        blocked_per_list,
        blocked_per_profile,
        mandatory_lists,
        sync_failures,
        reloads_ok,
        reloads_failed,
        profiles,
        list_versions,
    })
}

/// A `list_versions` row: recorded at, version, sha256, entries, version
/// time, mandatory.
type VersionRow = (i64, String, String, u64, Option<i64>, bool);

fn duration(seconds: Option<i64>) -> String {
    seconds.map_or_else(
        || "n/a".to_owned(),
        |s| humantime::format_duration(std::time::Duration::from_secs(u64::try_from(s).unwrap_or(0))).to_string(),
    )
}

fn profile_row(profile: &serde_json::Value) -> (String, String, String) {
    let join = |key: &str| {
        profile[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (
        profile["name"].as_str().unwrap_or_default().to_owned(),
        join("clients"),
        join("block"),
    )
}

/// Renders the report.
pub(crate) fn render(report: &Report, format: ReportFormat) -> anyhow::Result<String> {
    Ok(match format {
        ReportFormat::Json => format!("{}\n", serde_json::to_string_pretty(report)?),
        ReportFormat::Md => markdown(report),
        ReportFormat::Csv => csv(report),
        ReportFormat::Html => html(report),
    })
}

fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# shieldns compliance report\n");
    let _ = writeln!(out, "Period: {} to {} (UTC, end exclusive)\n", r.from, r.to);
    let _ = writeln!(out, "## Service\n");
    let _ = writeln!(out, "| Figure | Value |\n|---|---|");
    let _ = writeln!(out, "| Availability | {:.3} % |", r.availability_percent);
    let _ = writeln!(
        out,
        "| Up | {} of {} |",
        duration(Some(r.up_seconds)),
        duration(Some(r.period_seconds))
    );
    let _ = writeln!(out, "| Starts | {} |", r.restarts);
    let _ = writeln!(out, "| Total queries | {} |", r.total_queries);
    let _ = writeln!(out, "| Blocked | {} |", r.total_blocked);
    let _ = writeln!(
        out,
        "| Reloads (ok / failed) | {} / {} |",
        r.reloads_ok, r.reloads_failed
    );
    for (title, map) in [
        ("Blocked per category", &r.blocked_per_category),
        ("Blocked per list", &r.blocked_per_list),
        ("Blocked per profile", &r.blocked_per_profile),
    ] {
        let _ = writeln!(out, "\n## {title}\n\n| Name | Blocked |\n|---|---|");
        for (key, value) in map {
            let _ = writeln!(out, "| {key} | {value} |");
        }
    }
    let _ = writeln!(
        out,
        "\n## Mandatory lists\n\n| List | Max age | Longest gap without sync | Sync failures |\n|---|---|---|---|"
    );
    for f in &r.mandatory_lists {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            f.list,
            duration(f.max_age_seconds),
            duration(f.longest_gap_seconds),
            f.sync_failures
        );
    }
    let _ = writeln!(
        out,
        "\n## Sync failures\n\n| Time | List | Mandatory | Reason |\n|---|---|---|---|"
    );
    for f in &r.sync_failures {
        let _ = writeln!(out, "| {} | {} | {} | {} |", f.at, f.list, f.mandatory, f.reason);
    }
    let _ = writeln!(
        out,
        "\n## Profiles in force\n\n| Profile | Client networks | Blocked categories |\n|---|---|---|"
    );
    for profile in &r.profiles {
        let (name, clients, block) = profile_row(profile);
        let _ = writeln!(out, "| {name} | {clients} | {block} |");
    }
    let _ = writeln!(
        out,
        "\n## List versions in force\n\n| List | Version | SHA-256 | Entries | Since |\n|---|---|---|---|---|"
    );
    for v in &r.list_versions {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            v.list, v.version, v.sha256, v.entries, v.since
        );
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

fn csv(r: &Report) -> String {
    let mut rows: Vec<(String, String, String)> = vec![
        ("period".into(), "from".into(), r.from.clone()),
        ("period".into(), "to".into(), r.to.clone()),
        (
            "service".into(),
            "availability_percent".into(),
            format!("{:.3}", r.availability_percent),
        ),
        ("service".into(), "up_seconds".into(), r.up_seconds.to_string()),
        ("service".into(), "period_seconds".into(), r.period_seconds.to_string()),
        ("service".into(), "starts".into(), r.restarts.to_string()),
        ("queries".into(), "total".into(), r.total_queries.to_string()),
        ("blocked".into(), "total".into(), r.total_blocked.to_string()),
        ("reloads".into(), "ok".into(), r.reloads_ok.to_string()),
        ("reloads".into(), "failed".into(), r.reloads_failed.to_string()),
    ];
    for (section, map) in [
        ("queries_per_day", &r.queries_per_day),
        ("blocked_per_category", &r.blocked_per_category),
        ("blocked_per_list", &r.blocked_per_list),
        ("blocked_per_profile", &r.blocked_per_profile),
    ] {
        rows.extend(map.iter().map(|(k, v)| (section.to_owned(), k.clone(), v.to_string())));
    }
    for f in &r.mandatory_lists {
        rows.push((
            "mandatory_max_age_seconds".into(),
            f.list.clone(),
            f.max_age_seconds.map(|s| s.to_string()).unwrap_or_default(),
        ));
        rows.push((
            "mandatory_longest_gap_seconds".into(),
            f.list.clone(),
            f.longest_gap_seconds.map(|s| s.to_string()).unwrap_or_default(),
        ));
    }
    for f in &r.sync_failures {
        rows.push(("sync_failure".into(), format!("{} {}", f.at, f.list), f.reason.clone()));
    }
    for profile in &r.profiles {
        let (name, clients, block) = profile_row(profile);
        rows.push(("profile".into(), name, format!("clients={clients}; block={block}")));
    }
    for v in &r.list_versions {
        rows.push((
            "list_version".into(),
            v.list.clone(),
            format!(
                "{} sha256={} entries={} since={}",
                v.version, v.sha256, v.entries, v.since
            ),
        ));
    }
    let mut out = String::from("section,key,value\n");
    for (section, key, value) in rows {
        let _ = writeln!(out, "{},{},{}", csv_field(&section), csv_field(&key), csv_field(&value));
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart as inline SVG.
fn bar_chart(title: &str, data: &BTreeMap<String, u64>) -> String {
    let max = data.values().copied().max().unwrap_or(0).max(1);
    let row = 22;
    let height = row * data.len().max(1) + 30;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" width=\"640\" height=\"{height}\" viewBox=\"0 0 640 {height}\">",
        escape(title)
    );
    for (i, (key, value)) in data.iter().enumerate() {
        let y = 10 + i * row;
        let width = (*value as f64 / max as f64 * 380.0).round();
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect class=\"bar\" x=\"180\" y=\"{y}\" width=\"{width}\" height=\"16\" fill=\"#3465a4\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{value}</text>",
            y + 12,
            escape(key),
            185.0 + width,
            y + 12
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

fn html(r: &Report) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>shieldns compliance report</h1><p>Period: <b>{}</b> to <b>{}</b> (UTC, end exclusive)</p>",
        escape(&r.from),
        escape(&r.to)
    );
    let _ = write!(
        body,
        "<table><tr><th>Availability</th><td id=\"availability\">{:.3} %</td></tr><tr><th>Total queries</th><td id=\"total-queries\">{}</td></tr><tr><th>Blocked</th><td id=\"total-blocked\">{}</td></tr><tr><th>Starts</th><td>{}</td></tr><tr><th>Reloads ok / failed</th><td>{} / {}</td></tr></table>",
        r.availability_percent, r.total_queries, r.total_blocked, r.restarts, r.reloads_ok, r.reloads_failed
    );
    body.push_str(&bar_chart("Queries per day", &r.queries_per_day));
    body.push_str(&bar_chart("Blocked per category", &r.blocked_per_category));
    body.push_str(&bar_chart("Blocked per list", &r.blocked_per_list));
    body.push_str("<h2>Mandatory lists</h2><table><tr><th>List</th><th>Max age</th><th>Longest gap</th><th>Sync failures</th></tr>");
    for f in &r.mandatory_lists {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.list),
            duration(f.max_age_seconds),
            duration(f.longest_gap_seconds),
            f.sync_failures
        );
    }
    body.push_str("</table><h2>Sync failures</h2><table><tr><th>Time</th><th>List</th><th>Reason</th></tr>");
    for f in &r.sync_failures {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.at),
            escape(&f.list),
            escape(&f.reason)
        );
    }
    body.push_str("</table><h2>Profiles in force</h2><table><tr><th>Profile</th><th>Client networks</th><th>Blocked categories</th></tr>");
    for profile in &r.profiles {
        let (name, clients, block) = profile_row(profile);
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&name),
            escape(&clients),
            escape(&block)
        );
    }
    body.push_str("</table><h2>List versions in force</h2><table><tr><th>List</th><th>Version</th><th>SHA-256</th><th>Entries</th><th>Since</th></tr>");
    for v in &r.list_versions {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"hash\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(&v.list),
            escape(&v.version),
            escape(&v.sha256),
            v.entries,
            escape(&v.since)
        );
    }
    body.push_str("</table>");
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>shieldns compliance report {from} to {to}</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#000}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #888;padding:.2em .6em;text-align:left}}.hash{{font-family:monospace;font-size:.8em;word-break:break-all}}figure{{margin:1em 0;page-break-inside:avoid}}@media print{{body{{margin:0}}h2{{page-break-after:avoid}}}}</style></head><body>{body}</body></html>\n",
        from = escape(&r.from),
        to = escape(&r.to)
    )
}
