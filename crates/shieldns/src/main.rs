//! `shieldns`: a DNS-level harmful-content filtering recursive resolver.
//!
//! The binary owns what the libraries must not: the configuration file, the
//! one `ArcSwap<Snapshot>` the resolver reads and reloads write, signals,
//! and the command line. It wires the crates and keeps no policy logic of
//! its own.

/// `println!` for the one-shot commands, returning the write error instead
/// of panicking: `shieldns check-config | head -1` closes the pipe early,
/// and `main` ends quietly on that (see `is_broken_pipe`).
macro_rules! outln {
    ($($arg:tt)*) => {
        std::io::Write::write_fmt(&mut std::io::stdout().lock(), format_args!("{}\n", format_args!($($arg)*)))?
    };
}

mod commands;
mod config;
mod daemon;
mod exporter;
mod policy;
mod sync_wiring;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shieldns_compliance::report::ReportFormat as Format;

/// jemalloc rather than the system allocator: a reload frees a whole
/// snapshot (tens of MB at 1M names) after building the next one, and glibc
/// kept that memory, so RSS grew with every reload; jemalloc's background
/// thread returns freed pages to the system.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use shieldns_index::ListFormat;

/// `report --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ReportFormat {
    /// Markdown.
    Md,
    /// CSV: `section,key,value` rows.
    Csv,
    /// One JSON object.
    Json,
    /// One self-contained HTML page with inline SVG charts.
    Html,
}

impl From<ReportFormat> for Format {
    fn from(format: ReportFormat) -> Self {
        match format {
            ReportFormat::Md => Self::Md,
            ReportFormat::Csv => Self::Csv,
            ReportFormat::Json => Self::Json,
            ReportFormat::Html => Self::Html,
        }
    }
}

/// DNS-level harmful-content filtering resolver for ISPs and schools.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve DNS (on the embedded default configuration without --config).
    Run {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load the configuration and every list, print a summary, and exit
    /// non-zero on any error.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Explain what happens to a name for a client: profile, verdict, and
    /// for a block the list, category, line, rule and EDE code.
    Explain {
        /// The name to explain.
        name: String,
        /// The client address (default 127.0.0.1).
        #[arg(long, default_value = "127.0.0.1")]
        client: IpAddr,
        /// The client ID the client sends on an encrypted listener (DoH
        /// path `/dns-query/ID`, DoT server name `ID.domain`).
        #[arg(long)]
        client_id: Option<String>,
        /// The query type (default A), for per-type policy.
        #[arg(long, default_value = "A")]
        qtype: String,
        /// The time to evaluate schedules at (RFC 3339; default now).
        #[arg(long)]
        at: Option<shieldns_index::Timestamp>,
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The compliance report for a period, from the compliance store
    /// (`storage.dir`): availability, queries, blocks per category, list and
    /// profile, mandatory-list freshness, sync failures, profiles and list
    /// versions. The plan asks every provider to report twice a year,
    /// before 15 June and before 15 December: e.g. `--from 2026-06-01 --to
    /// 2026-11-30` for the report due by 15 December.
    Report {
        /// First day of the period (YYYY-MM-DD, UTC, inclusive).
        #[arg(long)]
        from: String,
        /// Last day of the period (YYYY-MM-DD, UTC, inclusive).
        #[arg(long)]
        to: String,
        /// Output format: md, csv, json or html.
        #[arg(long, default_value = "md")]
        format: ReportFormat,
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// List tools.
    Lists {
        #[command(subcommand)]
        command: ListsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ListsCommand {
    /// Parse and compile one list file and report what it contains.
    Check {
        /// The list file.
        file: PathBuf,
        /// Its format: hosts, domains, wildcard, adblock, dnsmasq, rpz, sha256.
        #[arg(long)]
        format: ListFormat,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Download every list that has a `url` now: verify it and store it in
    /// the cache. Exits non-zero if a mandatory list failed. A running
    /// daemon picks the new copies up on SIGHUP. `--force NAME` also
    /// accepts a `path` list's file that the shrink guard refused.
    Update {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Lift the shrink guard for this list (repeatable).
        #[arg(long, value_name = "NAME")]
        force: Vec<String>,
    },
    /// Show each list's source and, for `url` and `path` lists, the version
    /// in force, entries, and the last check, success and failure with its
    /// reason.
    Status {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => daemon::run(config::ConfigSource::from_arg(config)),
        Command::CheckConfig { config } => commands::check_config(&config::ConfigSource::from_arg(config)),
        Command::Explain {
            name,
            client,
            client_id,
            qtype,
            at,
            config,
            json,
        } => commands::explain(
            &config::ConfigSource::from_arg(config),
            &commands::ExplainQuery {
                name,
                client,
                client_id,
                qtype,
                at,
                json,
            },
        ),
        Command::Report {
            from,
            to,
            format,
            config,
        } => commands::report(&config::ConfigSource::from_arg(config), &from, &to, format.into()),
        Command::Lists {
            command: ListsCommand::Check { file, format, json },
        } => commands::lists_check(&file, format, json),
        Command::Lists {
            command: ListsCommand::Update { config, force },
        } => sync_wiring::lists_update(&config::ConfigSource::from_arg(config), &force),
        Command::Lists {
            command: ListsCommand::Status { config, json },
        } => sync_wiring::lists_status(&config::ConfigSource::from_arg(config), json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): what it wanted was written.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shieldns: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether an error is stdout's reader having closed the pipe.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
