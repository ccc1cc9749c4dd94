//! The user index: which local connections each authenticated user has, so that "every
//! connection of this user" (the server API's disconnect, subscribe and unsubscribe, per-user
//! limits) is one look-up. Sharded; a lock is held only to copy or change one user's list,
//! never across an await. Its size is bounded by the node's connections (an entry exists only
//! while its user has one), and anonymous connections are not in it.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::conn::{ConnShared, Control};

/// Requests waiting in one connection's inbox at most: a flood of server-API commands to one
/// connection costs a bounded amount of memory (the extra ones are refused).
pub const INBOX_LIMIT: usize = 256;

const SHARDS: usize = 64;

/// One user's connections: most users have one, which then costs no list. Two words, so
/// that an entry of the index is four (a `Vec` inline would make every entry six).
#[derive(Debug)]
enum Conns {
    One(Arc<ConnShared>),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Arc<ConnShared>>>),
}

/// One shard of the index.
type Shard = Mutex<HashMap<Arc<str>, Conns>>;

/// One shard of the control inboxes, keyed by connection address.
type InboxShard = Mutex<HashMap<usize, Vec<Control>>>;

/// The index, how many connections the node has (anonymous ones included), and the control
/// inboxes of connections that have requests waiting.
#[derive(Debug)]
pub(crate) struct Users {
    shards: Box<[Shard]>,
    hasher: RandomState,
    connections: AtomicUsize,
    /// Keyed by the connection's address (a connection is in the table only while it has
    /// requests waiting, and is removed with it when it closes).
    inboxes: Box<[InboxShard]>,
}

impl Default for Users {
    fn default() -> Self {
        Users {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            connections: AtomicUsize::new(0),
            inboxes: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

fn address(conn: &ConnShared) -> usize {
    std::ptr::from_ref(conn) as usize
}

impl Users {
    fn shard(&self, user: &str) -> MutexGuard<'_, HashMap<Arc<str>, Conns>> {
        let i = self.hasher.hash_one(user) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds an open connection of `user` (`""`: anonymous, only counted). Returns how many
    /// connections the user now has on this node.
    pub(crate) fn add(&self, user: &Arc<str>, conn: &Arc<ConnShared>) -> usize {
        self.connections.fetch_add(1, Ordering::Relaxed);
        if user.is_empty() {
            return 0;
        }
        let mut shard = self.shard(user);
        match shard.get_mut(&**user) {
            None => {
                shard.insert(user.clone(), Conns::One(conn.clone()));
                1
            }
            Some(entry) => match entry {
                Conns::One(first) => {
                    *entry = Conns::Many(Box::new(vec![first.clone(), conn.clone()]));
                    2
                }
                Conns::Many(list) => {
                    list.push(conn.clone());
                    list.len()
                }
            },
        }
    }

    fn inbox(&self, conn: &ConnShared) -> MutexGuard<'_, HashMap<usize, Vec<Control>>> {
        let i = self.hasher.hash_one(address(conn)) as usize % SHARDS;
        self.inboxes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a request in `conn`'s inbox and wakes its task. Refused (given back) when the
    /// inbox is full or the connection is closing.
    pub(crate) fn post(&self, conn: &ConnShared, control: Control) -> Result<(), Control> {
        if conn.is_closed() {
            return Err(control);
        }
        let mut inboxes = self.inbox(conn);
        let inbox = inboxes.entry(address(conn)).or_default();
        if inbox.len() >= INBOX_LIMIT {
            return Err(control);
        }
        inbox.push(control);
        drop(inboxes);
        conn.signal_control();
        Ok(())
    }

    /// Takes every request waiting for `conn`, oldest first.
    pub(crate) fn take_controls(&self, conn: &ConnShared) -> Vec<Control> {
        if !conn.take_control_signal() {
            return Vec::new();
        }
        self.inbox(conn).remove(&address(conn)).unwrap_or_default()
    }

    /// Removes a connection added with [`Users::add`] (and whatever its inbox still holds).
    pub(crate) fn remove(&self, user: &str, conn: &ConnShared) {
        self.inbox(conn).remove(&address(conn));
        self.connections.fetch_sub(1, Ordering::Relaxed);
        if user.is_empty() {
            return;
        }
        let mut shard = self.shard(user);
        let empty = match shard.get_mut(user) {
            Some(Conns::One(c)) => std::ptr::eq(&**c, conn),
            Some(Conns::Many(list)) => {
                list.retain(|c| !std::ptr::eq(&**c, conn));
                if list.len() == 1 {
                    let last = list.pop().expect("one left");
                    shard.insert(user.into(), Conns::One(last));
                }
                false
            }
            None => false,
        };
        if empty {
            shard.remove(user);
        }
    }

    /// The user's connections on this node (a copy: act on them with no lock held).
    pub(crate) fn connections_of(&self, user: &str) -> Vec<Arc<ConnShared>> {
        match self.shard(user).get(user) {
            Some(Conns::One(c)) => vec![c.clone()],
            Some(Conns::Many(list)) => list.to_vec(),
            None => Vec::new(),
        }
    }

    /// Open connections on this node.
    pub(crate) fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Users with at least one connection on this node.
    pub(crate) fn user_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str) -> Arc<ConnShared> {
        Arc::new(ConnShared::new(id.into(), 1024, None))
    }

    #[test]
    fn a_user_keeps_every_connection_until_the_last_leaves() {
        let users = Users::default();
        let alice: Arc<str> = "alice".into();
        let (a, b, c) = (conn("a"), conn("b"), conn("c"));
        assert_eq!(users.add(&alice, &a), 1);
        assert_eq!(users.add(&alice, &b), 2);
        assert_eq!(users.add(&"".into(), &c), 0);
        assert_eq!(users.connection_count(), 3);
        assert_eq!(users.user_count(), 1);
        assert_eq!(users.connections_of("alice").len(), 2);
        users.remove("alice", &a);
        let left = users.connections_of("alice");
        assert_eq!(left.len(), 1);
        assert!(Arc::ptr_eq(&left[0], &b));
        users.remove("alice", &a); // twice: nothing changes but the count
        users.remove("alice", &b);
        users.remove("", &c);
        assert!(users.connections_of("alice").is_empty());
        assert_eq!(users.user_count(), 0);
    }
}
