//! Results: the JSON format (documented in `docs/benchmarks.md`, versioned by its `format`
//! field), the table printed after a run, and `switchboard bench report`, which merges result
//! files into one table with ratios against a baseline.
//!
//! Fields are only ever added to format `switchboard-bench/1`; a reader ignores fields it does
//! not know and takes missing ones as absent, so older and newer files merge.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{SystemTime, UNIX_EPOCH},
};

use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::{
    Plan, chart,
    engine::{Outcome, Window},
    proc::Machine,
};

/// The `format` of one result.
pub(crate) const FORMAT: &str = "switchboard-bench/1";
/// The `format` of a merged report.
pub(crate) const REPORT_FORMAT: &str = "switchboard-bench-report/1";

/// One run of one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BenchResult {
    /// Always [`FORMAT`].
    pub(crate) format: String,
    /// The run's name (`--name`), e.g. the server measured.
    pub(crate) name: String,
    /// `echo`, `fanout`, `rooms` or `connect`.
    pub(crate) scenario: String,
    /// When the run ended, RFC 3339 UTC.
    pub(crate) timestamp: String,
    /// The same, in seconds since the Unix epoch.
    pub(crate) unix_time: u64,
    /// The command line of the run.
    pub(crate) command_line: Vec<String>,
    /// The machine it ran on.
    pub(crate) machine: Machine,
    /// What was asked for.
    pub(crate) config: RunConfig,
    /// What was measured.
    pub(crate) results: Results,
    /// Reasons to doubt the numbers.
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
}

/// The options of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct RunConfig {
    /// The servers.
    pub(crate) urls: Vec<String>,
    /// Connections asked for.
    pub(crate) connections: u64,
    /// Worker threads of the generator.
    pub(crate) threads: usize,
    /// CPUs the workers were pinned to.
    pub(crate) cpu_list: Option<Vec<usize>>,
    /// Source addresses used.
    pub(crate) source_addrs: u8,
    /// Measurement length asked for.
    pub(crate) duration_s: f64,
    /// Warm-up length.
    pub(crate) warmup_s: f64,
    /// Scenario options (`in_flight`, `size`, `subscribers`, …).
    pub(crate) params: BTreeMap<String, serde_json::Value>,
}

/// The numbers of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Results {
    /// Connections set up.
    pub(crate) connections: u64,
    /// Connections that failed during set-up.
    pub(crate) failed_connections: u64,
    /// Connections that failed after set-up.
    pub(crate) lost_connections: u64,
    /// Time to set every connection up, seconds.
    pub(crate) setup_s: f64,
    /// Length of the measured window, seconds.
    pub(crate) measured_s: f64,
    /// The headline rate over the measured window.
    pub(crate) throughput: f64,
    /// Its unit: `msgs/s` (echo round trips), `deliveries/s` (fanout, rooms),
    /// `connections/s` (connect).
    pub(crate) throughput_unit: String,
    /// Messages (echo) or publications (fanout, rooms) sent over the whole run.
    pub(crate) sent: u64,
    /// Messages or publications sent per second over the measured window.
    pub(crate) sent_per_s: f64,
    /// Echoes or deliveries received over the whole run (after draining).
    pub(crate) received: u64,
    /// Deliveries that should have arrived: sent (echo), published × subscribers (fanout),
    /// published × members (rooms).
    pub(crate) expected: Option<u64>,
    /// `received / expected`: 1.0 when nothing was lost.
    pub(crate) delivery_ratio: Option<f64>,
    /// Deliveries out of sequence (a gap or repeat in one publisher's sequence).
    pub(crate) out_of_order: u64,
    /// `error` answers and other failures.
    pub(crate) errors: u64,
    /// The first error, verbatim.
    pub(crate) first_error: Option<String>,
    /// What `latency_us` measures: `round_trip`, `publish_to_deliver` or `handshake`.
    pub(crate) latency_kind: String,
    /// Latency over the measured window (handshakes: over the set-up), microseconds.
    pub(crate) latency_us: Option<Latency>,
    /// Subscribe/unsubscribe round trips (rooms), microseconds.
    pub(crate) command_latency_us: Option<Latency>,
    /// Handshakes per second during set-up (connect).
    pub(crate) connections_per_s: Option<f64>,
    /// Connections on which the server agreed to permessage-deflate (connect `--deflate`).
    pub(crate) deflate_negotiated: Option<u64>,
    /// The servers' side (with `--server-pid`).
    pub(crate) server: Option<ServerStats>,
    /// The generator's side.
    pub(crate) client: ClientStats,
    /// The whole machine's CPU use over the measured window, percent of one core (at most
    /// `nproc` × 100).
    pub(crate) machine_cpu_percent: Option<f64>,
    /// What neither the servers nor the generator used of it: other processes and the
    /// kernel's work not charged to a process. High means a noisy machine.
    pub(crate) other_cpu_percent: Option<f64>,
    /// Times a listen queue on this machine overflowed during the run (`ListenOverflows`):
    /// each is a handshake retried a second later.
    pub(crate) listen_overflows: Option<u64>,
}

