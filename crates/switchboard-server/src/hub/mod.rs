//! The hub: this node's registry of rooms and their local members, of users and their local
//! connections (`users`), and the dispatchers that fan broker events out to them (`dispatch`).
//!
//! The hub is local and says so: it knows the connections of this node only. Delivery across
//! nodes goes through the broker, which hands each publication to the hub of every node
//! subscribed to the room; the hub then fans it out to local members.
//!
//! Fan-out takes a room's member list by cloning an `Arc` under a shard lock held for that
//! clone only, then pushes one shared frame to each member's queue with no lock held: joins
//! and leaves (copy-on-write of the list) never wait for a broadcast, and a broadcast never
//! waits for a slow member (see [`crate::transport::outbound`]).

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex},
};

use switchboard_protocol::{Disconnect, PreparedMessage};

use crate::{
    broker::ClusterCommand,
    conn::{ConnShared, Control},
};

pub(crate) mod dispatch;
pub mod users;

const SHARDS: usize = 64;

type Members = Arc<Vec<Arc<ConnShared>>>;
type Shard = Mutex<HashMap<Arc<str>, Members>>;

/// This node's rooms and their local members. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: Box<[Shard]>,
    hasher: RandomState,
    threshold: usize,
    users: users::Users,
    metrics: Arc<crate::metrics::Metrics>,
    /// The one publication sampled for the publish-to-write latency at a time: the
    /// connection (by address) whose writer observes it, and when it reached the node. Kept
    /// here, not in the connection, so that no connection grows for it; writers look only
    /// when `probe_armed` is set (one relaxed load per write).
    probe: Mutex<Option<(usize, tokio::time::Instant)>>,
    probe_armed: std::sync::atomic::AtomicBool,
}

/// What a join or leave did to the room on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The first local member arrived (the node should subscribe to the room's stream).
    First,
    /// The last local member left (the node may unsubscribe).
    Last,
    /// Neither.
    Other,
    /// Nothing changed (already a member, or not one).
    None,
}

impl Hub {
    /// An empty hub; `threshold` is the compression threshold for messages it prepares.
    pub fn new(threshold: usize) -> Self {
        Hub::with_metrics(threshold, Arc::default())
    }

