//! What a run prints and saves, and `switchboard bench report`: the table printed after a
//! run, the result file and chart it writes ([`finish`]), and the merge of result files into
//! one table with ratios against a baseline.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::{
    chart,
    plan::Plan,
    redis_info::RedisStats,
    result::{BenchResult, Latency, round1, round3},
};

/// The `format` of a merged report.
pub(crate) const REPORT_FORMAT: &str = "switchboard-bench-report/1";

fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_us(l: Option<&Latency>, pick: fn(&Latency) -> f64) -> String {
    l.map_or("-".into(), |l| format!("{:.0}", pick(l)))
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Renders rows as an aligned text table or a Markdown table.
fn render(header: &[&str], rows: &[Vec<String>], markdown: bool) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            if markdown {
                let _ = write!(s, "| {c:<w$} ");
            } else {
                if i > 0 {
                    s.push_str(" | ");
                }
                // First column left-aligned, numbers right-aligned.
                if i < 2 {
                    let _ = write!(s, "{c:<w$}");
                } else {
                    let _ = write!(s, "{c:>w$}");
                }
            }
        }
        if markdown {
            s.push('|');
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    if markdown {
        out.push_str(&line(
            &mut widths
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let dashes = "-".repeat((*w).max(3));
                    if i < 2 {
                        dashes
                    } else {
                        format!("{}:", &dashes[1..])
                    }
                })
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        ));
    } else {
        out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 3 * (widths.len() - 1)));
        out.push('\n');
    }
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// The table and notes printed after a run.
pub(crate) fn single_table(r: &BenchResult) -> String {
    let res = &r.results;
    let unit = if res.throughput_unit.is_empty() {
        "msgs/s"
    } else {
        &res.throughput_unit
    };
    let lat = res.latency_us.as_ref();
    let header = [
        "scenario",
        "name",
        "conns",
        unit,
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "server CPU%",
    ];
    let row = vec![
        r.scenario.clone(),
        r.name.clone(),
        res.connections.to_string(),
        fmt_rate(res.throughput),
        fmt_us(lat, |l| l.p50),
        fmt_us(lat, |l| l.p90),
        fmt_us(lat, |l| l.p99),
        fmt_us(lat, |l| l.p99_9),
        fmt_opt(res.server.as_ref().and_then(|s| s.cpu_percent), 1),
    ];
    let mut out = render(&header, &[row], false);
    let mut notes = Vec::new();
    notes.push(format!(
        "latency: {}{}",
        res.latency_kind.replace('_', " "),
        lat.map(|l| format!(
            " (min {:.0} µs, mean {:.0} µs, max {:.0} µs, {} samples)",
            l.min, l.mean, l.max, l.count
        ))
        .unwrap_or_default()
    ));
    if r.scenario == "connect" {
        notes.push(format!(
            "messages received while connected: {} (join pushes of a shared room, pings)",
            res.received
        ));
    } else {
        notes.push(format!(
            "sent {} ({}/s), received {}{}",
            res.sent,
            fmt_rate(res.sent_per_s),
            res.received,
            match (res.expected, res.delivery_ratio) {
                (Some(e), Some(ratio)) => format!(" of {e} expected (ratio {ratio:.4})"),
                _ => String::new(),
            }
        ));
    }
    if let Some(c) = &res.command_latency_us {
        notes.push(format!(
            "command round trip: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs ({} commands)",
            c.p50, c.p99, c.p99_9, c.count
        ));
    }
    if let Some(cps) = res.connections_per_s {
        notes.push(format!(
            "set-up: {} connections in {:.2} s ({:.0}/s)",
            res.connections, res.setup_s, cps
        ));
    }
    if let Some(n) = res.deflate_negotiated {
        notes.push(format!(
            "deflate negotiated on {n} of {} connections",
            res.connections
        ));
    }
    if let Some(m) = res
        .server
        .as_ref()
        .and_then(|s| s.memory_per_connection_bytes)
    {
        notes.push(format!(
            "server memory per connection: {:.1} KiB ({} connections)",
            m / 1024.0,
            res.connections
        ));
    }
    if let Some(s) = &res.server {
        for n in &s.nodes {
            notes.push(format!(
                "node {} (pid {}): {} connections, {} per connection",
                n.url.trim_start_matches("ws://"),
                n.pid,
                n.connections,
                n.memory_per_connection_bytes
                    .map_or("?".into(), |m| format!("{:.1} KiB", m / 1024.0)),
            ));
        }
    }
    if let Some(redis) = &res.redis {
        notes.push(redis_note(redis));
    }
    notes.push(format!(
        "generator: {} thread(s), {} CPU; machine: {} CPU ({} of it other processes); \
         measured {:.2} s",
        res.client.threads,
        res.client
            .cpu_percent
            .map_or("?".into(), |c| format!("{c:.1}%")),
        res.machine_cpu_percent
            .map_or("?".into(), |c| format!("{c:.0}%")),
        res.other_cpu_percent
            .map_or("?".into(), |c| format!("{c:.0}%")),
        res.measured_s
    ));
    if res.errors + res.failed_connections + res.lost_connections > 0 {
        notes.push(format!(
            "errors {}, failed connections {}, lost connections {}{}",
            res.errors,
            res.failed_connections,
            res.lost_connections,
            res.first_error
                .as_deref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        ));
    }
    for n in notes {
        let _ = writeln!(out, "  {n}");
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}

/// The `--redis` line of a run's notes.
fn redis_note(r: &RedisStats) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let mut parts = vec![format!(
        "redis: used_memory {} -> {}",
        r.used_memory_before_bytes.map_or("?".into(), mib),
        r.used_memory_after_bytes.map_or("?".into(), mib)
    )];
    if let Some(m) = r.memory_per_connection_bytes {
        parts.push(format!("{m:.0} B per connection"));
    }
    if let (Some(c), Some(per_s)) = (r.commands, r.commands_per_s) {
        parts.push(format!("{c} commands in the window ({per_s:.0}/s)"));
    }
    if let Some(per) = r.commands_per_publication {
        let calls: Vec<String> = r
            .calls_per_publication
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        parts.push(format!(
            "{per:.3} commands per publication (calls: {})",
            calls.join(", ")
        ));
    }
    parts.join(", ")
}

