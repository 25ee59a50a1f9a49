//! The members of a room: kept by connection, shown by person.
//!
//! The server announces presence per connection (`conn_id`), and one
//! person can be in a room through several connections at once: two
//! clients open, or, after a failover, the connection on the killed
//! instance until the cluster announces it `gone`. So the list is keyed by
//! connection (a `leave` or `gone` removes the right one) and shown by nick:
//! a nick appears once however many connections it has, and only the
//! first connection of a nick is a join, only the last one a leave.

use std::collections::{btree_map, BTreeMap, HashMap};
use std::iter::Peekable;

use chat_protocol::Member;

/// Sort key: the nick ignoring case (for display), the nick itself (so
/// that the connections of one nick sit together), the connection.
type Key = (String, String, String);

/// The members of a room. Every update is O(log n), which matters in a
/// room with thousands of members joining and leaving.
#[derive(Debug, Default, Clone)]
pub struct Members {
    sorted: BTreeMap<Key, Member>,
    by_conn: HashMap<String, Key>,
    /// Connections per nick: whether a join or a leave changes who is in
    /// the room.
    per_nick: HashMap<String, usize>,
    /// Members the server counted but did not list (a big room's
    /// `members` frame lists only the first ones).
    unlisted: usize,
}

/// One person in the list: a nick and the instances of its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person<'a> {
    pub nick: &'a str,
    /// Sorted, without repeats.
    pub app_ids: Vec<&'a str>,
}

impl Members {
    /// Replace the whole list (a `members` frame); `total` is the server's
    /// count, which can exceed the members listed.
    pub fn set(&mut self, members: Vec<Member>, total: usize) {
        self.sorted.clear();
        self.by_conn.clear();
        self.per_nick.clear();
        for m in members {
            self.add(m);
        }
        self.unlisted = total.saturating_sub(self.sorted.len());
    }

    /// How many people the room has, listed or not.
    pub fn count(&self) -> usize {
        self.per_nick.len() + self.unlisted
    }

    /// Add or update one connection; returns whether its nick is new to
    /// the room (it had no other connection). Names from the network are
    /// made terminal-safe here, once, since the sidebar draws them every
    /// frame.
    pub fn add(&mut self, mut m: Member) -> bool {
        m.nick = crate::wrap::sanitize(&m.nick);
        m.app_id = crate::wrap::sanitize(&m.app_id);
        self.remove(&m.conn_id);
        let key = (m.nick.to_lowercase(), m.nick.clone(), m.conn_id.clone());
        let n = self.per_nick.entry(m.nick.clone()).or_default();
        *n += 1;
        let first = *n == 1;
        self.by_conn.insert(m.conn_id.clone(), key.clone());
        self.sorted.insert(key, m);
        first
    }

    /// Remove a connection. Returns it, and whether it was its nick's last
    /// one in the room.
    pub fn remove(&mut self, conn_id: &str) -> Option<(Member, bool)> {
        let key = self.by_conn.remove(conn_id)?;
        let m = self.sorted.remove(&key)?;
        let last = match self.per_nick.get_mut(&m.nick) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                self.per_nick.remove(&m.nick);
                true
            }
        };
        Some((m, last))
    }

    /// A connection changed nick.
    pub fn rename(&mut self, conn_id: &str, nick: &str) {
        if let Some((mut m, _)) = self.remove(conn_id) {
            m.nick = nick.to_string();
            self.add(m);
        }
    }

    /// Whether `nick` is in the room through any connection.
    pub fn has_nick(&self, nick: &str) -> bool {
        self.per_nick.contains_key(&crate::wrap::sanitize(nick))
    }

    /// The token subject of a member with this nick, if it has one.
    pub fn subject_of(&self, nick: &str) -> Option<String> {
        self.sorted
            .values()
            .find(|m| m.nick == nick && m.sub.is_some())
            .and_then(|m| m.sub.clone())
    }

    /// People listed (nicks, not connections).
    pub fn len(&self) -> usize {
        self.per_nick.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// Connections listed.
    pub fn connections(&self) -> usize {
        self.sorted.len()
    }

    /// People in nick order, each once.
    pub fn iter(&self) -> People<'_> {
        People {
            inner: self.sorted.values().peekable(),
        }
    }
}

/// The people of a [`Members`] list, in nick order.
#[derive(Debug)]
pub struct People<'a> {
    inner: Peekable<btree_map::Values<'a, Key, Member>>,
}

impl<'a> Iterator for People<'a> {
    type Item = Person<'a>;

    fn next(&mut self) -> Option<Person<'a>> {
        let first = self.inner.next()?;
        let mut app_ids = vec![first.app_id.as_str()];
        while let Some(m) = self.inner.next_if(|m| m.nick == first.nick) {
            if !app_ids.contains(&m.app_id.as_str()) {
                app_ids.push(&m.app_id);
            }
        }
        app_ids.sort_unstable();
        Some(Person {
            nick: &first.nick,
            app_ids,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(c: &str, n: &str, app: &str) -> Member {
        Member {
            conn_id: c.into(),
            nick: n.into(),
            app_id: app.into(),
            sub: None,
        }
    }

    fn nicks(ms: &Members) -> Vec<&str> {
        ms.iter().map(|p| p.nick).collect()
    }

    #[test]
    fn members_are_kept_by_connection_and_sorted_by_nick() {
        let mut ms = Members::default();
        ms.set(
            vec![
                m("1", "zed", "a1"),
                m("2", "Ann", "a1"),
                m("3", "bob", "a1"),
            ],
            3,
        );
        assert!(ms.add(m("4", "ann", "a1")), "another nick");
        assert_eq!(nicks(&ms), vec!["Ann", "ann", "bob", "zed"]);
        ms.rename("1", "aaron");
        assert_eq!(nicks(&ms)[0], "aaron");
        assert!(ms.remove("2").is_some());
        assert!(ms.remove("2").is_none());
        assert_eq!(ms.len(), 3);
        // A big room lists only some members; the count is the server's.
        ms.set(vec![m("1", "zed", "a1"), m("2", "Ann", "a1")], 250);
        assert_eq!((ms.len(), ms.count()), (2, 250));
    }

    #[test]
    fn a_nick_with_several_connections_shows_once() {
        let mut ms = Members::default();
        assert!(ms.add(m("app1-1", "alice", "app1")));
        assert!(ms.add(m("app1-2", "bob", "app1")));
        assert!(!ms.add(m("app2-9", "alice", "app2")), "not a new person");
        assert!(!ms.add(m("app3-4", "alice", "app2")));
        assert_eq!((ms.len(), ms.connections(), ms.count()), (2, 4, 2));
        let people: Vec<_> = ms.iter().collect();
        assert_eq!(
            people[0],
            Person {
                nick: "alice",
                app_ids: vec!["app1", "app2"]
            }
        );
        assert_eq!(ms.remove("app1-1").map(|(_, last)| last), Some(false));
        assert_eq!(ms.remove("app3-4").map(|(_, last)| last), Some(false));
        assert!(ms.has_nick("alice"));
        assert_eq!(ms.remove("app2-9").map(|(_, last)| last), Some(true));
        assert!(!ms.has_nick("alice"));
        assert_eq!(nicks(&ms), vec!["bob"]);
        // A rename moves one connection: the other keeps the old nick.
        ms.add(m("c1", "carol", "app1"));
        ms.add(m("c2", "carol", "app2"));
        ms.rename("c1", "caroline");
        assert_eq!(nicks(&ms), vec!["bob", "carol", "caroline"]);
    }
}
