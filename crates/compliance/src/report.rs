//! The compliance report a provider sends (`shieldns report --from DATE
//! --to DATE`), computed from the compliance store alone (the daemon need
//! not be running). Dates are UTC days, both inclusive.
//!
//! Availability is the share of the measured time covered by runs of the
//! service: a run spans from its start to its recorded stop, or, after a
//! crash, to its last heartbeat (written on every rollup flush), so a crash
//! is charged from the last proof of life. The measured time starts at the
//! period's start or at the service's first start ever, whichever is later
//! (the day of installation is not charged for the hours before it), and
//! ends at the period's end or now; the report states that coverage.
//!
//! Every format carries the same sections and the same header: operator
//! (`storage.operator`), host, generation time, shieldns version, period.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

use crate::ComplianceError;

/// `--format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// Markdown.
    Md,
    /// CSV: `section,key,value` rows.
    Csv,
    /// One JSON object.
    Json,
    /// One self-contained HTML page with inline SVG charts.
    Html,
}

/// Who made the report, where and when.
#[derive(Debug, Serialize)]
pub struct Header {
    pub operator: String,
    pub host: String,
    pub generated_at: String,
    pub version: String,
}

impl Header {
    fn new(operator: Option<&str>, now: i64) -> Self {
        // Linux's own record of the host name: no library call needed.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Self {
            operator: operator.map_or_else(|| "(not set: storage.operator)".to_owned(), str::to_owned),
            host,
            generated_at: iso(now),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Everything the report states.
#[derive(Debug, Serialize)]
pub struct Report {
    pub header: Header,
    pub from: String,
    pub to: String,
    /// Where the measured time starts: the period's start, or the service's
    /// first start if later; `None` when the service never ran before the
    /// period's end.
    pub measured_from: Option<String>,
    /// Where it ends: the period's end, or now if earlier.
    pub measured_to: String,
    pub period_seconds: i64,
    pub up_seconds: i64,
    pub availability_percent: f64,
    pub restarts: u64,
    pub total_queries: u64,
    pub total_blocked: u64,
    pub queries_per_day: BTreeMap<String, u64>,
    pub blocked_per_category: BTreeMap<String, u64>,
    pub blocked_per_list: BTreeMap<String, u64>,
    pub blocked_per_profile: BTreeMap<String, u64>,
    pub mandatory_lists: Vec<Freshness>,
    pub sync_failures: Vec<SyncFailure>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub profiles: Vec<serde_json::Value>,
    pub list_versions: Vec<ListVersion>,
}

/// A mandatory list's freshness over the period.
#[derive(Debug, Serialize)]
pub struct Freshness {
    pub list: String,
    /// The oldest its version in force got, seconds.
    pub max_age_seconds: Option<i64>,
    /// The longest time without a successful sync (`url` lists), seconds.
    pub longest_gap_seconds: Option<i64>,
    pub sync_failures: u64,
}

/// One failed sync check.
#[derive(Debug, Serialize)]
pub struct SyncFailure {
    pub at: String,
    pub list: String,
    pub mandatory: bool,
    pub reason: String,
}

/// A list version in force during the period.
#[derive(Debug, Serialize)]
pub struct ListVersion {
    pub list: String,
    pub version: String,
    pub sha256: String,
    pub entries: u64,
    pub since: String,
}

/// Opens the store at `path` read only, for a report.
pub fn open_read_only(path: &std::path::Path) -> Result<Connection, ComplianceError> {
    if !path.exists() {
        return Err(ComplianceError::NoStore(path.to_path_buf()));
    }
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|cause| ComplianceError::Store {
        what: format!("cannot open {}", path.display()),
        cause,
    })
}

/// `[from 00:00 UTC, to + 1 day 00:00 UTC)` as Unix seconds.
pub fn period(from: &str, to: &str) -> Result<(i64, i64), ComplianceError> {
    let day = |text: &str| -> Result<i64, ComplianceError> {
        let not_a_date = |_| ComplianceError::Period(format!("{text:?} is not a date (YYYY-MM-DD)"));
        let date: jiff::civil::Date = text.parse().map_err(not_a_date)?;
        Ok(date
            .to_datetime(jiff::civil::Time::midnight())
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .map_err(not_a_date)?
            .timestamp()
            .as_second())
    };
    let (start, end) = (day(from)?, day(to)? + 86_400);
    if end <= start {
        return Err(ComplianceError::Period(format!("--to {to} is before --from {from}")));
    }
    Ok((start, end))
}

fn iso(at: i64) -> String {
    jiff::Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string())
}

