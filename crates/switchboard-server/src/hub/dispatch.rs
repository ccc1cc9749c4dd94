//! Delivery from the broker to local connections: the node's [`NodeSink`] is one ordered
//! channel per runtime worker, chosen by a hash of the room ([`Dispatchers`]). Each room stays
//! on one dispatcher task, so its events keep their order, while fan-out of different rooms
//! runs on every core. A dispatcher encodes each publication once as a `message` push, frames
//! it once (a [`PreparedMessage`]) and hands the same bytes to every local member of the room.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use bytes::Bytes;
use switchboard_protocol::{PreparedMessage, frame::OpCode, wire};
use tokio::{sync::mpsc, time::Instant};

use super::Hub;
use crate::broker::{
    Broker, BrokerError, HistoryQuery, NodeEvent, NodeSink, PresenceEntry, Publication,
    StreamPosition,
};

/// What a dispatcher task receives: a broker event, or the node's word that it subscribed to
/// a room afresh (what the dispatcher knew of the room's stream no longer holds).
#[derive(Debug)]
pub(crate) enum Dispatch {
    /// An event, and when it reached the node (publications only: the start of their
    /// publish-to-write latency, which the metrics sample).
    Event(NodeEvent, Option<Instant>),
    Reset(Arc<str>),
}

/// At most one publish-to-write sample per dispatcher per this interval: sampling keeps the
/// histogram off the hot path and still shows any latency that lasts.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(1);

/// The node's [`NodeSink`]: one channel per dispatcher task, chosen by a hash of the room.
/// Events about no one room go to the first dispatcher (commands) or to all (a loss of every
/// room).
pub(crate) struct Dispatchers {
    senders: Box<[mpsc::UnboundedSender<Dispatch>]>,
    hasher: RandomState,
}

impl Dispatchers {
    /// `n` channels (at least one), and their receiving ends for the dispatcher tasks.
    pub(crate) fn new(n: usize) -> (Dispatchers, Vec<mpsc::UnboundedReceiver<Dispatch>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let sink = Dispatchers {
            senders: senders.into(),
            hasher: RandomState::new(),
        };
        (sink, receivers)
    }

    fn index(&self, room: &str) -> usize {
        match self.senders.len() {
            1 => 0,
            n => self.hasher.hash_one(room) as usize % n,
        }
    }

    /// The node subscribes to `room` afresh: its dispatcher forgets the room's last offset,
    /// so that publications made while the node was not subscribed are no gap.
    pub(crate) fn reset(&self, room: &Arc<str>) {
        let _ = self.senders[self.index(room)].send(Dispatch::Reset(room.clone()));
    }
}

impl NodeSink for Dispatchers {
    /// A dropped receiver (the node shutting down) loses the event.
    fn deliver(&self, event: NodeEvent) {
        match event.room() {
            Some(room) => {
                let i = self.index(room);
                let at = matches!(event, NodeEvent::Publication(_)).then(Instant::now);
                let _ = self.senders[i].send(Dispatch::Event(event, at));
            }
            None if matches!(event, NodeEvent::Lost { room: None }) => {
                for sender in self.senders.iter() {
                    let _ = sender.send(Dispatch::Event(NodeEvent::Lost { room: None }, None));
                }
            }
            None => {
                let _ = self.senders[0].send(Dispatch::Event(event, None));
            }
        }
    }
}

