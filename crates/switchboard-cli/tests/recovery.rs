//! Recovery and fan-out under stress, against the real binary: subscribers that keep dropping
//! their sockets and resubscribing with `since` get every publication exactly once and in
//! order; `recovered: false` when they cannot; a consumer that stops reading is closed with
//! 4500 while everyone else gets everything and the server's memory stays bounded.

mod common;
mod protocol_common;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use protocol_common::{
    Client, OP_CLOSE, OP_TEXT, RawWs, Rng, SECRET, T, TestServer, mint_token, rss_kib, token,
};
use serde_json::{Value, json};
use tokio::sync::{Barrier, Notify};

/// The whole of a stress test must end within this.
const BUDGET: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// (a) Recovery under churn

const SUBSCRIBERS: usize = 8;
const PUBLISHERS: u64 = 2;
const PER_PUBLISHER: u64 = 500;
const TOTAL: u64 = PUBLISHERS * PER_PUBLISHER;
const CHURN_ROOM: &str = "churn:room";

/// Subscribes answered while publishing was going on, across subscribers (in the churn test,
/// recoveries whose reply `offset` is below `TOTAL`): the publishers wait for one halfway, so
/// that the test always exercises a subscribe racing with publications instead of hoping for
/// one.
#[derive(Default)]
struct LiveRecoveries {
    count: AtomicU64,
    notify: Notify,
}