/// Prints, saves and charts a result; the exit code says whether it was clean: no failed
/// connection, no error and, when `complete` (every scenario but rooms with churn), every
/// expected message delivered.
pub(crate) fn finish(
    plan: &Plan,
    result: &BenchResult,
    complete: bool,
) -> Result<ExitCode, String> {
    print!("{}", single_table(result));
    if let Some(path) = &plan.common.json {
        let text = serde_json::to_string_pretty(result).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &plan.common.png {
        chart::draw(std::slice::from_ref(result), path)?;
    }
    let clean = result.results.errors == 0
        && result.results.failed_connections == 0
        && result.results.lost_connections == 0
        && (!complete || result.results.delivery_ratio.is_none_or(|r| r >= 1.0));
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Options of `switchboard bench report`.
#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// Result files written with --json (each holds one result or an array of results).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The run ratios are computed against, by name. Default: the first file's.
    #[arg(long, value_name = "NAME")]
    baseline: Option<String>,
    /// Print a Markdown table.
    #[arg(long)]
    markdown: bool,
    /// Write a PNG chart of the merged results to FILE.
    #[arg(long, value_name = "FILE")]
    png: Option<PathBuf>,
    /// Write the merged results and ratios as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// One row of a merged report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Row {
    /// The run's name.
    pub(crate) name: String,
    /// The scenario.
    pub(crate) scenario: String,
    /// Connections.
    pub(crate) connections: u64,
    /// Headline rate.
    pub(crate) throughput: f64,
    /// Its unit.
    pub(crate) throughput_unit: String,
    /// Median latency, µs.
    pub(crate) p50_us: Option<f64>,
    /// 99th percentile latency, µs.
    pub(crate) p99_us: Option<f64>,
    /// The servers' CPU use, percent of one core.
    pub(crate) server_cpu_percent: Option<f64>,
    /// Throughput per server core: `throughput / (server_cpu_percent / 100)`.
    pub(crate) per_core: Option<f64>,
    /// `throughput / baseline throughput` (higher is better).
    pub(crate) throughput_ratio: Option<f64>,
    /// `p99 / baseline p99` (lower is better).
    pub(crate) p99_ratio: Option<f64>,
    /// `per_core / baseline per_core` (higher is better).
    pub(crate) per_core_ratio: Option<f64>,
    /// Delivery ratio of the run.
    pub(crate) delivery_ratio: Option<f64>,
    /// The server's memory per connection, bytes (connect with `--server-pid`).
    pub(crate) memory_per_connection_bytes: Option<f64>,
    /// `memory_per_connection_bytes / baseline's` (lower is better).
    pub(crate) memory_ratio: Option<f64>,
}

/// A merged report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Merged {
    /// Always [`REPORT_FORMAT`].
    pub(crate) format: String,
    /// The baseline's name.
    pub(crate) baseline: String,
    /// One row per result, in input order.
    pub(crate) rows: Vec<Row>,
    /// The results as read.
    pub(crate) results: Vec<BenchResult>,
}

