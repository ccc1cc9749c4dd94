//! The generator's threads and the phases of a run.
//!
//! Each worker thread runs its own current-thread tokio runtime (optionally pinned to one
//! CPU) with a `LocalSet`: connection tasks never move between threads, share their thread's
//! histograms through `Rc<RefCell<…>>` without locks, and publish their counts with one
//! relaxed atomic add per batch into their thread's [`Counters`], which the main thread reads.
//!
//! A run goes through phases driven by the main thread: set-up (connect, upgrade, subscribe;
//! every connection counts itself `ready` or `failed`), warm-up (load runs, nothing is
//! recorded), measurement (histograms record; counters and CPU time are read at both ends),
//! stop (no new messages; what is in flight drains), done (every task is dropped).

use std::{
    cell::RefCell,
    future::Future,
    io::IsTerminal,
    rc::Rc,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::{
    proc::{self, CpuSample},
    redis_info::{RedisProbe, RedisSample},
};

/// Connecting and setting up.
const SETUP: u8 = 0;
/// Load runs; nothing is recorded.
const WARMUP: u8 = 1;
/// Load runs; histograms record.
const MEASURE: u8 = 2;
/// No new messages.
const STOP: u8 = 3;

/// Largest latency a histogram holds (larger values are recorded as this): 10 minutes.
const MAX_NS: u64 = 600_000_000_000;

/// A new latency histogram in nanoseconds, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("valid histogram bounds")
}

/// State shared by the main thread and every worker.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The time base of every timestamp of the run (monotonic, process-wide).
    t0: Instant,
    phase: AtomicU8,
    /// Cancelled when the load may start (after every connection is set up).
    pub(crate) go: CancellationToken,
    /// Cancelled when no new message may be sent.
    pub(crate) stop: CancellationToken,
    /// Cancelled at the end: every task is dropped.
    pub(crate) done: CancellationToken,
    /// One set of counters per worker thread.
    pub(crate) counters: Vec<Arc<Counters>>,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    /// Shared state for `threads` workers.
    pub(crate) fn new(threads: usize) -> Arc<Shared> {
        Arc::new(Shared {
            t0: Instant::now(),
            phase: AtomicU8::new(SETUP),
            go: CancellationToken::new(),
            stop: CancellationToken::new(),
            done: CancellationToken::new(),
            counters: (0..threads)
                .map(|_| Arc::new(Counters::default()))
                .collect(),
            first_error: Mutex::new(None),
        })
    }

    /// Nanoseconds since the run's time base.
    pub(crate) fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Whether histograms record now.
    pub(crate) fn measuring(&self) -> bool {
        self.phase.load(Relaxed) == MEASURE
    }

    /// Whether no new message may be sent.
    pub(crate) fn stopping(&self) -> bool {
        self.phase.load(Relaxed) >= STOP
    }

    /// Keeps the first error message of the run (later ones are only counted).
    pub(crate) fn note_error(&self, message: impl FnOnce() -> String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(message());
        }
    }

    /// The first error message, if any.
    pub(crate) fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The sum of every thread's counters.
    pub(crate) fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for c in &self.counters {
            t.ready += c.ready.load(Relaxed);
            t.failed += c.failed.load(Relaxed);
            t.lost += c.lost.load(Relaxed);
            t.sent += c.sent.load(Relaxed);
            t.received += c.received.load(Relaxed);
            t.other += c.other.load(Relaxed);
            t.errors += c.errors.load(Relaxed);
            t.commands += c.commands.load(Relaxed);
            t.stopped += c.stopped.load(Relaxed);
            t.out_of_order += c.out_of_order.load(Relaxed);
        }
        t
    }
}

/// One worker thread's counts, updated once per batch with relaxed atomics. Aligned so that
/// two threads' counters never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    /// Connections set up.
    pub(crate) ready: AtomicU64,
    /// Connections that failed during set-up.
    pub(crate) failed: AtomicU64,
    /// Connections that failed after set-up.
    pub(crate) lost: AtomicU64,
    /// Messages sent (echo) or publications sent (fan-out, rooms).
    pub(crate) sent: AtomicU64,
    /// Echoes received (echo) or deliveries to subscribers (fan-out, rooms).
    pub(crate) received: AtomicU64,
    /// Other data messages received (publishers' copies, join/leave pushes).
    pub(crate) other: AtomicU64,
    /// `error` answers and other refusals.
    pub(crate) errors: AtomicU64,
    /// Commands answered (rooms churn).
    pub(crate) commands: AtomicU64,
    /// Publishers that saw the stop.
    pub(crate) stopped: AtomicU64,
    /// Deliveries out of sequence (a gap or a repeat in one publisher's sequence).
    pub(crate) out_of_order: AtomicU64,
}