impl LiveRecoveries {
    fn record(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    async fn wait_for_one(&self) {
        loop {
            let notified = self.notify.notified();
            if self.count.load(Ordering::Acquire) > 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What one churning subscriber saw: every (offset, data) in arrival order, and how often it
/// dropped its socket.
struct Seen {
    publications: Vec<(u64, Value)>,
    drops: u32,
    mid_subscribe_drops: u32,
    /// Recoveries that happened while publishers were still publishing.
    live_recoveries: u32,
}

/// Subscribes, reads a random number of messages, drops the TCP connection without a close
/// handshake (sometimes right after sending `subscribe`, before its reply), reconnects and
/// resubscribes with `since` = the last offset seen, until it has all `TOTAL` publications.
/// Checks on the way that each reply recovers and each message follows the previous one.
async fn churning_subscriber(
    url: String,
    n: usize,
    seed: u64,
    ready: Arc<Barrier>,
    live: Arc<LiveRecoveries>,
) -> Seen {
    let mut rng = Rng(seed);
    let user = format!("sub{n}");
    let mut seen = Seen {
        publications: Vec::new(),
        drops: 0,
        mid_subscribe_drops: 0,
        live_recoveries: 0,
    };
    let mut epoch: Option<String> = None;
    loop {
        let mut c = Client::connect(&url, Some(&token(&user))).await;
        let last = seen.publications.len() as u64;
        let mut cmd = json!({"type": "subscribe", "id": 1, "room": CHURN_ROOM});
        if let Some(e) = &epoch {
            cmd["since"] = json!({"epoch": e, "offset": last});
        }
        c.send(&cmd).await;
        if epoch.is_some() && rng.range(0, 6) == 0 {
            // Gone before the reply: the server finishes a subscribe for a dead socket.
            seen.mid_subscribe_drops += 1;
            drop(c);
            continue;
        }
        let answer = c.answer(&json!(1)).await;
        assert_eq!(answer["type"], "reply", "subscriber {n}: {answer}");
        let r = &answer["result"];
        match &epoch {
            None => {
                assert_eq!(r["offset"], 0, "subscribed before any publication: {r}");
                assert!(r.get("recovered").is_none(), "{r}");
                epoch = Some(r["epoch"].as_str().unwrap().to_string());
                ready.wait().await;
            }
            Some(e) => {
                assert_eq!(&r["epoch"], e, "subscriber {n}: the epoch changed: {r}");
                assert_eq!(
                    r["recovered"], true,
                    "subscriber {n} since {last}: not recovered: {r}"
                );
                let top = r["offset"].as_u64().unwrap();
                if top < TOTAL {
                    seen.live_recoveries += 1;
                    live.record();
                }
                let publications = r["publications"].as_array().unwrap();
                assert_eq!(
                    publications.len() as u64,
                    top - last,
                    "subscriber {n} since {last}: the reply must hold exactly what was missed"
                );
                for p in publications {
                    let offset = p["offset"].as_u64().unwrap();
                    let expected = seen.publications.len() as u64 + 1;
                    assert_eq!(offset, expected, "subscriber {n}: recovered out of order");
                    seen.publications.push((offset, p["data"].clone()));
                }
            }
        }
        if seen.publications.len() as u64 == TOTAL {
            return seen;
        }
        let budget = rng.range(10, 150);
        let mut read = 0;
        while (seen.publications.len() as u64) < TOTAL && read < budget {
            let v = c.recv().await;
            if v["type"] != "message" || v["room"] != CHURN_ROOM {
                continue; // join/leave of the personal room when a reconnect overlaps
            }
            let offset = v["offset"].as_u64().unwrap();
            let expected = seen.publications.len() as u64 + 1;
            assert_eq!(
                offset, expected,
                "subscriber {n}: live message out of order (gap or duplicate)"
            );
            assert_eq!(v["epoch"].as_str(), epoch.as_deref());
            seen.publications.push((offset, v["data"].clone()));
            read += 1;
        }
        if seen.publications.len() as u64 == TOTAL {
            return seen;
        }
        seen.drops += 1;
        drop(c); // abrupt: no close frame, usually a RST since unread data is pending
    }
}

/// Publishes `PER_PUBLISHER` distinct payloads, a few in flight at a time, pausing halfway
/// until some subscriber has recovered while publications were going on; returns the
/// (offset, data) the replies gave.
async fn publisher(url: String, p: u64, live: Arc<LiveRecoveries>) -> Vec<(u64, Value)> {
    let mut c = Client::connect(&url, Some(&token(&format!("pub{p}")))).await;
    let mut out = Vec::new();
    const WINDOW: u64 = 4;
    let mut paused = false;
    for start in (0..PER_PUBLISHER).step_by(WINDOW as usize) {
        if !paused && start >= PER_PUBLISHER / 2 {
            paused = true;
            // Every subscriber reads at most 150 messages before it drops and resubscribes, and
            // at least half of the publications are out: a recovery comes while we wait.
            tokio::time::timeout(T, live.wait_for_one())
                .await
                .unwrap_or_else(|_| {
                    panic!("publisher {p}: no subscriber resubscribed during the publishing")
                });
        }
        let end = (start + WINDOW).min(PER_PUBLISHER);
        for i in start..end {
            let data = json!({"publisher": p, "i": i, "text": format!("p{p}-m{i}")});
            c.send(&json!({"type": "publish", "id": i, "room": CHURN_ROOM, "data": data}))
                .await;
        }
        for i in start..end {
            let answer = c.answer(&json!(i)).await;
            assert_eq!(answer["type"], "reply", "publisher {p}: {answer}");
            let data = json!({"publisher": p, "i": i, "text": format!("p{p}-m{i}")});
            out.push((answer["result"]["offset"].as_u64().unwrap(), data));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_under_churn_gives_every_subscriber_every_publication_once_in_order() {
    let s = TestServer::start(&format!(
        r#"
[auth]
secret = "{SECRET}"
# A publisher sends thousands of publications as fast as it can, and subscribers reconnect
# as fast as they can, all from 127.0.0.1.
[limits]
commands_per_second = 0
new_connections_per_second_per_ip = 0
connections_per_user = 0
[namespaces.churn]
history_size = 10000
publish = "authenticated"
"#
    ));
    let seed = std::env::var("CHURN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2025_u64);
    let started = Instant::now();
    let ready = Arc::new(Barrier::new(SUBSCRIBERS + 1));
    let live_recoveries = Arc::new(LiveRecoveries::default());
    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|n| {
            tokio::spawn(churning_subscriber(
                s.url(),
                n,
                seed.wrapping_add(n as u64 * 7919),
                ready.clone(),
                live_recoveries.clone(),
            ))
        })
        .collect();
    tokio::time::timeout(T, ready.wait())
        .await
        .expect("every subscriber subscribed");
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| tokio::spawn(publisher(s.url(), p, live_recoveries.clone())))
        .collect();

    let mut expected: BTreeMap<u64, Value> = BTreeMap::new();
    for p in publishers {
        for (offset, data) in tokio::time::timeout(BUDGET, p).await.unwrap().unwrap() {
            assert!(
                expected.insert(offset, data).is_none(),
                "offset {offset} given twice"
            );
        }
    }
    assert_eq!(
        expected.keys().copied().collect::<Vec<_>>(),
        (1..=TOTAL).collect::<Vec<_>>(),
        "offsets are gap-free across publishers"
    );
    let expected: Vec<(u64, Value)> = expected.into_iter().collect();
    let mut drops = 0;
    let mut live = 0;
    for (n, sub) in subscribers.into_iter().enumerate() {
        let seen = tokio::time::timeout(BUDGET, sub)
            .await
            .unwrap_or_else(|_| panic!("subscriber {n} (seed {seed}) did not finish"))
            .unwrap();
        assert!(
            seen.publications == expected,
            "subscriber {n} (seed {seed}): wrong sequence"
        );
        assert!(seen.drops > 0, "subscriber {n} never churned");
        drops += seen.drops + seen.mid_subscribe_drops;
        live += seen.live_recoveries;
    }
    eprintln!(
        "churn: {SUBSCRIBERS} subscribers, {TOTAL} publications, {drops} drops, \
         {live} recoveries while publishing, {:?}",
        started.elapsed()
    );
    assert!(
        live > 0,
        "no subscriber recovered while publications were going on"
    );
}

/// The same guarantee without `since`: a subscribe made while publications pour in is
/// followed by exactly `offset + 1, offset + 2, …` (no publication numbered at or below the
/// reply's `offset` may arrive after it). The publisher pauses halfway until some subscribe
/// has been answered in the middle of the publishing, so that one always is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_during_publishing_continues_exactly_after_the_reply_offset() {
    const MESSAGES: u64 = 3000;
    let s = TestServer::start(&format!(
        r#"
[auth]
secret = "{SECRET}"
# A publisher sends thousands of publications as fast as it can, and subscribers reconnect
# as fast as they can, all from 127.0.0.1.
[limits]
commands_per_second = 0
new_connections_per_second_per_ip = 0
connections_per_user = 0
[namespaces.live]
history_size = 10
publish = "authenticated"
join_leave = false
"#
    ));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Subscribes answered while publishing was going on (0 < offset < MESSAGES).
    let during = Arc::new(LiveRecoveries::default());
    let mut subscribers = Vec::new();
    for n in 0..6u64 {
        let url = s.url();
        let done = done.clone();
        let during = during.clone();
        subscribers.push(tokio::spawn(async move {
            let mut rng = Rng(0xfeed + n);
            let mut checked = 0u32;
            while !done.load(Ordering::Acquire) {
                // A fresh connection each time, so nothing of an earlier subscription is in
                // flight.
                let mut c = Client::connect(&url, Some(&token(&format!("s{n}")))).await;
                let r = c.subscribe("live:room").await;
                let offset = r["offset"].as_u64().unwrap();
                if offset > 0 && offset < MESSAGES {
                    during.record();
                }
                let first = offset + 1;
                let end = (first + rng.range(3, 30)).min(MESSAGES + 1);
                for expected in first..end {
                    let m = c.push("message", "live:room").await;
                    assert_eq!(
                        m["offset"], expected,
                        "subscriber {n}: after a reply at {}, got {}",
                        r["offset"], m["offset"]
                    );
                }
                checked += 1;
            }
            checked
        }));
    }
    let mut p = s.connect("pub").await;
    for start in (1..=MESSAGES).step_by(16) {
        if start == 1 + MESSAGES / 2 / 16 * 16 {
            // A subscriber blocked until later publications arrive was answered with an offset
            // above 0 and so already counts: this wait cannot starve the subscribers.
            tokio::time::timeout(T, during.wait_for_one())
                .await
                .expect("a subscribe answered while publishing was paused halfway");
        }
        for i in start..(start + 16).min(MESSAGES + 1) {
            p.send(&json!({"type": "publish", "id": i, "room": "live:room", "data": i}))
                .await;
        }
        for i in start..(start + 16).min(MESSAGES + 1) {
            assert_eq!(p.answer(&json!(i)).await["result"]["offset"], i);
        }
    }
    done.store(true, Ordering::Release);
    let mut subscriptions = 0;
    for sub in subscribers {
        subscriptions += tokio::time::timeout(BUDGET, sub).await.unwrap().unwrap();
    }
    let overlapping = during.count.load(Ordering::Acquire);
    eprintln!(
        "{subscriptions} subscriptions checked, {overlapping} of them answered in the middle of \
         {MESSAGES} publications"
    );
    assert!(
        overlapping > 0,
        "no subscribe was answered while publications were going on"
    );
}

// ---------------------------------------------------------------------------------------------
// (b) recovered: false

#[tokio::test]
async fn recovery_fails_explicitly_when_the_window_is_exceeded_or_the_epoch_is_unknown() {
    let s = TestServer::start(&format!(
        r#"
[auth]
secret = "{SECRET}"
[namespaces.tiny]
history_size = 3
[namespaces.none]
history_size = 0
"#
    ));
    let mut p = s.connect("pub").await;
    let mut a = s.connect("alice").await;
    let r = a.subscribe("tiny:r").await;
    let epoch = r["epoch"].as_str().unwrap().to_string();
    p.subscribe("tiny:r").await;
    for i in 1..=2 {
        p.publish("tiny:r", json!(i)).await;
    }
    assert_eq!(a.push("message", "tiny:r").await["offset"], 1);
    assert_eq!(a.push("message", "tiny:r").await["offset"], 2);
    drop(a);
    for i in 3..=7 {
        p.publish("tiny:r", json!(i)).await;
    }
    let subscribe = |since: Value| json!({"type": "subscribe", "room": "tiny:r", "since": since});

    // 3 and 4 are gone (only 5..=7 kept): recovered false, nothing, the current position.
    let mut a = s.connect("alice").await;
    let r = a.ok(subscribe(json!({"epoch": epoch, "offset": 2}))).await;
    assert_eq!(
        r,
        json!({"room": "tiny:r", "epoch": epoch, "offset": 7, "recovered": false,
               "publications": []})
    );
    // Live messages continue after that position.
    p.publish("tiny:r", json!(8)).await;
    assert_eq!(a.push("message", "tiny:r").await["offset"], 8);

    // Within the window: recovered with exactly what was missed.
    let mut b = s.connect("bob").await;
    let r = b.ok(subscribe(json!({"epoch": epoch, "offset": 5}))).await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["offset"], 8);
    let got: Vec<_> = r["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].clone(), p["data"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!(6), json!(6)),
            (json!(7), json!(7)),
            (json!(8), json!(8))
        ]
    );
    assert_eq!(r["publications"][0]["from"]["user"], "pub");
    // Nothing missed: recovered, empty.
    let mut c = s.connect("carol").await;
    let r = c.ok(subscribe(json!({"epoch": epoch, "offset": 8}))).await;
    assert_eq!(
        (&r["recovered"], &r["publications"]),
        (&json!(true), &json!([]))
    );
    // A position the room never reached: not recoverable.
    let mut d = s.connect("dave").await;
    let r = d.ok(subscribe(json!({"epoch": epoch, "offset": 99}))).await;
    assert_eq!(
        (&r["recovered"], &r["offset"]),
        (&json!(false), &json!(8)),
        "{r}"
    );

    // An epoch the room does not have (e.g. from before a broker restart).
    let mut e = s.connect("erin").await;
    let r = e
        .ok(subscribe(json!({"epoch": "not-this-one", "offset": 2})))
        .await;
    assert_eq!(
        r,
        json!({"room": "tiny:r", "epoch": epoch, "offset": 8, "recovered": false,
               "publications": []})
    );
    // A room this server has never seen: a new stream, so any epoch is unknown.
    let r = e.subscribe_since("tiny:fresh", &epoch, 3).await;
    assert_eq!(
        (&r["recovered"], &r["offset"]),
        (&json!(false), &json!(0)),
        "{r}"
    );
    assert_ne!(r["epoch"], json!(epoch));

    // history_size = 0: nothing missed is recoverable, missing something is not.
    let r = e.subscribe("none:r").await;
    let none_epoch = r["epoch"].clone();
    e.publish("none:r", json!(1)).await;
    let mut f = s.connect("frank").await;
    let r = f.subscribe_since("none:r", &none_epoch, 1).await;
    assert_eq!(r["recovered"], true, "{r}");
    let mut g = s.connect("gina").await;
    let r = g.subscribe_since("none:r", &none_epoch, 0).await;
    assert_eq!(r["recovered"], false, "{r}");
}

// ---------------------------------------------------------------------------------------------
// (c) Slow consumer

const FEED_SUBSCRIBERS: usize = 20;
/// Publications at least (the issue's "2,000 of ~1 KiB").
const FEED_MIN: u64 = 2000;
/// Publications at most: the server's kernel send buffer absorbs a few MiB for a reader that
/// stopped (autotuned up to `tcp_wmem`'s max, 4 MiB by default) before the outbound queue
/// itself fills, so the publisher goes on until the server reports the slow consumer.
const FEED_MAX: u64 = 20_000;
/// Publications after the slow consumer was closed, to show the others are still served.
const FEED_AFTER: u64 = 500;
/// Publications a normal subscriber may be behind the publisher (~32 KiB, half the bound).
const FEED_WINDOW: u64 = 32;
/// RSS growth allowed during the run.
const RSS_BOUND_KIB: u64 = 200 * 1024;

fn feed_data(i: u64) -> Value {
    json!({"i": i, "pad": "x".repeat(1000)})
}

/// How the slow consumer's stream ended.
#[derive(Debug, PartialEq, Eq)]
enum SlowEnd {
    Close(u16),
    /// TCP ended without a close frame.
    Eof,
    /// Bytes that are not a valid frame or message (e.g. a close frame written into the middle
    /// of a partly sent frame).
    Garbage(String),
}

/// Reads the slow consumer's socket to its end: (in-order messages, how it ended).
async fn drain_slow(mut ws: RawWs) -> (u64, SlowEnd) {
    let mut received = 0u64;
    loop {
        let Some((op, payload)) = ws.frame(T).await else {
            return (received, SlowEnd::Eof);
        };
        match op {
            OP_TEXT => match serde_json::from_slice::<Value>(&payload) {
                Ok(v) if v["type"] == "message" && v["offset"] == received + 1 => received += 1,
                _ => {
                    let text = String::from_utf8_lossy(&payload[..payload.len().min(80)]);
                    return (received, SlowEnd::Garbage(format!("text frame {text:?}")));
                }
            },
            OP_CLOSE if payload.len() >= 2 => {
                return (
                    received,
                    SlowEnd::Close(u16::from_be_bytes([payload[0], payload[1]])),
                );
            }
            op => return (received, SlowEnd::Garbage(format!("opcode {op:#x}"))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_with_4500_while_the_others_get_everything() {
    let s = TestServer::start(&format!(
        r#"
[auth]
secret = "{SECRET}"
[websocket]
outbound_queue = "64KiB"
# One publisher sends thousands of publications as fast as the subscribers read them.
[limits]
commands_per_second = 0
[namespaces.feed]
publish = "authenticated"
join_leave = false
"#
    ));
    let started = Instant::now();
    // The slow one is subscribed at connect (rooms claim), reads its welcome and then never
    // reads again, with a small receive buffer.
    let slow_token = mint_token(
        "slow",
        Some(Duration::from_secs(3600)),
        &["feed:x"],
        None,
        None,
    );
    let bearer = format!("Bearer {slow_token}");
    let mut slow = RawWs::connect(s.addr(), "/ws", &[("Authorization", &bearer)], Some(4096)).await;
    let (op, welcome) = slow.frame(T).await.expect("welcome");
    assert_eq!(op, OP_TEXT);
    let welcome: Value = serde_json::from_slice(&welcome).unwrap();
    assert!(welcome["rooms"]["feed:x"].is_object(), "{welcome}");
    let slow_id = welcome["connection"].as_str().unwrap().to_string();

    // Normal subscribers read everything, up to the end marker, and report their progress.
    let notify = Arc::new(Notify::new());
    let mut progress = Vec::new();
    // A JoinSet aborts the readers if the test fails, before the server goes away.
    let mut readers = tokio::task::JoinSet::new();
    for n in 0..FEED_SUBSCRIBERS {
        let mut c = s.connect(&format!("reader{n}")).await;
        c.subscribe("feed:x").await;
        let done = Arc::new(AtomicU64::new(0));
        progress.push(done.clone());
        let notify = notify.clone();
        readers.spawn(async move {
            let mut expected = 1;
            loop {
                let m = c.push("message", "feed:x").await;
                assert_eq!(m["offset"], expected, "reader {n}: out of order");
                if m["data"] == json!({"end": true}) {
                    break;
                }
                assert_eq!(m["data"], feed_data(expected), "reader {n}");
                done.store(expected, Ordering::Release);
                notify.notify_waiters();
                expected += 1;
            }
            // Still connected and served after all that.
            assert!(c.sync().await.iter().all(|v| v["type"] != "message"));
            (n, expected)
        });
    }
    let pid = s.pid();
    let rss_before = rss_kib(pid);

    let mut publisher = s.connect("publisher").await;
    let mut slow_line = None;
    let mut slow = Some(slow);
    let mut drain = None;
    let mut last = 0;
    for i in 1..=FEED_MAX {
        // Keep the normal subscribers within FEED_WINDOW publications of the publisher.
        let target = i.saturating_sub(FEED_WINDOW);
        tokio::time::timeout(T, async {
            loop {
                let notified = notify.notified();
                if progress.iter().all(|p| p.load(Ordering::Acquire) >= target) {
                    break;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("subscribers stuck before publication {i}"));
        let r = publisher.publish("feed:x", feed_data(i)).await;
        assert_eq!(r["offset"], i);
        last = i;
        if slow_line.is_none() {
            slow_line = s
                .process
                .logs
                .try_iter()
                .find(|l| l.contains("slow consumer"))
                .map(|l| (l, i));
            if slow_line.is_some() {
                // The slow consumer starts reading again, right after being cut off.
                drain = slow.take().map(|ws| tokio::spawn(drain_slow(ws)));
            }
        }
        if let Some((_, at)) = &slow_line
            && i >= FEED_MIN.max(at + FEED_AFTER)
        {
            break;
        }
    }
    let (line, closed_at) = slow_line.unwrap_or_else(|| {
        panic!(
            "no slow-consumer close after {FEED_MAX} publications of ~1 KiB to a connection that \
             never reads (server RSS {rss_before} -> {} KiB): the connection was neither closed \
             with 4500 nor served",
            rss_kib(pid)
        )
    });
    assert!(
        line.contains(&slow_id) && line.contains("4500"),
        "the slow-consumer close names the connection and 4500: {line}"
    );
    let end = publisher.publish("feed:x", json!({"end": true})).await;
    assert_eq!(end["offset"], last + 1);
    while let Some(r) = tokio::time::timeout(BUDGET, readers.join_next())
        .await
        .expect("every reader got everything")
    {
        let (n, got) = r.unwrap();
        assert_eq!(got, last + 1, "reader {n}");
    }
    let rss_after = rss_kib(pid);

    // Reading again, the slow consumer finds what the kernel had taken before the close, intact
    // and in order, then the 4500 close frame.
    let (received, end) = tokio::time::timeout(BUDGET, drain.expect("drain started"))
        .await
        .expect("the slow socket ends")
        .unwrap();
    assert!(
        received < closed_at,
        "the slow consumer got {received} messages, the close came at {closed_at}"
    );
    assert_eq!(
        end,
        SlowEnd::Close(4500),
        "after {received} intact messages, the slow consumer's stream ended with {end:?}"
    );
    let grown = rss_after.saturating_sub(rss_before);
    eprintln!(
        "slow consumer: closed after publication {closed_at} of {last}, its socket held \
         {received} then {end:?}; RSS {rss_before} KiB -> {rss_after} KiB; {:?}",
        started.elapsed()
    );
    assert!(
        grown < RSS_BOUND_KIB,
        "server RSS grew by {grown} KiB ({rss_before} -> {rss_after})"
    );
}