/// What was read about the servers from `/proc`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ServerStats {
    /// The processes (`--server-pid`).
    pub(crate) pids: Vec<u32>,
    /// CPU use over the measured window, percent of one core, summed over the processes.
    pub(crate) cpu_percent: Option<f64>,
    /// Resident memory before connecting (connect).
    pub(crate) rss_before_bytes: Option<u64>,
    /// Resident memory with every connection open and settled (connect).
    pub(crate) rss_after_bytes: Option<u64>,
    /// `(rss_after - rss_before) / connections` (connect).
    pub(crate) memory_per_connection_bytes: Option<f64>,
}

/// The generator's own cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct ClientStats {
    /// Worker threads.
    pub(crate) threads: usize,
    /// CPU use over the measured window, percent of one core.
    pub(crate) cpu_percent: Option<f64>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Latency {
    /// Samples.
    pub(crate) count: u64,
    /// Smallest.
    pub(crate) min: f64,
    /// Mean.
    pub(crate) mean: f64,
    /// Median.
    pub(crate) p50: f64,
    /// 90th percentile.
    pub(crate) p90: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// 99.9th percentile.
    pub(crate) p99_9: f64,
    /// Largest.
    pub(crate) max: f64,
}

impl Latency {
    /// Percentiles of a histogram in nanoseconds; `None` when it is empty.
    pub(crate) fn from_ns(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Some(Latency {
            count: h.len(),
            min: us(h.min()),
            mean: (h.mean() / 100.0).round() / 10.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }
}

/// Whether a scenario is meant to saturate the server (then an idle server is a warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    /// Closed loop, as fast as the server goes.
    Saturating,
    /// A fixed rate or idle connections.
    Paced,
}

impl BenchResult {
    /// A result of `scenario` for `plan`, with the measured window filled in.
    pub(crate) fn new(
        plan: &Plan,
        scenario: &str,
        params: BTreeMap<String, serde_json::Value>,
    ) -> BenchResult {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        BenchResult {
            format: FORMAT.into(),
            name: plan.name(),
            scenario: scenario.into(),
            timestamp: rfc3339(now),
            unix_time: now,
            command_line: std::env::args().collect(),
            machine: Machine::this(),
            config: RunConfig {
                urls: plan.targets.iter().map(|t| t.url.clone()).collect(),
                connections: plan.connections as u64,
                threads: plan.threads,
                cpu_list: plan.cpus.clone(),
                source_addrs: plan.common.source_addrs,
                duration_s: plan.common.duration.as_secs_f64(),
                warmup_s: plan.common.warmup.as_secs_f64(),
                params,
            },
            results: Results {
                client: ClientStats {
                    threads: plan.threads,
                    cpu_percent: None,
                },
                server: (!plan.common.server_pids.is_empty()).then(|| ServerStats {
                    pids: plan.common.server_pids.clone(),
                    ..ServerStats::default()
                }),
                ..Results::default()
            },
            warnings: Vec::new(),
        }
    }

    /// Fills in what every scenario reports: connections, errors, set-up time.
    pub(crate) fn set_outcome(&mut self, o: &Outcome, setup: std::time::Duration) {
        let r = &mut self.results;
        r.connections = o.totals.ready;
        r.failed_connections = o.totals.failed;
        r.lost_connections = o.totals.lost;
        r.errors = o.totals.errors;
        r.first_error = o.first_error.clone();
        r.listen_overflows = o.listen_overflows;
        r.setup_s = round3(setup.as_secs_f64());
    }