impl Counters {
    /// Adds `n` to `field`.
    pub(crate) fn add(field: &AtomicU64, n: u64) {
        if n != 0 {
            field.fetch_add(n, Relaxed);
        }
    }
}

/// The sum of all threads' [`Counters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    /// See [`Counters::ready`].
    pub(crate) ready: u64,
    /// See [`Counters::failed`].
    pub(crate) failed: u64,
    /// See [`Counters::lost`].
    pub(crate) lost: u64,
    /// See [`Counters::sent`].
    pub(crate) sent: u64,
    /// See [`Counters::received`].
    pub(crate) received: u64,
    /// See [`Counters::other`].
    pub(crate) other: u64,
    /// See [`Counters::errors`].
    pub(crate) errors: u64,
    /// See [`Counters::commands`].
    pub(crate) commands: u64,
    /// See [`Counters::stopped`].
    pub(crate) stopped: u64,
    /// See [`Counters::out_of_order`].
    pub(crate) out_of_order: u64,
}

/// What a worker's tasks share: the run, the thread's counters and histograms.
#[derive(Debug)]
pub(crate) struct ThreadCtx {
    /// The run.
    pub(crate) shared: Arc<Shared>,
    /// This thread's counters.
    pub(crate) counters: Arc<Counters>,
    /// This thread's index.
    pub(crate) index: usize,
    /// The scenario's main latency (round trip, publish to delivery, handshake), ns.
    pub(crate) latency: RefCell<Histogram<u64>>,
    /// A second latency (command round trips in `rooms`), ns.
    pub(crate) secondary: RefCell<Histogram<u64>>,
}

impl ThreadCtx {
    /// Counts a connection that failed, keeping the first message.
    pub(crate) fn conn_failed(&self, during_setup: bool, what: impl FnOnce() -> String) {
        let field = if during_setup {
            &self.counters.failed
        } else {
            &self.counters.lost
        };
        field.fetch_add(1, Relaxed);
        self.shared.note_error(what);
    }
}

/// What a worker hands back at the end.
#[derive(Debug)]
pub(crate) struct ThreadResult {
    /// See [`ThreadCtx::latency`].
    pub(crate) latency: Histogram<u64>,
    /// See [`ThreadCtx::secondary`].
    pub(crate) secondary: Histogram<u64>,
}

/// Starts `threads` workers; each builds its runtime, calls `body` once (which spawns the
/// thread's connection tasks with `spawn_local`) and runs until the run is done.
pub(crate) fn spawn_workers<F, Fut>(
    shared: &Arc<Shared>,
    cpus: Option<&[usize]>,
    body: F,
) -> Result<Vec<JoinHandle<Result<ThreadResult, String>>>, String>
where
    F: Fn(Rc<ThreadCtx>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let body = Arc::new(body);
    let mut handles = Vec::new();
    for index in 0..shared.counters.len() {
        let shared = shared.clone();
        let body = body.clone();
        let cpu = cpus.map(|c| c[index % c.len()]);
        let handle = std::thread::Builder::new()
            .name(format!("bench-{index}"))
            .spawn(move || -> Result<ThreadResult, String> {
                if let Some(cpu) = cpu {
                    proc::pin_current_thread(cpu)?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("runtime: {e}"))?;
                let ctx = Rc::new(ThreadCtx {
                    counters: shared.counters[index].clone(),
                    shared: shared.clone(),
                    index,
                    latency: RefCell::new(histogram()),
                    secondary: RefCell::new(histogram()),
                });
                let local = tokio::task::LocalSet::new();
                let done = shared.done.clone();
                let task_ctx = ctx.clone();
                local.block_on(&rt, async move {
                    tokio::select! {
                        () = body(task_ctx) => done.cancelled().await,
                        () = done.cancelled() => {}
                    }
                });
                // Dropping the LocalSet drops every connection task (and its Rc of ctx).
                drop(local);
                drop(rt);
                let ctx = Rc::try_unwrap(ctx).map_err(|_| "a task outlived its runtime")?;
                Ok(ThreadResult {
                    latency: ctx.latency.into_inner(),
                    secondary: ctx.secondary.into_inner(),
                })
            })
            .map_err(|e| format!("cannot start a worker thread: {e}"))?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Progress bars on stderr, hidden when stderr is not a terminal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    enabled: bool,
}

impl Progress {
    /// Progress shown when stderr is a terminal and `quiet` is off.
    pub(crate) fn new(quiet: bool) -> Progress {
        Progress {
            enabled: !quiet && std::io::stderr().is_terminal(),
        }
    }

    /// A bar of `len` steps with `template` (indicatif syntax).
    pub(crate) fn bar(&self, len: u64, template: &str) -> ProgressBar {
        let target = if self.enabled {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }
}

/// The measured window of a run.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    /// Counters at the start of the measurement.
    pub(crate) start: Totals,
    /// Counters at its end.
    pub(crate) end: Totals,
    /// Its length in seconds.
    pub(crate) seconds: f64,
    /// The servers' CPU use over it, percent of one core (summed over `--server-pid`s).
    pub(crate) server_cpu: Option<f64>,
    /// This process's CPU use over it, percent of one core.
    pub(crate) client_cpu: Option<f64>,
    /// The whole machine's CPU use over it, percent of one core.
    pub(crate) machine_cpu: Option<f64>,
    /// With `--redis`: Redis at its start and at its end, or why it could not be read.
    pub(crate) redis: Option<Result<(RedisSample, RedisSample), String>>,
}

/// What every scenario reports at the end of a run.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The counters.
    pub(crate) totals: Totals,
    /// The first error.
    pub(crate) first_error: Option<String>,
    /// Listen queue overflows during the run.
    pub(crate) listen_overflows: Option<u64>,
}

