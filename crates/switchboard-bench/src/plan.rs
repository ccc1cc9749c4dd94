//! A checked run configuration ([`Plan`]) from the options every load scenario takes
//! ([`CommonArgs`]), and how a plan opens its connections: where each goes, from which source
//! address, with which headers, on which worker thread.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    rc::Rc,
    sync::{Arc, Mutex},
    time::Duration,
};

use clap::Args;

use crate::{
    auth::Auth,
    conn::{Conn, ConnError, Dial},
    engine, payload, proc,
    redis_info::{RedisProbe, RedisSample},
    target::Target,
};

/// Options every load scenario takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct CommonArgs {
    /// Server URL (ws://, loopback only); repeat it for several nodes: connections are spread
    /// over them round-robin. Default: the scenario's route on ws://127.0.0.1:8080.
    #[arg(long = "url", value_name = "URL")]
    pub(crate) urls: Vec<String>,
    /// Measurement length (e.g. 10, 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Load before the measurement, not counted (e.g. 2s; 0 for none).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub(crate) warmup: Duration,
    /// Worker threads, one current-thread runtime each. Default: available cores - 1 (min 1).
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<usize>,
    /// Pin worker thread i to the i-th CPU of this list (e.g. 2,3 or 2-3).
    #[arg(long, value_name = "LIST")]
    pub(crate) cpu_list: Option<String>,
    /// The server's process id, for its CPU use (and memory in `connect`); repeatable.
    #[arg(long = "server-pid", value_name = "PID")]
    pub(crate) server_pids: Vec<u32>,
    /// Source addresses 127.0.0.1..=127.0.0.K the connections are spread over (1: let the
    /// kernel choose). Only for IPv4 targets.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=254), value_name = "K")]
    pub(crate) source_addrs: u8,
    /// Connections being set up at once (keep it below the server's listen backlog).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) concurrency: usize,
    /// Time allowed for every connection to be set up. Default: 30 s plus 2 ms per
    /// connection (raise it when several bench processes share the handshakes).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    pub(crate) setup_timeout: Option<Duration>,
    /// Time allowed for messages in flight to arrive after the measurement.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// The name of this run in reports (e.g. the server's name). Default: the URL.
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Write the result as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Write a PNG chart of the result to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) png: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// The Redis the nodes share (redis://, loopback only): its memory and the commands it
    /// processed are read with INFO before and during the run.
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
}

/// `10`, `1.5` (seconds) or a humantime duration (`10s`, `500ms`, `1m`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("bad duration {s:?}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// A checked run configuration shared by the scenarios.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The options as given.
    pub(crate) common: CommonArgs,
    /// The servers.
    pub(crate) targets: Arc<[Target]>,
    /// Worker threads.
    pub(crate) threads: usize,
    /// CPUs to pin the workers to.
    pub(crate) cpus: Option<Vec<usize>>,
    /// Total connections.
    pub(crate) connections: usize,
    /// Progress bars.
    pub(crate) progress: engine::Progress,
    /// Socket.IO framing on every connection (`--socketio`).
    pub(crate) socketio: bool,
    /// Offer permessage-deflate on every connection (`connect --deflate`).
    pub(crate) deflate: bool,
    /// The Redis of `--redis`, and what it held before any connection was opened.
    pub(crate) redis: Option<(Arc<Mutex<RedisProbe>>, RedisSample)>,
}