/// One dispatcher task: encodes each broker event once and fans it out to the room's local
/// members, in the order the broker delivered it.
///
/// It also keeps, for each of its rooms with local members, the last offset it delivered. A
/// publication past the next offset (a remote broker lost some on the way) or the broker's
/// [`NodeEvent::Lost`] makes it catch the room's members up from history before going on;
/// when history cannot cover the gap, every member gets a `subscribed` push with
/// `recovered: false` and the position live pushes continue from. Never a silent skip. A
/// publication at or below the last offset (delivered twice) is dropped.
pub(crate) struct Dispatcher {
    pub(crate) hub: Hub,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) threshold: usize,
    /// Namespaces configured without join and leave pushes (`default` for rooms without
    /// `:`): a broker's own member events there (a Redis broker's `leave` for an expired
    /// presence entry) are dropped, as the node does not publish any.
    pub(crate) quiet: Arc<HashSet<String>>,
    /// Namespaces' `join_leave_max_members` (those above 0): a join or leave is pushed only
    /// while the room has at most that many local members when it is delivered, as well as
    /// when it happened, so that joins published just before a crowd arrived (the
    /// dispatcher runs behind the subscriptions) are not pushed to all of it.
    pub(crate) max_members: Arc<HashMap<String, usize>>,
    last: HashMap<Arc<str>, StreamPosition>,
    buf: Vec<u8>,
    /// When the next publication is sampled for the publish-to-write latency.
    next_probe: Instant,
}

impl Dispatcher {
    /// A dispatcher delivering to `hub`, reading history from `broker` to fill gaps.
    pub(crate) fn new(hub: Hub, broker: Arc<dyn Broker>, threshold: usize) -> Dispatcher {
        Dispatcher {
            hub,
            broker,
            threshold,
            quiet: Arc::default(),
            max_members: Arc::default(),
            last: HashMap::new(),
            buf: Vec::with_capacity(1024),
            next_probe: Instant::now(),
        }
    }

    /// Runs until the node's sink is dropped.
    pub(crate) async fn run(mut self, mut events: mpsc::UnboundedReceiver<Dispatch>) {
        while let Some(dispatch) = events.recv().await {
            match dispatch {
                Dispatch::Reset(room) => {
                    self.last.remove(&room);
                }
                Dispatch::Event(event, at) => self.event(event, at).await,
            }
            if self.buf.capacity() > 64 * 1024 {
                self.buf = Vec::with_capacity(1024);
            }
        }
    }

    async fn event(&mut self, event: NodeEvent, at: Option<Instant>) {
        match event {
            NodeEvent::Publication(p) => {
                self.publication(&p).await;
                // The room's last member writes last: its write ends the fan-out.
                if let Some(at) = at
                    && at >= self.next_probe
                {
                    self.next_probe = at + PROBE_EVERY;
                    self.hub.probe_last(&p.room, at);
                }
            }
            NodeEvent::Join { room, member } => {
                self.member(wire::MemberPushKind::Join, &room, &member)
            }
            NodeEvent::Leave { room, member } => {
                self.member(wire::MemberPushKind::Leave, &room, &member)
            }
            NodeEvent::Lost { room: Some(room) } => self.catch_up(&room, None).await,
            NodeEvent::Lost { room: None } => {
                let rooms: Vec<Arc<str>> = self.last.keys().cloned().collect();
                for room in rooms {
                    self.catch_up(&room, None).await;
                }
            }
            NodeEvent::Command(command) => self.hub.command(command),
            NodeEvent::Broadcast { room, message } => {
                let opcode = if message.binary {
                    OpCode::Binary
                } else {
                    OpCode::Text
                };
                let prepared = PreparedMessage::new(opcode, message.payload, self.threshold);
                self.hub
                    .deliver(&room, None, &prepared, message.exclude.as_deref());
            }
        }
    }

    async fn publication(&mut self, p: &Arc<Publication>) {
        if !p.ephemeral {
            if let Some(last) = self.last.get(&p.room) {
                if last.epoch != p.epoch {
                    // The stream forked at a Redis takeover (what came before may go on in
                    // the new epoch) or was lost: history tells which.
                    tracing::info!(room = %p.room, from = %last.epoch, to = %p.epoch, "a room's stream has a new epoch; catching up from history");
                    self.catch_up(&p.room, p.position()).await;
                } else if p.offset <= last.offset {
                    return;
                } else if p.offset > last.offset + 1 {
                    tracing::warn!(room = %p.room, after = last.offset, got = p.offset, "gap in a room's stream; catching up from history");
                    self.catch_up(&p.room, p.position()).await;
                }
            }
            self.last.insert(
                p.room.clone(),
                StreamPosition::new(p.epoch.clone(), p.offset),
            );
        }
        if !self.send_publication(p) {
            // In flight after the node unsubscribed: nobody here, nothing to track.
            self.last.remove(&p.room);
        }
    }

