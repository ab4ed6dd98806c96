//! A watch over a key prefix: first the retained events after the starting revision, then
//! live events as they commit, in revision order and without gaps or repeats.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::{Event, StoreError};

/// Where a watch reads retained events from when it starts or falls behind.
pub(crate) trait EventLog: Send + Sync {
    /// Events with revision > `after` under `prefix`, oldest first; `Expired` if compacted.
    fn events_after(&self, prefix: &str, after: u64) -> Result<Vec<Arc<Event>>, StoreError>;
}

/// Turns each event a watch delivers into what its reader sees (a sealed Secret into the
/// Secret).
pub type EventMap = Arc<dyn Fn(Arc<Event>) -> Result<Arc<Event>, StoreError> + Send + Sync>;

pub struct Watch {
    prefix: String,
    last: u64,
    backlog: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
    log: Arc<dyn EventLog>,
    map: Option<EventMap>,
}

impl Watch {
    /// Subscribes before reading the log, so no event falls between the two.
    pub(crate) fn start(
        prefix: &str,
        after: u64,
        live: broadcast::Receiver<Arc<Event>>,
        log: Arc<dyn EventLog>,
    ) -> Result<Self, StoreError> {
        let backlog = log.events_after(prefix, after)?.into();
        Ok(Self { prefix: prefix.to_string(), last: after, backlog, live, log, map: None })
    }

    /// This watch, its events passed through `map`.
    pub fn mapped(self, map: EventMap) -> Self {
        Self { map: Some(map), ..self }
    }

    /// The next event, `Err(Expired)` once the watch fell too far behind to continue, or
    /// `None` when the store shut down.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        let event = self.next_stored().await?;
        Some(match &self.map {
            Some(map) => event.and_then(|e| map(e)),
            None => event,
        })
    }

    async fn next_stored(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                if event.revision > self.last {
                    self.last = event.revision;
                    return Some(Ok(event));
                }
                continue;
            }
            match self.live.recv().await {
                Ok(event) => {
                    // Events elsewhere advance the position too: nothing under the prefix
                    // came between, so a bookmark or a resumed watch may start there rather
                    // than rescan the log from this watch's last own event.
                    if event.revision > self.last {
                        self.last = event.revision;
                        if event.key.starts_with(&self.prefix) {
                            return Some(Ok(event));
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => match self.log.events_after(&self.prefix, self.last) {
                    Ok(events) => self.backlog = events.into(),
                    Err(e) => return Some(Err(e)),
                },
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The revision this watch has seen everything up to: its last event, or a later
    /// event under another prefix.
    pub fn last_revision(&self) -> u64 {
        self.last
    }
}