/// Reads one file: a result or an array of results.
fn load(path: &Path) -> Result<Vec<BenchResult>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(ref o)
            if o.get("format").and_then(|f| f.as_str()) == Some(REPORT_FORMAT) =>
        {
            o.get("results")
                .and_then(|r| r.as_array())
                .cloned()
                .unwrap_or_default()
        }
        other => vec![other],
    };
    items
        .into_iter()
        .map(|v| {
            let r: BenchResult = serde_json::from_value(v)
                .map_err(|e| format!("{}: not a bench result: {e}", path.display()))?;
            if !r.format.starts_with("switchboard-bench/") {
                return Err(format!("{}: unknown format {:?}", path.display(), r.format));
            }
            Ok(r)
        })
        .collect()
}

/// Merges results and computes ratios against `baseline` (default: the first result's name).
pub(crate) fn merge(results: Vec<BenchResult>, baseline: Option<&str>) -> Result<Merged, String> {
    let baseline = match baseline {
        Some(b) => {
            if !results.iter().any(|r| r.name == b) {
                let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
                return Err(format!(
                    "no result is named {b:?} (names: {})",
                    names.join(", ")
                ));
            }
            b.to_string()
        }
        None => results
            .first()
            .map(|r| r.name.clone())
            .ok_or("no results")?,
    };
    let row_of = |r: &BenchResult| {
        let res = &r.results;
        let cpu = res.server.as_ref().and_then(|s| s.cpu_percent);
        Row {
            name: r.name.clone(),
            scenario: r.scenario.clone(),
            connections: res.connections,
            throughput: res.throughput,
            throughput_unit: res.throughput_unit.clone(),
            p50_us: res.latency_us.map(|l| l.p50),
            p99_us: res.latency_us.map(|l| l.p99),
            server_cpu_percent: cpu,
            // Not for `connect`: its rate is of the set-up while its CPU is sampled during
            // the idle hold, so their quotient means nothing.
            per_core: cpu
                .filter(|c| *c > 0.0 && r.scenario != "connect")
                .map(|c| round1(res.throughput / (c / 100.0))),
            throughput_ratio: None,
            p99_ratio: None,
            per_core_ratio: None,
            delivery_ratio: res.delivery_ratio,
            memory_per_connection_bytes: res
                .server
                .as_ref()
                .and_then(|s| s.memory_per_connection_bytes),
            memory_ratio: None,
        }
    };
    let mut rows: Vec<Row> = results.iter().map(row_of).collect();
    let base_rows: Vec<Row> = rows
        .iter()
        .filter(|r| r.name == baseline)
        .cloned()
        .collect();
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round3(a / b)),
        _ => None,
    };
    for row in &mut rows {
        let base = base_rows
            .iter()
            .find(|b| b.scenario == row.scenario && b.connections == row.connections)
            .or_else(|| base_rows.iter().find(|b| b.scenario == row.scenario));
        if let Some(b) = base {
            row.throughput_ratio = ratio(Some(row.throughput), Some(b.throughput));
            row.p99_ratio = ratio(row.p99_us, b.p99_us);
            row.per_core_ratio = ratio(row.per_core, b.per_core);
            row.memory_ratio = ratio(
                row.memory_per_connection_bytes,
                b.memory_per_connection_bytes,
            );
        }
    }
    Ok(Merged {
        format: REPORT_FORMAT.into(),
        baseline,
        rows,
        results,
    })
}

/// The merged table (with memory per connection columns when a row has it).
pub(crate) fn merged_table(m: &Merged, markdown: bool) -> String {
    let memory = m
        .rows
        .iter()
        .any(|r| r.memory_per_connection_bytes.is_some());
    let mut header = vec![
        "scenario",
        "name",
        "conns",
        "rate",
        "unit",
        "× base",
        "p50 µs",
        "p99 µs",
        "p99 × base",
        "server CPU%",
        "per core",
        "per core × base",
    ];
    if memory {
        header.extend(["KiB/conn", "mem × base"]);
    }
    let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    let rows: Vec<Vec<String>> = m
        .rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.scenario.clone(),
                r.name.clone(),
                r.connections.to_string(),
                fmt_rate(r.throughput),
                r.throughput_unit.clone(),
                x(r.throughput_ratio),
                fmt_opt(r.p50_us, 0),
                fmt_opt(r.p99_us, 0),
                x(r.p99_ratio),
                fmt_opt(r.server_cpu_percent, 1),
                r.per_core.map_or("-".into(), fmt_rate),
                x(r.per_core_ratio),
            ];
            if memory {
                row.push(fmt_opt(
                    r.memory_per_connection_bytes.map(|b| b / 1024.0),
                    1,
                ));
                row.push(x(r.memory_ratio));
            }
            row
        })
        .collect();
    let mut out = render(&header, &rows, markdown);
    let _ = writeln!(
        out,
        "{}baseline: {}; × base: higher is better for rates, lower for latency{}; per core = \
         rate per server CPU core{}",
        if markdown { "\n" } else { "" },
        m.baseline,
        if memory { " and memory" } else { "" },
        if memory {
            "; KiB/conn = the server's resident memory per idle connection (connect)"
        } else {
            ""
        }
    );
    out
}