    /// Delivers what `room` missed after the last offset delivered: up to `before`
    /// (exclusive; the publication that showed the gap), or up to the stream's top.
    async fn catch_up(&mut self, room: &Arc<str>, before: Option<StreamPosition>) {
        let Some(last) = self.last.get(room).cloned() else {
            return;
        };
        let continues_at = |top: &StreamPosition| match &before {
            Some(b) => StreamPosition::new(b.epoch.clone(), b.offset.saturating_sub(1)),
            None => top.clone(),
        };
        let lost = match self
            .broker
            .history(room, HistoryQuery::recovery(last.clone()))
            .await
        {
            Ok(h) if h.recoverable => {
                if h.position.epoch != last.epoch {
                    // A forked stream that goes on from `last` (redis/publish.lua): told
                    // first, so that clients take the new epoch as the same stream.
                    self.buf.clear();
                    let at = StreamPosition::new(h.position.epoch.clone(), last.offset);
                    encode_continued(&mut self.buf, room, &at);
                    let message = self.prepared().websocket_only();
                    self.hub.deliver(room, None, &message, None);
                    self.last.insert(room.clone(), at);
                }
                for p in &h.publications {
                    if before.as_ref().is_some_and(|b| p.offset >= b.offset) {
                        break;
                    }
                    let _ = self.send_publication(p);
                    self.last
                        .insert(room.clone(), StreamPosition::new(p.epoch.clone(), p.offset));
                }
                if before.is_none() {
                    self.last.insert(room.clone(), h.position);
                }
                return;
            }
            Ok(h) => continues_at(&h.position),
            Err(BrokerError::EpochMismatch { current, .. }) => continues_at(&current),
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "cannot read history to fill a gap");
                match before {
                    Some(_) => continues_at(&last),
                    // Nothing known: the next publication shows the gap again.
                    None => return,
                }
            }
        };
        tracing::warn!(room = %room, epoch = %lost.epoch, offset = lost.offset, "publications lost for good; members told recovered: false");
        self.buf.clear();
        encode_lost(&mut self.buf, room, &lost);
        // SSE streams get it as `event: reset` (protocol 8).
        let message = self.prepared().with_sse_event("reset");
        self.hub.deliver(room, None, &message, None);
        self.last.insert(room.clone(), lost);
    }

    /// The push encoded in `buf`, framed once for every member.
    fn prepared(&self) -> PreparedMessage {
        PreparedMessage::new(
            OpCode::Text,
            Bytes::copy_from_slice(&self.buf),
            self.threshold,
        )
    }

    /// Whether the room has local members (then they got it).
    fn send_publication(&mut self, p: &Publication) -> bool {
        let buf = &mut self.buf;
        buf.clear();
        if p.ephemeral {
            wire::encode_ephemeral_push_raw(buf, &p.room, &p.data, p.from.as_deref());
        } else {
            wire::encode_message_push_raw(
                buf,
                &p.room,
                &p.epoch,
                p.offset,
                &p.data,
                p.from.as_deref(),
            );
        }
        let message = self.prepared();
        let position = p.position().map(|_| (&p.epoch, p.offset));
        self.hub
            .deliver_to_room(&p.room, position, &message, p.exclude.as_deref())
            .is_some()
    }

    fn member(&mut self, kind: wire::MemberPushKind, room: &Arc<str>, member: &PresenceEntry) {
        if !self.quiet.is_empty() || !self.max_members.is_empty() {
            let ns = match wire::namespace(room) {
                "" => "default",
                ns => ns,
            };
            if self.quiet.contains(ns) {
                return;
            }
            if let Some(&max) = self.max_members.get(ns)
                && self.hub.members(room).is_some_and(|m| m.len() > max)
            {
                return;
            }
        }
        let buf = &mut self.buf;
        buf.clear();
        wire::encode_member_push_raw(
            buf,
            kind,
            room,
            &member.user,
            &member.connection,
            member.info.as_deref(),
        );
        // SSE streams get it as `event: join` / `event: leave` (protocol 8).
        let message = self.prepared().with_sse_event(kind.as_str());
        self.hub
            .deliver(room, None, &message, Some(&*member.connection));
    }
}