    /// An empty hub counting into `metrics` (the node's, with its namespaces).
    pub fn with_metrics(threshold: usize, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Hub {
            inner: Arc::new(Inner {
                shards,
                hasher: RandomState::new(),
                threshold,
                users: users::Users::default(),
                metrics,
                probe: Mutex::new(None),
                probe_armed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    fn shard(&self, room: &str) -> &Shard {
        let i = self.inner.hasher.hash_one(room) as usize % SHARDS;
        &self.inner.shards[i]
    }

    /// What this hub's node (or server) counts for `/metrics`.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.inner.metrics
    }

    /// The compression threshold for messages prepared for fan-out.
    pub fn compression_threshold(&self) -> usize {
        self.inner.threshold
    }

    /// Adds a member to a room.
    pub fn join(&self, room: &Arc<str>, conn: &Arc<ConnShared>) -> Change {
        let mut shard = self.shard(room).lock().unwrap_or_else(|e| e.into_inner());
        let members = shard.entry(room.clone()).or_default();
        if members.iter().any(|m| Arc::ptr_eq(m, conn)) {
            return Change::None;
        }
        // Copy-on-write: the list is copied only while a broadcast still holds a snapshot of
        // it; otherwise it grows in place (joins into a big room stay O(1) amortised).
        let list = Arc::make_mut(members);
        if list.is_empty() {
            // Most rooms (personal ones) have one member on a node: no spare slots.
            list.reserve_exact(1);
        }
        list.push(conn.clone());
        if list.len() == 1 {
            Change::First
        } else {
            Change::Other
        }
    }

    /// Removes a member from a room. The member is found by its address: a scan of the
    /// list's pointers that does not touch the members themselves.
    pub fn leave(&self, room: &str, conn: &ConnShared) -> Change {
        let mut shard = self.shard(room).lock().unwrap_or_else(|e| e.into_inner());
        let Some(members) = shard.get_mut(room) else {
            return Change::None;
        };
        let Some(i) = members.iter().position(|m| std::ptr::eq(&**m, conn)) else {
            return Change::None;
        };
        if members.len() == 1 {
            shard.remove(room);
            return Change::Last;
        }
        // Member order does not matter to fan-out.
        Arc::make_mut(members).swap_remove(i);
        Change::Other
    }

    /// The local members of a room (a snapshot).
    pub fn members(&self, room: &str) -> Option<Members> {
        self.shard(room)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(room)
            .cloned()
    }

    /// Makes the last local member of `room` observe the publish-to-write latency of what was
    /// just queued to it, a publication that reached the node at `at`.
    pub(crate) fn probe_last(&self, room: &str, at: tokio::time::Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.inner.probe_armed.load(Relaxed) {
            // One sample at a time; one left by a connection that never wrote it (it ended,
            // or its peer stopped reading) gives way after a second.
            let probe = self.inner.probe.lock().unwrap_or_else(|e| e.into_inner());
            if probe.is_some_and(|(_, old)| at.saturating_duration_since(old).as_secs() < 1) {
                return;
            }
        }
        if let Some(last) = self.members(room).as_deref().and_then(|m| m.last()) {
            let addr = Arc::as_ptr(last) as usize;
            *self.inner.probe.lock().unwrap_or_else(|e| e.into_inner()) = Some((addr, at));
            self.inner.probe_armed.store(true, Relaxed);
        }
    }

    /// The sample `conn`'s writer observes, if it is the one: what a writer calls *before*
    /// taking its queue, so that the sampled publication is among what it then writes.
    pub(crate) fn take_write_probe(&self, conn: &ConnShared) -> Option<tokio::time::Instant> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.inner.probe_armed.load(Relaxed) {
            return None;
        }
        let mut probe = self.inner.probe.lock().unwrap_or_else(|e| e.into_inner());
        match *probe {
            Some((addr, at)) if addr == conn as *const ConnShared as usize => {
                *probe = None;
                self.inner.probe_armed.store(false, Relaxed);
                Some(at)
            }
            _ => None,
        }
    }

    /// Puts back a sample whose publication `conn` could not write yet (its socket was full).
    pub(crate) fn restore_write_probe(&self, conn: &ConnShared, at: tokio::time::Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut probe = self.inner.probe.lock().unwrap_or_else(|e| e.into_inner());
        if probe.is_none() {
            *probe = Some((conn as *const ConnShared as usize, at));
            self.inner.probe_armed.store(true, Relaxed);
        }
    }

    /// Drops the sample of a connection that ends before writing it, so sampling goes on.
    pub(crate) fn forget_write_probe(&self, conn: &ConnShared) {
        let _ = self.take_write_probe(conn);
    }

    /// Queues `message` to every local member of `room` but `exclude`; returns how many got it.
    pub fn broadcast(&self, room: &str, message: &PreparedMessage, exclude: Option<&str>) -> usize {
        self.deliver(room, None, message, exclude)
    }

    /// Delivers an event of `room` (a publication at `position`, or `None` for ephemeral
    /// publications and join/leave) to every local member but `exclude`, holding it back for
    /// members whose subscribe is still reading history.
    pub(crate) fn deliver(
        &self,
        room: &str,
        position: Option<(&Arc<str>, u64)>,
        message: &PreparedMessage,
        exclude: Option<&str>,
    ) -> usize {
        self.deliver_to_room(room, position, message, exclude)
            .unwrap_or(0)
    }

    /// [`Hub::deliver`], telling apart a room with no local member (`None`).
    pub(crate) fn deliver_to_room(
        &self,
        room: &str,
        position: Option<(&Arc<str>, u64)>,
        message: &PreparedMessage,
        exclude: Option<&str>,
    ) -> Option<usize> {
        let members = self.members(room)?;
        let mut sent = 0;
        for m in members.iter() {
            if Some(&*m.id) != exclude && m.deliver(room, position, message).is_ok() {
                sent += 1;
            }
        }
        self.inner.metrics.delivered(sent);
        Some(sent)
    }

    /// Registers an open connection of `user` (`""`: anonymous) in the user index; returns
    /// how many connections the user now has on this node.
    pub fn add_connection(&self, user: &Arc<str>, conn: &Arc<ConnShared>) -> usize {
        self.inner.users.add(user, conn)
    }

    /// Removes a connection registered with [`Hub::add_connection`].
    pub fn remove_connection(&self, user: &str, conn: &ConnShared) {
        self.forget_write_probe(conn);
        self.inner.users.remove(user, conn)
    }

    /// Puts a request in `conn`'s control inbox and wakes its task; refused (given back) when
    /// the inbox is full ([`users::INBOX_LIMIT`]) or the connection is closing.
    pub fn post(&self, conn: &ConnShared, control: Control) -> Result<(), Control> {
        self.inner.users.post(conn, control)
    }

    /// Takes every request waiting in `conn`'s inbox, oldest first (its task calls this).
    pub(crate) fn take_controls(&self, conn: &ConnShared) -> Vec<Control> {
        self.inner.users.take_controls(conn)
    }

    /// Closes `conn` with `disconnect`: a row of the close-code table is a flag on the
    /// connection; a close with a reason of its own waits in its inbox.
    pub fn disconnect(&self, conn: &ConnShared, disconnect: Disconnect) {
        if disconnect == Disconnect::from_code(disconnect.code.0) {
            conn.request_close_code(disconnect.code.0);
        } else if let Err(Control::Close(d)) = self.post(conn, Control::Close(disconnect)) {
            // A full inbox: close all the same, with the table's reason.
            conn.request_close_code(d.code.0);
        }
    }

    /// Carries out a cluster command for this node's connections.
    pub(crate) fn command(&self, command: ClusterCommand) {
        match command {
            ClusterCommand::Disconnect { user, code, reason } => {
                let disconnect = Disconnect::from_code(code).with_reason(reason);
                for conn in self.connections_of(&user) {
                    self.disconnect(&conn, disconnect.clone());
                }
            }
            ClusterCommand::Subscribe { user, room } => {
                self.post_user(&user, || Control::Subscribe(room.clone()))
            }
            ClusterCommand::Unsubscribe { user, room } => {
                self.post_user(&user, || Control::Unsubscribe(room.clone()))
            }
        }
    }

    fn post_user(&self, user: &str, control: impl Fn() -> Control) {
        for conn in self.connections_of(user) {
            if let Err(c) = self.post(&conn, control()) {
                tracing::warn!(conn = %conn.id(), control = ?c, "control inbox full or closed");
            }
        }
    }

    /// The connections of `user` on this node (a snapshot).
    pub fn connections_of(&self, user: &str) -> Vec<Arc<ConnShared>> {
        self.inner.users.connections_of(user)
    }

    /// Open connections on this node (those registered with [`Hub::add_connection`]).
    pub fn connection_count(&self) -> usize {
        self.inner.users.connection_count()
    }

    /// Users with at least one connection on this node.
    pub fn user_count(&self) -> usize {
        self.inner.users.user_count()
    }

    /// Number of rooms with local members.
    pub fn room_count(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Active rooms on this node whose name starts with `prefix`, with their local member counts.
    pub fn rooms(&self, prefix: &str) -> Vec<(Arc<str>, usize)> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(
                shard
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.len())),
            );
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(id.into(), 1 << 20, None))
    }

    #[test]
    fn join_and_leave_report_first_last_and_duplicates() {
        let hub = Hub::new(128);
        let room: Arc<str> = "r".into();
        let (a, b) = (conn("a"), conn("b"));
        assert_eq!(hub.join(&room, &a), Change::First);
        assert_eq!(hub.join(&room, &a), Change::None);
        // A snapshot held by a broadcast is not changed by later joins and leaves.
        let snapshot = hub.members("r").unwrap();
        assert_eq!(hub.join(&room, &b), Change::Other);
        assert_eq!(snapshot.len(), 1);
        assert_eq!(hub.members("r").unwrap().len(), 2);
        assert_eq!(hub.leave("r", &a), Change::Other);
        assert_eq!(hub.leave("r", &a), Change::None);
        assert_eq!(snapshot.len(), 1);
        assert_eq!(hub.leave("r", &b), Change::Last);
        assert!(hub.members("r").is_none());
        assert_eq!(hub.room_count(), 0);
    }
}