impl Plan {
    /// Checks the options for `connections` connections; `default_url` when no `--url`.
    /// Everything that can be refused is refused here, before any socket is opened.
    pub(crate) fn new(
        common: CommonArgs,
        default_url: &str,
        connections: usize,
    ) -> Result<Plan, String> {
        let urls = if common.urls.is_empty() {
            vec![default_url.to_string()]
        } else {
            common.urls.clone()
        };
        let targets = urls
            .iter()
            .map(|u| Target::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        if connections == 0 {
            return Err("at least one connection is needed".into());
        }
        if common.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = common
            .threads
            .unwrap_or(available.saturating_sub(1))
            .clamp(1, 1024)
            .min(connections);
        let cpus = common
            .cpu_list
            .as_deref()
            .map(proc::parse_cpu_list)
            .transpose()?;
        if let Some(cpus) = &cpus {
            proc::check_cpus(cpus)?;
        }
        for pid in &common.server_pids {
            proc::check_pid(*pid)?;
        }
        proc::ensure_open_files(connections)?;
        if let Some(ports) = proc::ephemeral_ports() {
            let k = usize::from(common.source_addrs);
            let all_v4 = targets.iter().all(|t| t.addr.is_ipv4());
            // Bound sockets take a port of their source address whatever the destination;
            // unbound ones a port per (source, destination) pair.
            let per_address = if k > 1 && all_v4 {
                connections.div_ceil(k)
            } else {
                connections.div_ceil(targets.len())
            };
            if per_address as u64 > ports {
                return Err(format!(
                    "{connections} connections need {per_address} ports per source address but \
                     the ephemeral port range has {ports}: raise --source-addrs (127.0.0.x \
                     addresses to spread over) or use fewer connections"
                ));
            }
        }
        // Last of the checks: it reads the memory Redis uses before any connection.
        let redis = match &common.redis {
            Some(url) => {
                let mut probe = RedisProbe::connect(url)?;
                let before = probe.sample()?;
                Some((Arc::new(Mutex::new(probe)), before))
            }
            None => None,
        };
        Ok(Plan {
            progress: engine::Progress::new(common.quiet),
            common,
            targets: targets.into(),
            threads,
            cpus,
            connections,
            socketio: false,
            deflate: false,
            redis,
        })
    }

    /// Speaks Socket.IO on every connection (see [`crate::socketio`]); the URLs must be engine.io
    /// WebSocket endpoints.
    pub(crate) fn with_socketio(mut self, on: bool) -> Result<Plan, String> {
        if on
            && let Some(t) = self
                .targets
                .iter()
                .find(|t| !t.path.contains("transport=websocket"))
        {
            return Err(format!(
                "{}: --socketio needs the engine.io WebSocket endpoint, e.g. \
                 ws://{}/socket.io/?EIO=4&transport=websocket",
                t.url, t.host
            ));
        }
        self.socketio = on;
        Ok(self)
    }

    /// Offers permessage-deflate on every connection (the server may decline).
    pub(crate) fn with_deflate(mut self, on: bool) -> Plan {
        self.deflate = on;
        self
    }

    /// The server of connection `i` (round-robin).
    pub(crate) fn target(&self, i: usize) -> &Target {
        &self.targets[i % self.targets.len()]
    }

    /// How connection `i` is opened.
    pub(crate) fn dial<'a>(
        &'a self,
        i: usize,
        headers: &'a [(&'a str, &'a str)],
        read_buffer: usize,
    ) -> Dial<'a> {
        let target = self.target(i);
        let k = u32::from(self.common.source_addrs);
        let source = (k > 1 && target.addr.is_ipv4()).then(|| {
            let n = 1 + (i as u32 % k);
            IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | n))
        });
        Dial {
            target,
            source,
            headers,
            read_buffer,
            timeout: Duration::from_secs(15),
            deflate: self.deflate,
        }
    }

    /// The thread of connection `i`.
    pub(crate) fn owns(&self, thread: usize, i: usize) -> bool {
        i % self.threads == thread
    }

    /// Time allowed for set-up: generous, it depends on the server.
    pub(crate) fn setup_timeout(&self) -> Duration {
        self.common.setup_timeout.unwrap_or_else(|| {
            Duration::from_secs(30) + Duration::from_millis(self.connections as u64 * 2)
        })
    }

    /// The run's name in reports.
    pub(crate) fn name(&self) -> String {
        self.common.name.clone().unwrap_or_else(|| {
            self.targets
                .iter()
                .map(|t| t.url.trim_start_matches("ws://").to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// Starts the workers and a driver for them.
    pub(crate) fn start<F, Fut>(&self, body: F) -> Result<engine::Driver, String>
    where
        F: Fn(std::rc::Rc<engine::ThreadCtx>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        let shared = engine::Shared::new(self.threads);
        let handles = engine::spawn_workers(&shared, self.cpus.as_deref(), body)?;
        Ok(engine::Driver::new(
            shared,
            handles,
            self.progress,
            &self.common.server_pids,
            self.redis.as_ref().map(|(probe, _)| probe.clone()),
        ))
    }

    /// Starts the workers, each opening its share of the connections (at most
    /// `concurrency_per_thread` handshakes at a time, through the semaphore `open` is given)
    /// and then running each with `run`. A failed `open` counts as a failed connection, a
    /// failed `run` before the end of the run as a lost one; the connection is ready in
    /// between.
    pub(crate) fn start_connections<T, O, OF, R, RF>(
        &self,
        open: O,
        run: R,
    ) -> Result<engine::Driver, String>
    where
        T: 'static,
        O: Fn(Rc<engine::ThreadCtx>, usize, Rc<tokio::sync::Semaphore>) -> OF
            + Send
            + Sync
            + 'static,
        OF: std::future::Future<Output = Result<T, ConnError>> + 'static,
        R: Fn(Rc<engine::ThreadCtx>, usize, T) -> RF + Send + Sync + 'static,
        RF: std::future::Future<Output = Result<(), ConnError>> + 'static,
    {
        let plan = Arc::new(self.clone());
        let (open, run) = (Arc::new(open), Arc::new(run));
        self.start(move |ctx: Rc<engine::ThreadCtx>| {
            let (plan, open, run) = (plan.clone(), open.clone(), run.clone());
            async move {
                let limit = Rc::new(tokio::sync::Semaphore::new(plan.concurrency_per_thread()));
                for i in (0..plan.connections).filter(|i| plan.owns(ctx.index, *i)) {
                    let (ctx, open, run, limit) =
                        (ctx.clone(), open.clone(), run.clone(), limit.clone());
                    tokio::task::spawn_local(async move {
                        let conn = match open(ctx.clone(), i, limit).await {
                            Ok(c) => c,
                            Err(e) => {
                                return ctx.conn_failed(true, || format!("connection {i}: {e}"));
                            }
                        };
                        engine::Counters::add(&ctx.counters.ready, 1);
                        if let Err(e) = run(ctx.clone(), i, conn).await
                            && !ctx.shared.done.is_cancelled()
                        {
                            ctx.conn_failed(false, || format!("connection {i}: {e}"));
                        }
                    });
                }
                std::future::pending::<()>().await;
            }
        })
    }

    /// A read buffer size for connections that receive a lot: large batches for a few
    /// connections, less memory for many (20,000 × 8 KiB = 160 MiB).
    pub(crate) fn busy_read_buffer(&self) -> usize {
        match self.connections {
            0..=1_000 => 64 * 1024,
            1_001..=5_000 => 32 * 1024,
            _ => 8 * 1024,
        }
    }

    /// Handshakes in flight per thread.
    pub(crate) fn concurrency_per_thread(&self) -> usize {
        self.common.concurrency.div_ceil(self.threads).max(1)
    }
}

/// Opens connection `i` of `plan` with `auth`, waiting for a permit of `limit` first.
pub(crate) async fn open(
    plan: &Plan,
    i: usize,
    auth: &Auth,
    read_buffer: usize,
    limit: &tokio::sync::Semaphore,
) -> Result<Conn, ConnError> {
    let header = auth.header(i);
    let _permit = limit.acquire().await;
    open_with(plan, i, header.as_deref(), read_buffer).await
}

/// Opens connection `i` of `plan` now, with an `Authorization` value when given (and
/// connects it to Socket.IO's default namespace with `--socketio`).
pub(crate) async fn open_with(
    plan: &Plan,
    i: usize,
    authorization: Option<&str>,
    read_buffer: usize,
) -> Result<Conn, ConnError> {
    let headers: Vec<(&str, &str)> = authorization
        .map(|h| vec![("Authorization", h)])
        .unwrap_or_default();
    let mut conn = Conn::open(plan.dial(i, &headers, read_buffer)).await?;
    if plan.socketio {
        conn.join_socketio().await?;
    }
    Ok(conn)
}

/// Subscribes `conn` to `room` with command id `id` and waits for the reply.
pub(crate) async fn subscribe(conn: &mut Conn, room: &str, id: u64) -> Result<(), ConnError> {
    conn.output
        .text_with(|b| payload::put_subscribe(b, id, room));
    let wait = async {
        loop {
            conn.read_some().await?;
            while let Some(r) = conn.next_message()? {
                // Inflated when compressed (`connect --deflate`: a reply over the server's
                // compression threshold, e.g. with a long room name).
                let msg = conn.message(r)?;
                match payload::kind(&msg) {
                    payload::Kind::Reply(Some(got)) if got == id => return Ok(()),
                    payload::Kind::Error(_) => {
                        return Err(ConnError::Refused(
                            String::from_utf8_lossy(&msg[..msg.len().min(300)]).into_owned(),
                        ));
                    }
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .map_err(|_| ConnError::Timeout("the subscribe reply"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