    /// Fills in the measured window's CPU numbers and length.
    pub(crate) fn set_window(&mut self, w: &Window) {
        self.results.measured_s = round3(w.seconds);
        self.results.client.cpu_percent = w.client_cpu.map(round1);
        if let Some(s) = &mut self.results.server {
            s.cpu_percent = w.server_cpu.map(round1);
        }
        self.results.machine_cpu_percent = w.machine_cpu.map(round1);
        // Without --server-pid the servers' share is unknown, and so is the rest.
        self.results.other_cpu_percent = match (w.machine_cpu, w.server_cpu, w.client_cpu) {
            (Some(m), Some(s), Some(c)) => Some(round1((m - s - c).max(0.0))),
            _ => None,
        };
    }

    /// Adds the warnings every scenario shares.
    pub(crate) fn check(&mut self, load: Load) {
        let r = &self.results;
        let mut w = Vec::new();
        match r.server.as_ref().and_then(|s| s.cpu_percent) {
            None => w.push("server CPU not measured: pass --server-pid PID".to_string()),
            Some(cpu) if load == Load::Saturating && cpu < 90.0 => {
                // Short of CPU: the machine was (nearly) full and others took a good share.
                let full = self.machine.nproc.max(1) as f64 * 90.0;
                let starved = r
                    .other_cpu_percent
                    .filter(|o| *o >= 25.0 && r.machine_cpu_percent.is_some_and(|m| m >= full));
                w.push(match starved {
                    Some(other) => format!(
                        "the server was not saturated: it used {cpu:.0}% of one core while \
                         other processes used {other:.0}%: it was short of CPU. Measure on a \
                         quiet machine, or pin the server and the generator to their own cores"
                    ),
                    None => format!(
                        "the server was not saturated: it used {cpu:.0}% of one core. The \
                         numbers measure the generator or the settings (raise --connections, \
                         --in-flight or --window, give the generator more --threads, pin both \
                         with --cpu-list / taskset)"
                    ),
                });
            }
            Some(_) => {}
        }
        if let Some(cpu) = r.client.cpu_percent {
            let cores = r.client.threads as f64 * 100.0;
            if load == Load::Saturating && cpu >= 0.9 * cores {
                w.push(format!(
                    "the generator was busy ({cpu:.0}% CPU for {} thread(s)): it may be the \
                     bottleneck; give it more --threads or fewer connections",
                    r.client.threads
                ));
            }
        }
        if let Some(other) = r.other_cpu_percent.filter(|o| *o >= 25.0) {
            w.push(format!(
                "the machine was not quiet: other processes used {other:.0}% CPU during the \
                 measurement; compare runs made side by side (ratios), not absolute numbers"
            ));
        }
        if let Some(n) = r.listen_overflows.filter(|n| *n > 0) {
            w.push(format!(
                "a listen queue on this machine overflowed {n} time(s) during the run: those \
                 handshakes were retried a second later. The server's accept backlog is smaller \
                 than --concurrency (tokio's default backlog is 128): lower --concurrency or \
                 raise the server's backlog"
            ));
        }
        if r.failed_connections > 0 {
            w.push(format!(
                "{} connection(s) failed during set-up",
                r.failed_connections
            ));
        }
        if r.lost_connections > 0 {
            w.push(format!(
                "{} connection(s) failed during the run",
                r.lost_connections
            ));
        }
        if r.errors > 0 {
            w.push(format!("{} error(s) from the server", r.errors));
        }
        if let Some(ratio) = r.delivery_ratio.filter(|r| *r < 1.0) {
            w.push(format!(
                "incomplete delivery: {:.4} of the expected messages arrived",
                ratio
            ));
        }
        if r.out_of_order > 0 {
            w.push(format!("{} deliveries out of sequence", r.out_of_order));
        }
        self.warnings.extend(w);
    }
}

/// Rounds to one decimal.
pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Rounds to three decimals.
pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `1700000000` as `2023-11-14T22:13:20Z`.
pub(crate) fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

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
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
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
