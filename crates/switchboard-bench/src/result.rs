//! The result of one run: the JSON format (documented in `docs/benchmarks.md`, versioned by
//! its `format` field) and how a scenario fills it in from its plan and measurements.
//!
//! Fields are only ever added to format `switchboard-bench/1`; a reader ignores fields it does
//! not know and takes missing ones as absent, so older and newer files merge.

use std::{
    collections::BTreeMap,
    time::{SystemTime, UNIX_EPOCH},
};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{
    engine::{Outcome, Window},
    plan::Plan,
    proc::Machine,
    redis_info::RedisStats,
};

/// The `format` of one result.
pub(crate) const FORMAT: &str = "switchboard-bench/1";

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
    /// The Redis the nodes share (`--redis`).
    pub(crate) redis: Option<RedisStats>,
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
    /// Each node's memory (connect, with one `--server-pid` per `--url`, in the same order).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) nodes: Vec<NodeMemory>,
}

/// One node's memory in `connect` (`--server-pid` *k* is the process of `--url` *k*).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct NodeMemory {
    /// The process.
    pub(crate) pid: u32,
    /// The node's URL.
    pub(crate) url: String,
    /// Connections opened to it (every *n*-th of the run's, *n* the number of URLs).
    pub(crate) connections: u64,
    /// Resident memory before connecting.
    pub(crate) rss_before_bytes: u64,
    /// Resident memory with its connections open and settled.
    pub(crate) rss_after_bytes: Option<u64>,
    /// `(rss_after - rss_before) / connections`.
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

    /// Fills in `results.redis` (with `--redis`): the memory before the run and the window's
    /// samples; `connections` for Redis memory per connection (connect), `publications` sent
    /// in the window for the per-publication figures (fanout, rooms).
    pub(crate) fn set_redis(
        &mut self,
        plan: &Plan,
        w: &Window,
        connections: Option<u64>,
        publications: Option<u64>,
    ) {
        let Some((probe, before)) = &plan.redis else {
            return;
        };
        let url = probe
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .url()
            .to_string();
        let window = match &w.redis {
            Some(Ok((a, b))) => Some((a, b)),
            Some(Err(e)) => {
                self.warnings
                    .push(format!("Redis could not be read during the run: {e}"));
                None
            }
            None => None,
        };
        self.results.redis = Some(RedisStats::new(
            &url,
            Some(before),
            window,
            w.seconds,
            connections,
            publications,
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