/// Computes the report for `[start, end)`; `now` caps the period (a report
/// on the current half-year counts time up to now). `operator` is
/// `storage.operator`, named in the header.
pub fn build(
    db: &Connection,
    start: i64,
    end: i64,
    now: i64,
    operator: Option<&str>,
) -> Result<Report, ComplianceError> {
    let horizon = end.min(now).max(start);
    let first_start: Option<i64> = db.query_row("SELECT MIN(started) FROM runs", [], |r| r.get(0))?;
    let measured_from = first_start
        .filter(|&first| first < horizon)
        .map(|first| first.max(start));
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
    let period_seconds = measured_from.map_or(0, |from| horizon - from);
    // Gaps without sync are measured over the same span.
    let measured_start = measured_from.unwrap_or(horizon);
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
    let sum_by = |column: &str| -> Result<BTreeMap<String, u64>, ComplianceError> {
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

    let count = |sql: &str| -> Result<u64, ComplianceError> {
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
                .unwrap_or(measured_start);
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
        header: Header::new(operator, now),
        from: iso(start),
        to: iso(end),
        measured_from: measured_from.map(iso),
        measured_to: iso(horizon),
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
pub fn render(report: &Report, format: ReportFormat) -> Result<String, ComplianceError> {
    Ok(match format {
        ReportFormat::Json => format!("{}\n", serde_json::to_string_pretty(report)?),
        ReportFormat::Md => markdown(&sections(report)),
        ReportFormat::Csv => csv(&sections(report)),
        ReportFormat::Html => html(report, &sections(report)),
    })
}

/// One part of the report, as every text format shows it: the formats
/// differ in markup only, so none can miss a section.
struct Section {
    /// Machine name (CSV's first column, HTML ids).
    id: &'static str,
    title: &'static str,
    columns: &'static [&'static str],
    rows: Vec<Row>,
    /// Drawn as a bar chart too (HTML), from each row's last cell.
    chart: bool,
}

struct Row {
    /// Machine key (CSV's second column, HTML ids of figures).
    key: String,
    /// What the table shows, the row's label first.
    cells: Vec<String>,
}

fn figure(key: &str, label: &str, value: String) -> Row {
    Row {
        key: key.to_owned(),
        cells: vec![label.to_owned(), value],
    }
}

fn counts(map: &BTreeMap<String, u64>) -> Vec<Row> {
    map.iter()
        .map(|(key, value)| Row {
            key: key.clone(),
            cells: vec![key.clone(), value.to_string()],
        })
        .collect()
}

fn sections(r: &Report) -> Vec<Section> {
    let h = &r.header;
    let coverage = match &r.measured_from {
        Some(from) if *from == r.from => format!("{from} to {} (the whole period so far)", r.measured_to),
        Some(from) => format!(
            "{from} to {} (from the service's first start; the time before it is not counted)",
            r.measured_to
        ),
        None => "none: the service had not started by the period's end".to_owned(),
    };
    let availability = if r.measured_from.is_some() && r.period_seconds > 0 {
        format!("{:.3} %", r.availability_percent)
    } else {
        "n/a".to_owned()
    };
    vec![
        Section {
            id: "report",
            title: "Report",
            columns: &["Figure", "Value"],
            rows: vec![
                figure("operator", "Operator", h.operator.clone()),
                figure("host", "Host", h.host.clone()),
                figure("generated_at", "Generated at", h.generated_at.clone()),
                figure("version", "shieldns version", h.version.clone()),
                figure("from", "Period from", r.from.clone()),
                figure("to", "Period to (exclusive)", r.to.clone()),
                figure("measured", "Measured", coverage),
            ],
            chart: false,
        },
        Section {
            id: "service",
            title: "Service",
            columns: &["Figure", "Value"],
            rows: vec![
                figure("availability", "Availability", availability),
                figure(
                    "up",
                    "Up",
                    format!(
                        "{} of {} measured",
                        duration(Some(r.up_seconds)),
                        duration(Some(r.period_seconds))
                    ),
                ),
                figure("starts", "Starts", r.restarts.to_string()),
                figure("total_queries", "Total queries", r.total_queries.to_string()),
                figure("total_blocked", "Blocked", r.total_blocked.to_string()),
                figure(
                    "reloads",
                    "Reloads (ok / failed)",
                    format!("{} / {}", r.reloads_ok, r.reloads_failed),
                ),
            ],
            chart: false,
        },
        Section {
            id: "queries_per_day",
            title: "Queries per day",
            columns: &["Day", "Queries"],
            rows: counts(&r.queries_per_day),
            chart: true,
        },
        Section {
            id: "blocked_per_category",
            title: "Blocked per category",
            columns: &["Category", "Blocked"],
            rows: counts(&r.blocked_per_category),
            chart: true,
        },
        Section {
            id: "blocked_per_list",
            title: "Blocked per list",
            columns: &["List", "Blocked"],
            rows: counts(&r.blocked_per_list),
            chart: true,
        },
        Section {
            id: "blocked_per_profile",
            title: "Blocked per profile",
            columns: &["Profile", "Blocked"],
            rows: counts(&r.blocked_per_profile),
            chart: true,
        },
        Section {
            id: "mandatory_lists",
            title: "Mandatory lists",
            columns: &["List", "Max age", "Longest gap without sync", "Sync failures"],
            rows: r
                .mandatory_lists
                .iter()
                .map(|f| Row {
                    key: f.list.clone(),
                    cells: vec![
                        f.list.clone(),
                        duration(f.max_age_seconds),
                        duration(f.longest_gap_seconds),
                        f.sync_failures.to_string(),
                    ],
                })
                .collect(),
            chart: false,
        },
        Section {
            id: "sync_failures",
            title: "Sync failures",
            columns: &["Time", "List", "Mandatory", "Reason"],
            rows: r
                .sync_failures
                .iter()
                .map(|f| Row {
                    key: format!("{} {}", f.at, f.list),
                    cells: vec![f.at.clone(), f.list.clone(), f.mandatory.to_string(), f.reason.clone()],
                })
                .collect(),
            chart: false,
        },
        Section {
            id: "profiles",
            title: "Profiles in force",
            columns: &["Profile", "Client networks", "Blocked categories"],
            rows: r
                .profiles
                .iter()
                .map(|profile| {
                    let (name, clients, block) = profile_row(profile);
                    Row {
                        key: name.clone(),
                        cells: vec![name, clients, block],
                    }
                })
                .collect(),
            chart: false,
        },
        Section {
            id: "list_versions",
            title: "List versions in force",
            columns: &["List", "Version", "SHA-256", "Entries", "Since"],
            rows: r
                .list_versions
                .iter()
                .map(|v| Row {
                    key: v.list.clone(),
                    cells: vec![
                        v.list.clone(),
                        v.version.clone(),
                        v.sha256.clone(),
                        v.entries.to_string(),
                        v.since.clone(),
                    ],
                })
                .collect(),
            chart: false,
        },
    ]
}

/// A Markdown table cell: `|` and line ends would break the table.
fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn markdown(sections: &[Section]) -> String {
    let mut out = String::from("# shieldns compliance report\n");
    for section in sections {
        let _ = writeln!(out, "\n## {}\n", section.title);
        let _ = writeln!(out, "| {} |", section.columns.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(section.columns.len()));
        for row in &section.rows {
            let cells: Vec<String> = row.cells.iter().map(|c| md_cell(c)).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
    }
    out
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// `section,key,value` rows; a row of several columns puts them in its
/// value as `Column=value; …`.
fn csv(sections: &[Section]) -> String {
    let mut out = String::from("section,key,value\n");
    for section in sections {
        for row in &section.rows {
            let value = match row.cells.as_slice() {
                [_, value] => value.clone(),
                cells => section
                    .columns
                    .iter()
                    .zip(cells)
                    .skip(1)
                    .map(|(column, cell)| format!("{column}={cell}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            let _ = writeln!(
                out,
                "{},{},{}",
                csv_field(section.id),
                csv_field(&row.key),
                csv_field(&value)
            );
        }
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

fn html(r: &Report, sections: &[Section]) -> String {
    let mut body = String::from("<h1>shieldns compliance report</h1>");
    for section in sections {
        let _ = write!(
            body,
            "<section id=\"{}\"><h2>{}</h2>",
            section.id.replace('_', "-"),
            escape(section.title)
        );
        if section.chart {
            let data: BTreeMap<String, u64> = section
                .rows
                .iter()
                .map(|row| {
                    (
                        row.key.clone(),
                        row.cells.last().and_then(|c| c.parse().ok()).unwrap_or(0),
                    )
                })
                .collect();
            body.push_str(&bar_chart(section.title, &data));
        }
        body.push_str("<table><tr>");
        for column in section.columns {
            let _ = write!(body, "<th>{}</th>", escape(column));
        }
        body.push_str("</tr>");
        for row in &section.rows {
            body.push_str("<tr>");
            let figure = section.columns.first() == Some(&"Figure");
            for (i, cell) in row.cells.iter().enumerate() {
                let tag = if figure && i == 0 { "th" } else { "td" };
                let id = if figure && i == 1 {
                    format!(" id=\"{}\"", row.key.replace('_', "-"))
                } else {
                    String::new()
                };
                let class = if section.id == "list_versions" && i == 2 {
                    " class=\"hash\""
                } else {
                    ""
                };
                let _ = write!(body, "<{tag}{id}{class}>{}</{tag}>", escape(cell));
            }
            body.push_str("</tr>");
        }
        body.push_str("</table></section>");
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>shieldns compliance report {from} to {to}</title><style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;color:#000}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #888;padding:.2em .6em;text-align:left}}.hash{{font-family:monospace;font-size:.8em;word-break:break-all}}figure{{margin:1em 0;page-break-inside:avoid}}@media print{{body{{margin:0}}h2{{page-break-after:avoid}}}}</style></head><body>{body}</body></html>\n",
        from = escape(&r.from),
        to = escape(&r.to)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store as the daemon writes it (the schema is the store's own).
    fn store() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let connection = crate::store::open(&dir.path().join("compliance.db")).unwrap();
        (dir, connection)
    }

    #[test]
    fn the_day_of_installation_is_measured_from_the_first_start() {
        let (_dir, db) = store();
        let day = 1_764_633_600; // 2025-12-02T00:00:00Z
        let installed = day + 20 * 3600; // 20:00
        let now = installed + 16 * 60;
        db.execute(
            "INSERT INTO runs (started, last_seen, stopped) VALUES (?1, ?2, NULL)",
            params![installed, now],
        )
        .unwrap();
        db.execute(
            "INSERT INTO sync_events (at, list, mandatory, ok, reason) VALUES (?1, 'national', 1, 1, '')",
            params![installed + 5],
        )
        .unwrap();
        db.execute(
            "INSERT INTO list_versions (at, list, mandatory, version, sha256, entries, version_time) VALUES (?1, 'national', 1, '1', 'ab', 3, ?1)",
            params![installed + 5],
        )
        .unwrap();
        let report = build(&db, day, day + 86_400, now, None).unwrap();
        assert!(report.availability_percent > 99.0, "{report:?}");
        assert_eq!(report.period_seconds, 16 * 60);
        assert_eq!(report.measured_from.as_deref(), Some("2025-12-02T20:00:00Z"));
        let gap = report.mandatory_lists[0].longest_gap_seconds.unwrap();
        assert!(gap < 16 * 60, "the hours before installation are no gap: {gap}");
        // Every text format states the coverage and carries every section.
        let ids = sections(&report).iter().map(|s| s.id).collect::<Vec<_>>();
        for format in [ReportFormat::Md, ReportFormat::Csv, ReportFormat::Html] {
            let text = render(&report, format).unwrap();
            assert!(text.contains("from the service's first start"), "{format:?}: {text}");
            for (id, section) in ids.iter().zip(sections(&report)) {
                let present = match format {
                    ReportFormat::Md => text.contains(&format!("## {}", section.title)),
                    ReportFormat::Html => text.contains(&format!("<section id=\"{}\">", id.replace('_', "-"))),
                    _ => section.rows.is_empty() || text.lines().any(|l| l.starts_with(&format!("{id},"))),
                };
                assert!(present, "{format:?} lacks {id}");
            }
        }
        // No run at all in the period: availability is not claimed.
        let report = build(&db, day - 86_400, day, now, None).unwrap();
        assert!(report.measured_from.is_none());
        assert!(
            render(&report, ReportFormat::Md)
                .unwrap()
                .contains("| Availability | n/a |")
        );
    }
}