/// Runs `switchboard bench report`.
pub(crate) fn run(args: ReportArgs) -> Result<ExitCode, String> {
    let mut results = Vec::new();
    for f in &args.files {
        results.extend(load(f)?);
    }
    let merged = merge(results, args.baseline.as_deref())?;
    print!("{}", merged_table(&merged, args.markdown));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&merged).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.png {
        chart::draw(&merged.results, path)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        proc::Machine,
        result::{FORMAT, Results, RunConfig, ServerStats, rfc3339},
    };

    fn result(name: &str, scenario: &str, throughput: f64, p99: f64, cpu: f64) -> BenchResult {
        BenchResult {
            format: FORMAT.into(),
            name: name.into(),
            scenario: scenario.into(),
            timestamp: rfc3339(0),
            unix_time: 0,
            command_line: vec![],
            machine: Machine::this(),
            config: RunConfig::default(),
            results: Results {
                connections: 100,
                throughput,
                throughput_unit: "msgs/s".into(),
                latency_us: Some(Latency {
                    p99,
                    ..Latency::default()
                }),
                server: Some(ServerStats {
                    cpu_percent: Some(cpu),
                    ..ServerStats::default()
                }),
                ..Results::default()
            },
            warnings: vec![],
        }
    }

    #[test]
    fn ratios_are_against_the_baseline_of_the_same_scenario() {
        let m = merge(
            vec![
                result("a", "echo", 1000.0, 100.0, 100.0),
                result("b", "echo", 2000.0, 50.0, 50.0),
                result("b", "fanout", 10.0, 1.0, 100.0),
            ],
            Some("a"),
        )
        .unwrap();
        assert_eq!(m.rows[0].throughput_ratio, Some(1.0));
        assert_eq!(m.rows[1].throughput_ratio, Some(2.0));
        assert_eq!(m.rows[1].p99_ratio, Some(0.5));
        assert_eq!(m.rows[1].per_core, Some(4000.0));
        assert_eq!(m.rows[1].per_core_ratio, Some(4.0));
        assert_eq!(m.rows[2].throughput_ratio, None);
        assert!(merge(vec![result("a", "echo", 1.0, 1.0, 1.0)], Some("z")).is_err());
        let t = merged_table(&m, true);
        assert!(t.starts_with("| scenario"), "{t}");
        assert!(t.contains("| 2.00"), "{t}");
        assert!(
            !t.contains("KiB/conn"),
            "no memory column without memory: {t}"
        );
    }

    #[test]
    fn memory_per_connection_gets_its_columns() {
        let mut a = result("a", "connect", 100.0, 1.0, 1.0);
        let mut b = result("b", "connect", 100.0, 1.0, 1.0);
        a.results
            .server
            .as_mut()
            .unwrap()
            .memory_per_connection_bytes = Some(2048.0);
        b.results
            .server
            .as_mut()
            .unwrap()
            .memory_per_connection_bytes = Some(6144.0);
        let m = merge(vec![a, b], Some("a")).unwrap();
        assert_eq!(m.rows[1].memory_ratio, Some(3.0));
        let t = merged_table(&m, false);
        assert!(t.contains("KiB/conn"), "{t}");
        let cells: Vec<&str> = t
            .lines()
            .nth(3)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(cells[cells.len() - 2..], ["6.0", "3.00"], "{t}");
    }

    #[test]
    fn results_round_trip_through_json() {
        let r = result("a", "echo", 1.0, 2.0, 3.0);
        let text = serde_json::to_string(&r).unwrap();
        let back: BenchResult = serde_json::from_str(&text).unwrap();
        assert_eq!(back.results.throughput, 1.0);
        assert!(single_table(&back).contains("msgs/s"));
    }
}
