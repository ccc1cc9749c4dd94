//! Delivery from the broker to local connections: the node's [`NodeSink`] is one ordered
//! channel per runtime worker, chosen by a hash of the room ([`Dispatchers`]). Each room stays
//! on one dispatcher task, so its events keep their order, while fan-out of different rooms
//! runs on every core. A dispatcher encodes each publication once as a `message` push, frames
//! it once (a [`PreparedMessage`]) and hands the same bytes to every local member of the room.

use std::hash::{BuildHasher, RandomState};

use bytes::Bytes;
use switchboard_protocol::{PreparedMessage, frame::OpCode, wire};
use tokio::sync::mpsc;

use super::Hub;
use crate::broker::{NodeEvent, NodeSink};

/// The node's [`NodeSink`]: one channel per dispatcher task, chosen by a hash of the room.
pub(crate) struct Dispatchers {
    senders: Box<[mpsc::UnboundedSender<NodeEvent>]>,
    hasher: RandomState,
}

impl Dispatchers {
    /// `n` channels (at least one), and their receiving ends for the dispatcher tasks.
    pub(crate) fn new(n: usize) -> (Dispatchers, Vec<mpsc::UnboundedReceiver<NodeEvent>>) {
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
}

impl NodeSink for Dispatchers {
    /// A dropped receiver (the node shutting down) loses the event.
    fn deliver(&self, event: NodeEvent) {
        let _ = self.senders[self.index(event.room())].send(event);
    }
}

/// Encodes each broker event once and fans it out to the room's local members, in the order
/// the broker delivered it.
pub(crate) async fn dispatch(
    hub: Hub,
    mut events: mpsc::UnboundedReceiver<NodeEvent>,
    threshold: usize,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    while let Some(event) = events.recv().await {
        buf.clear();
        let (room, position, exclude) = match &event {
            NodeEvent::Publication(p) => {
                if p.ephemeral {
                    wire::encode_ephemeral_push_raw(&mut buf, &p.room, &p.data, p.from.as_deref());
                } else {
                    wire::encode_message_push_raw(
                        &mut buf,
                        &p.room,
                        &p.epoch,
                        p.offset,
                        &p.data,
                        p.from.as_deref(),
                    );
                }
                (
                    &p.room,
                    p.position().map(|_| (&p.epoch, p.offset)),
                    p.exclude.as_deref(),
                )
            }
            NodeEvent::Join { room, member } | NodeEvent::Leave { room, member } => {
                let info = member.info.as_deref();
                let kind = match event {
                    NodeEvent::Join { .. } => wire::MemberPushKind::Join,
                    _ => wire::MemberPushKind::Leave,
                };
                wire::encode_member_push_raw(
                    &mut buf,
                    kind,
                    room,
                    &member.user,
                    &member.connection,
                    info,
                );
                (room, None, Some(&*member.connection))
            }
        };
        let message = PreparedMessage::new(OpCode::Text, Bytes::copy_from_slice(&buf), threshold);
        hub.deliver(room, position, &message, exclude);
        if buf.capacity() > 64 * 1024 {
            buf = Vec::with_capacity(1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::PresenceEntry;

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
            while let Ok(NodeEvent::Join { room, member }) = rx.try_recv() {
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