/// `{"type":"subscribed","room":…,"epoch":…,"offset":…,"recovered":false}`: the room's
/// stream continues at `offset + 1`, and what came before it could not be delivered.
fn encode_lost(buf: &mut Vec<u8>, room: &str, at: &StreamPosition) {
    encode_subscribed(buf, room, at, false);
}

/// `{"type":"subscribed",…,"recovered":true}`: the room's stream goes on in a new epoch
/// from `offset`, with nothing missed.
fn encode_continued(buf: &mut Vec<u8>, room: &str, at: &StreamPosition) {
    encode_subscribed(buf, room, at, true);
}

fn encode_subscribed(buf: &mut Vec<u8>, room: &str, at: &StreamPosition, recovered: bool) {
    let push = serde_json::json!({
        "type": "subscribed",
        "room": room,
        "epoch": &*at.epoch,
        "offset": at.offset,
        "recovered": recovered,
    });
    let _ = serde_json::to_writer(buf, &push);
}

#[cfg(test)]
mod tests {

    use switchboard_protocol::{
        Role,
        codec::{Decoder, DecoderConfig, Message},
    };

    use super::*;
    use crate::{
        broker::{MemoryBroker, PresenceEntry, PublishOptions},
        conn::ConnShared,
    };

    /// A sink that loses the publications at some offsets, as a remote broker's dropped
    /// connection would.
    struct Lossy {
        inner: Arc<Dispatchers>,
        lose: Vec<u64>,
    }

    impl NodeSink for Lossy {
        fn deliver(&self, event: NodeEvent) {
            if let NodeEvent::Publication(p) = &event
                && self.lose.contains(&p.offset)
            {
                return;
            }
            self.inner.deliver(event);
        }
    }

