//! The scheduling queue: pods waiting for a node, in priority order; pods that failed go
//! to backoff (1 s doubling to 10 s) and pods that fit nowhere wait as unschedulable
//! until the cluster changes (a node appears or changes, a pod goes away) or a minute
//! passes.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::cache::PodKey;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are tried again at least this often.
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Where {
    Active,
    Backoff(Instant),
    Unschedulable(Instant),
    /// Popped and being scheduled or bound.
    InFlight,
}

struct Entry {
    pod: Arc<Pod>,
    attempts: u32,
    last_attempt: Option<Instant>,
    place: Where,
    /// Bumped on every move to active, so stale heap entries can be told apart.
    seq: u64,
}

#[derive(Default)]
pub struct Queue {
    entries: HashMap<PodKey, Entry>,
    active: BinaryHeap<(i32, Reverse<u64>, PodKey)>,
    next_seq: u64,
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

impl Queue {
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    fn activate(&mut self, key: &PodKey) {
        let Some(e) = self.entries.get_mut(key) else { return };
        self.next_seq += 1;
        e.seq = self.next_seq;
        e.place = Where::Active;
        self.active.push((priority(&e.pod), Reverse(e.seq), key.clone()));
    }

    /// Adds a pod that needs a node, or refreshes one already waiting. A changed pod
    /// that was unschedulable may fit now, so it is tried again once its backoff ends.
    pub fn upsert(&mut self, key: PodKey, pod: Arc<Pod>) {
        match self.entries.get_mut(&key) {
            Some(e) => {
                e.pod = pod;
                if let Where::Unschedulable(_) = e.place {
                    e.place = Where::Backoff(backoff_end(e));
                }
            }
            None => {
                self.entries.insert(key.clone(), Entry { pod, attempts: 0, last_attempt: None, place: Where::Active, seq: 0 });
                self.activate(&key);
            }
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// The next pod to schedule. It stays known to the queue until removed or put back.
    pub fn pop(&mut self) -> Option<Arc<Pod>> {
        while let Some((_, Reverse(seq), key)) = self.active.pop() {
            if let Some(e) = self.entries.get_mut(&key)
                && e.seq == seq
                && e.place == Where::Active
            {
                e.attempts += 1;
                e.last_attempt = Some(Instant::now());
                e.place = Where::InFlight;
                return Some(e.pod.clone());
            }
        }
        None
    }

    /// The pod fits nowhere now; it waits for a change in the cluster.
    pub fn unschedulable(&mut self, key: &str) {
        if let Some(e) = self.entries.get_mut(key) {
            e.place = Where::Unschedulable(Instant::now());
        }
    }

    /// Something went wrong that may pass (a failed binding): try again after backoff.
    pub fn backoff(&mut self, key: &str) {
        if let Some(e) = self.entries.get_mut(key) {
            e.place = Where::Backoff(backoff_end(e));
        }
    }

    /// The cluster changed: every unschedulable pod is worth another try.
    pub fn cluster_changed(&mut self) {
        for e in self.entries.values_mut() {
            if let Where::Unschedulable(_) = e.place {
                e.place = Where::Backoff(backoff_end(e));
            }
        }
    }

    /// The pods waiting: (active, in backoff, unschedulable).
    pub fn pending(&self) -> (usize, usize, usize) {
        self.entries.values().fold((0, 0, 0), |(a, b, u), e| match e.place {
            Where::Active => (a + 1, b, u),
            Where::Backoff(_) => (a, b + 1, u),
            Where::Unschedulable(_) => (a, b, u + 1),
            Where::InFlight => (a, b, u),
        })
    }

    /// Moves pods whose backoff ended (or that waited long as unschedulable) to active;
    /// returns when to look again.
    pub fn flush(&mut self, now: Instant) -> Option<Instant> {
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for (k, e) in &self.entries {
            let at = match e.place {
                Where::Active | Where::InFlight => continue,
                Where::Backoff(t) => t,
                Where::Unschedulable(t) => t + UNSCHEDULABLE_RETRY,
            };
            if at <= now {
                due.push(k.clone());
            } else if matches!(e.place, Where::Backoff(_)) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        for k in due {
            self.activate(&k);
        }
        next.or(Some(now + Duration::from_secs(1)))
    }
}

fn backoff_end(e: &Entry) -> Instant {
    let exp = e.attempts.saturating_sub(1).min(10);
    let wait = (INITIAL_BACKOFF * 2u32.pow(exp)).min(MAX_BACKOFF);
    e.last_attempt.map_or_else(Instant::now, |t| t + wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, prio: i32) -> Arc<Pod> {
        Arc::new(serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "d"}, "spec": {"containers": [], "priority": prio}})).unwrap())
    }

    #[test]
    fn priority_then_fifo_and_backoff() {
        let mut q = Queue::default();
        q.upsert("d/a".into(), pod("a", 0));
        q.upsert("d/b".into(), pod("b", 10));
        q.upsert("d/c".into(), pod("c", 0));
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).map(|p| p.metadata.name.clone().unwrap()).collect();
        assert_eq!(order, ["b", "a", "c"]);
        q.unschedulable("d/a");
        assert!(q.pop().is_none());
        q.cluster_changed();
        q.flush(Instant::now());
        assert!(q.pop().is_none(), "still in backoff");
        q.flush(Instant::now() + Duration::from_secs(2));
        assert_eq!(q.pop().unwrap().metadata.name.as_deref(), Some("a"));
    }
}
