//! Create/delete expectations, as kube-controller-manager keeps them: after a controller
//! creates or deletes children, its cache lags behind for a moment; until the cache has
//! seen those writes the controller must not count children again, or it would create
//! or delete twice.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Expectations older than this are given up on (a watch event was lost or a write
/// failed silently); the controller then trusts its cache again.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// What the cache says of one expected child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Absent,
    Present,
    Terminating,
}

#[derive(Default)]
struct Entry {
    creates: HashSet<String>,
    deletes: HashSet<String>,
    since: Option<Instant>,
}

/// Per-owner sets of child names whose creation or deletion the cache has yet to show.
#[derive(Default)]
pub struct Expectations {
    owners: Mutex<HashMap<String, Entry>>,
}

impl Expectations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers that `owner` created these children.
    pub fn created(&self, owner: &str, names: impl IntoIterator<Item = String>) {
        let mut owners = self.owners.lock().unwrap();
        let e = owners.entry(owner.to_string()).or_default();
        e.creates.extend(names);
        e.since.get_or_insert_with(Instant::now);
    }

    /// Remembers that `owner` deleted these children.
    pub fn deleted(&self, owner: &str, names: impl IntoIterator<Item = String>) {
        let mut owners = self.owners.lock().unwrap();
        let e = owners.entry(owner.to_string()).or_default();
        e.deletes.extend(names);
        e.since.get_or_insert_with(Instant::now);
    }

    /// True when the cache (asked through `seen`) reflects every create and delete of
    /// `owner`'s; satisfied expectations are forgotten.
    pub fn satisfied(&self, owner: &str, seen: impl Fn(&str) -> Seen) -> bool {
        let mut owners = self.owners.lock().unwrap();
        let Some(e) = owners.get_mut(owner) else { return true };
        e.creates.retain(|n| seen(n) == Seen::Absent);
        e.deletes.retain(|n| seen(n) == Seen::Present);
        let stale = e.since.is_some_and(|t| t.elapsed() > GIVE_UP_AFTER);
        if stale || (e.creates.is_empty() && e.deletes.is_empty()) {
            owners.remove(owner);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_creates_and_deletes_to_show() {
        let x = Expectations::new();
        assert!(x.satisfied("rs", |_| Seen::Absent));
        x.created("rs", ["a".to_string()]);
        x.deleted("rs", ["b".to_string()]);
        assert!(!x.satisfied("rs", |n| if n == "a" { Seen::Absent } else { Seen::Present }));
        assert!(!x.satisfied("rs", |_| Seen::Present));
        assert!(x.satisfied("rs", |n| if n == "a" { Seen::Present } else { Seen::Terminating }));
        assert!(x.satisfied("rs", |_| Seen::Absent));
    }
}