    /// A member of `room` on a hub whose dispatcher reads a memory broker that loses `lose`.
    async fn lossy_room(
        room: &Arc<str>,
        lose: Vec<u64>,
    ) -> (Arc<dyn Broker>, Arc<ConnShared>, Arc<Dispatchers>) {
        let (sink, mut receivers) = Dispatchers::new(1);
        let sink = Arc::new(sink);
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(Arc::new(Lossy {
            inner: sink.clone(),
            lose,
        })));
        let hub = Hub::new(usize::MAX);
        let conn = Arc::new(ConnShared::new("c_member".into(), 1 << 20, None));
        hub.join(room, &conn);
        broker.subscribe(room).await.unwrap();
        let dispatcher = Dispatcher::new(hub, broker.clone(), usize::MAX);
        tokio::spawn(dispatcher.run(receivers.pop().unwrap()));
        (broker, conn, sink)
    }

    async fn publish(broker: &Arc<dyn Broker>, room: &str, n: u64, history_size: usize) {
        let opts = PublishOptions {
            history_size,
            ..PublishOptions::default()
        };
        let data = Bytes::from(format!("{{\"n\":{n}}}"));
        broker.publish(room, data, None, opts).await.unwrap();
    }

    /// The next `n` JSON messages queued for `conn`, awaiting them.
    async fn received(conn: &ConnShared, n: usize) -> Vec<serde_json::Value> {
        let mut decoder = Decoder::new(Role::Client, DecoderConfig::default(), None);
        let mut wire = bytes::BytesMut::new();
        let mut out = Vec::new();
        while out.len() < n {
            let ready = std::future::poll_fn(|cx| conn.outbound.poll_ready(cx));
            tokio::time::timeout(std::time::Duration::from_secs(10), ready)
                .await
                .expect("the dispatcher delivers");
            wire.extend_from_slice(&conn.outbound.take_written().unwrap());
            while let Some(Message::Text(t)) = decoder.decode(&mut wire).unwrap() {
                out.push(serde_json::from_str(t.as_str()).unwrap());
            }
        }
        out
    }

    #[tokio::test]
    async fn a_gap_is_filled_from_history_in_order() {
        let room: Arc<str> = "chat:gap".into();
        let (broker, conn, sink) = lossy_room(&room, vec![2, 3]).await;
        for n in 1..=4 {
            publish(&broker, &room, n, 100).await;
        }
        let got = received(&conn, 4).await;
        let offsets: Vec<_> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, [1, 2, 3, 4], "{got:?}");
        assert!(got.iter().all(|m| m["type"] == "message"));
        // A publication delivered twice (again, after the fact) is delivered once.
        let h = broker
            .history(&room, HistoryQuery::default())
            .await
            .unwrap();
        sink.deliver(NodeEvent::Publication(h.publications[3].clone()));
        publish(&broker, &room, 5, 100).await;
        let got = received(&conn, 1).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["offset"], 5);
    }

    #[tokio::test]
    async fn a_gap_history_cannot_cover_is_announced_never_skipped() {
        let room: Arc<str> = "chat:lost".into();
        let (broker, conn, _sink) = lossy_room(&room, vec![2, 3]).await;
        for n in 1..=4 {
            publish(&broker, &room, n, 0).await;
        }
        let got = received(&conn, 3).await;
        assert_eq!(got[0]["offset"], 1);
        assert_eq!(got[1]["type"], "subscribed", "{got:?}");
        assert_eq!(got[1]["recovered"], false);
        assert_eq!(got[1]["offset"], 3, "live pushes continue at offset + 1");
        assert_eq!(got[1]["epoch"], got[0]["epoch"]);
        assert_eq!(got[2]["offset"], 4);
    }

    #[tokio::test]
    async fn the_brokers_loss_signal_catches_a_room_up() {
        let room: Arc<str> = "chat:signal".into();
        let (broker, conn, sink) = lossy_room(&room, vec![2, 3]).await;
        for n in 1..=3 {
            publish(&broker, &room, n, 100).await;
        }
        assert_eq!(received(&conn, 1).await[0]["offset"], 1);
        // No later publication shows the gap: the broker says so itself, through the sink.
        sink.deliver(NodeEvent::Lost { room: None });
        let got = received(&conn, 2).await;
        let offsets: Vec<_> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, [2, 3]);
    }

    fn join(room: &str, connection: usize) -> NodeEvent {
        NodeEvent::Join {
            room: room.into(),
            member: PresenceEntry {
                connection: connection.to_string().into(),
                user: "".into(),
                info: None,
            },
        }
    }

    #[test]
    fn dispatchers_keep_each_room_on_one_channel_in_order_and_spread_rooms() {
        let (sink, mut receivers) = Dispatchers::new(8);
        for i in 0..10 {
            for r in 0..64 {
                sink.deliver(join(&format!("room:{r}"), i));
            }
        }
        let mut channel_of = std::collections::HashMap::new();
        for (c, rx) in receivers.iter_mut().enumerate() {
            let mut next = std::collections::HashMap::new();
            while let Ok(Dispatch::Event(NodeEvent::Join { room, member }, _)) = rx.try_recv() {
                assert_eq!(*channel_of.entry(room.clone()).or_insert(c), c, "{room}");
                let expected = next.entry(room.clone()).or_insert(0);
                assert_eq!(
                    &*member.connection,
                    expected.to_string(),
                    "{room} out of order"
                );
                *expected += 1;
            }
            assert!(next.values().all(|n| *n == 10), "every event arrives");
        }
        assert_eq!(channel_of.len(), 64);
        let used: std::collections::HashSet<_> = channel_of.values().collect();
        assert!(used.len() > 1, "64 rooms all on one of 8 dispatchers");
    }
}