/// Drives a run from the main thread.
#[derive(Debug)]
pub(crate) struct Driver {
    /// The run.
    pub(crate) shared: Arc<Shared>,
    handles: Vec<JoinHandle<Result<ThreadResult, String>>>,
    progress: Progress,
    server_pids: Vec<Option<u32>>,
    overflows_at_start: Option<u64>,
    redis: Option<Arc<Mutex<RedisProbe>>>,
}

impl Driver {
    /// Drives the workers of `shared`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        handles: Vec<JoinHandle<Result<ThreadResult, String>>>,
        progress: Progress,
        server_pids: &[u32],
        redis: Option<Arc<Mutex<RedisProbe>>>,
    ) -> Driver {
        Driver {
            shared,
            handles,
            progress,
            server_pids: server_pids.iter().map(|p| Some(*p)).collect(),
            overflows_at_start: proc::listen_overflows(),
            redis,
        }
    }

    /// Redis now (`--redis`); `None` without it.
    fn redis_sample(&self) -> Option<Result<RedisSample, String>> {
        let probe = self.redis.as_ref()?;
        Some(probe.lock().unwrap_or_else(|p| p.into_inner()).sample())
    }

    /// Listen queue overflows on this machine since the driver was made.
    pub(crate) fn listen_overflows(&self) -> Option<u64> {
        Some(proc::listen_overflows()?.saturating_sub(self.overflows_at_start?))
    }

    /// The counters, the first error and the listen overflows now (after the drain).
    pub(crate) fn outcome(&self) -> Outcome {
        Outcome {
            totals: self.shared.totals(),
            first_error: self.shared.first_error(),
            listen_overflows: self.listen_overflows(),
        }
    }

    /// Waits until `total` connections are set up (or failed). Returns the time it took.
    /// With `fail_fast`, the first failed connection ends the wait.
    /// [`Driver::wait_setup`], stopping the workers when set-up fails so that the caller can
    /// return the error at once.
    pub(crate) fn setup(
        self,
        total: u64,
        timeout: Duration,
        fail_fast: bool,
    ) -> Result<(Self, Duration), String> {
        match self.wait_setup(total, timeout, fail_fast) {
            Ok(elapsed) => Ok((self, elapsed)),
            Err(e) => {
                let _ = self.finish();
                Err(e)
            }
        }
    }

    pub(crate) fn wait_setup(
        &self,
        total: u64,
        timeout: Duration,
        fail_fast: bool,
    ) -> Result<Duration, String> {
        let bar = self.progress.bar(
            total,
            "{prefix:>10} [{bar:40}] {pos}/{len} connections {per_sec} {msg}",
        );
        bar.set_prefix("connecting");
        let started = Instant::now();
        loop {
            let t = self.shared.totals();
            bar.set_position(t.ready);
            if t.ready + t.failed >= total {
                bar.finish_and_clear();
                return if t.failed > 0 && fail_fast {
                    Err(self.setup_error(t, total))
                } else {
                    Ok(started.elapsed())
                };
            }
            if t.failed > 0 && fail_fast {
                bar.finish_and_clear();
                return Err(self.setup_error(t, total));
            }
            if started.elapsed() > timeout {
                bar.finish_and_clear();
                return Err(format!(
                    "only {} of {total} connections were set up within {}s{}",
                    t.ready,
                    timeout.as_secs(),
                    self.shared
                        .first_error()
                        .map(|e| format!(" (first error: {e})"))
                        .unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn setup_error(&self, t: Totals, total: u64) -> String {
        format!(
            "{} of {total} connections failed during set-up; first error: {}",
            t.failed.max(1),
            self.shared
                .first_error()
                .unwrap_or_else(|| "unknown".into())
        )
    }

    /// Starts the load, lets it warm up, measures for `duration`, then stops new messages.
    /// `rate_of` turns a counter delta into the live rate shown on the progress bar.
    pub(crate) fn load(
        &self,
        warmup: Duration,
        duration: Duration,
        unit: &str,
        rate_of: impl Fn(&Totals, &Totals) -> u64,
    ) -> Result<Window, String> {
        self.shared.phase.store(WARMUP, Relaxed);
        self.shared.go.cancel();
        if !warmup.is_zero() {
            let bar = self.progress.bar(
                warmup.as_millis() as u64,
                "{prefix:>10} [{bar:40}] {elapsed} {msg}",
            );
            bar.set_prefix("warm-up");
            self.sleep_showing(&bar, warmup, unit, &rate_of);
            bar.finish_and_clear();
        }
        let server_a = self.server_cpu_sample()?;
        let client_a = CpuSample::read(&[None]).ok();
        let machine_a = CpuSample::read_machine();
        let redis_a = self.redis_sample();
        let start = self.shared.totals();
        let t_start = Instant::now();
        self.shared.phase.store(MEASURE, Relaxed);
        let bar = self.progress.bar(
            duration.as_millis() as u64,
            "{prefix:>10} [{bar:40}] {elapsed}/{duration} {msg}",
        );
        bar.set_prefix("measuring");
        self.sleep_showing(&bar, duration, unit, &rate_of);
        let end = self.shared.totals();
        let seconds = t_start.elapsed().as_secs_f64();
        let server_b = self.server_cpu_sample()?;
        let client_b = CpuSample::read(&[None]).ok();
        let machine_b = CpuSample::read_machine();
        let redis_b = self.redis_sample();
        self.shared.phase.store(STOP, Relaxed);
        self.shared.stop.cancel();
        bar.finish_and_clear();
        Ok(Window {
            start,
            end,
            seconds,
            server_cpu: server_a.zip(server_b).map(|(a, b)| b.percent_since(&a)),
            client_cpu: client_a.zip(client_b).map(|(a, b)| b.percent_since(&a)),
            machine_cpu: machine_a.zip(machine_b).map(|(a, b)| b.percent_since(&a)),
            redis: redis_a.zip(redis_b).map(|(a, b)| Ok((a?, b?))),
        })
    }

    /// The servers' CPU time now, when `--server-pid` was given.
    pub(crate) fn server_cpu_sample(&self) -> Result<Option<CpuSample>, String> {
        if self.server_pids.is_empty() {
            return Ok(None);
        }
        CpuSample::read(&self.server_pids).map(Some)
    }

    fn sleep_showing(
        &self,
        bar: &ProgressBar,
        length: Duration,
        unit: &str,
        rate_of: &impl Fn(&Totals, &Totals) -> u64,
    ) {
        let started = Instant::now();
        let mut last = (started, self.shared.totals());
        loop {
            let elapsed = started.elapsed();
            if elapsed >= length {
                return;
            }
            std::thread::sleep((length - elapsed).min(Duration::from_millis(100)));
            bar.set_position(started.elapsed().as_millis() as u64);
            let now = Instant::now();
            if now.duration_since(last.0) >= Duration::from_millis(500) {
                let t = self.shared.totals();
                let secs = now.duration_since(last.0).as_secs_f64();
                let rate = rate_of(&last.1, &t) as f64 / secs;
                bar.set_message(format!("{} {unit}", human(rate)));
                last = (now, t);
            }
        }
    }

    /// Waits until `drained` holds for the counters or `timeout` passes; returns whether it
    /// held.
    pub(crate) fn drain(&self, timeout: Duration, drained: impl Fn(&Totals) -> bool) -> bool {
        self.wait_until("draining", timeout, drained)
    }

    /// Waits, with a spinner labelled `what`, until `done` holds for the counters or
    /// `timeout` passes; returns whether it held.
    pub(crate) fn wait_until(
        &self,
        what: &'static str,
        timeout: Duration,
        done: impl Fn(&Totals) -> bool,
    ) -> bool {
        let bar = self
            .progress
            .bar(0, "{prefix:>10} {spinner} {elapsed} {msg}");
        bar.set_prefix(what);
        let started = Instant::now();
        loop {
            if done(&self.shared.totals()) {
                bar.finish_and_clear();
                return true;
            }
            if started.elapsed() >= timeout {
                bar.finish_and_clear();
                return false;
            }
            bar.tick();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Ends the run: drops every task and merges the workers' histograms.
    pub(crate) fn finish(self) -> Result<ThreadResult, String> {
        self.shared.stop.cancel();
        self.shared.done.cancel();
        let mut merged = ThreadResult {
            latency: histogram(),
            secondary: histogram(),
        };
        for h in self.handles {
            let r = h
                .join()
                .map_err(|_| "a worker thread panicked".to_string())??;
            merged
                .latency
                .add(&r.latency)
                .map_err(|e| format!("merging histograms: {e}"))?;
            merged
                .secondary
                .add(&r.secondary)
                .map_err(|e| format!("merging histograms: {e}"))?;
        }
        Ok(merged)
    }
}

/// `1234567.0` as `1.23M`.
pub(crate) fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Paces open-loop sending at a fixed rate: how many messages are due, and what time to stamp
/// each with.
///
/// Message `i` is due at `start + i / rate`. Its stamp is the time it is actually sent, unless
/// the sender is more than two ticks behind its schedule (a stall of the generator or a full
/// socket): then the stamp is the time it was due, so that latency counts the stall instead of
/// hiding it (coordinated omission). Lateness within two ticks is the timer's granularity
/// (1 ms), not the server's doing, and is not counted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    start_ns: u64,
    per_second: f64,
    sent: u64,
}

impl Pacer {
    /// `per_second` messages, the first due at `start_ns`.
    pub(crate) fn new(start_ns: u64, per_second: f64) -> Pacer {
        Pacer {
            start_ns,
            per_second,
            sent: 0,
        }
    }

    /// How many messages are due at `now_ns` and not sent yet.
    pub(crate) fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        let elapsed = (now_ns - self.start_ns) as f64 / 1e9;
        ((elapsed * self.per_second) as u64 + 1).saturating_sub(self.sent)
    }

    /// Marks the next message sent at `now_ns` and returns its stamp.
    pub(crate) fn next(&mut self, now_ns: u64) -> u64 {
        let due = self.start_ns + (self.sent as f64 / self.per_second * 1e9) as u64;
        self.sent += 1;
        let slack = 2 * self.tick().as_nanos() as u64;
        if now_ns.saturating_sub(due) > slack {
            due
        } else {
            now_ns
        }
    }

    /// The interval at which to check for due messages: one message's worth, at least 1 ms.
    pub(crate) fn tick(&self) -> Duration {
        Duration::from_secs_f64((1.0 / self.per_second).clamp(0.001, 3600.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spreads_messages_evenly() {
        let ms = 1_000_000;
        let mut p = Pacer::new(ms, 1000.0);
        assert_eq!(p.due(0), 0);
        assert_eq!(p.due(ms), 1, "the first message is due at the start");
        assert_eq!(p.due(11 * ms), 11);
        // On time or within two ticks: stamped with the send time.
        assert_eq!(p.next(ms + 500), ms + 500);
        assert_eq!(p.next(2 * ms + 1), 2 * ms + 1);
        assert_eq!(p.due(11 * ms), 9);
        // Far behind: stamped with the time it was due.
        assert_eq!(p.next(50 * ms), 3 * ms);
        assert_eq!(p.tick(), Duration::from_millis(1));
        assert_eq!(Pacer::new(0, 2.0).tick(), Duration::from_millis(500));
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(12.0), "12");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(1_234_567.0), "1.23M");
    }
}
