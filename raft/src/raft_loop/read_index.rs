//! Linearizable reads by ReadIndex (Raft thesis §6.4), batched per replica.
//!
//! The reads that reach a replica in one pass share one `read_index` call,
//! so one round of heartbeats confirms all of them. raft-rs answers with a
//! `ReadState` (the commit index at the time of the request) in a later
//! `Ready`; a read is served once the replica has applied that index. A new
//! leader that has not committed in its term yet silently drops the request,
//! so requests not answered within an election timeout are asked again.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use prometheus::Histogram;
use raft::{RawNode, ReadState};

use super::api::{Callback, Timed, Timings};
use crate::error::Error;
use crate::storage::RaftStorage;

/// The context of a ReadIndex request: this replica's id, then its own
/// counter. The leader keeps pending requests by context and ignores one
/// whose context is already pending, so contexts must be unique across the
/// group's replicas: with the counter alone, two followers' first reads (both
/// context 0) collided and the second waited for the re-ask after an election
/// timeout (found by the scripted test `read_index_on_follower`).
fn request_ctx(replica_id: u64, ctx: u64) -> Vec<u8> {
    [replica_id.to_be_bytes(), ctx.to_be_bytes()].concat()
}

/// One waiting read.
pub(super) struct ReadWaiter<G> {
    pub cb: Callback<Timed<G>>,
    /// Linearizable-on-leader reads fail when leadership is lost before the
    /// index is confirmed; follower reads keep waiting.
    pub leader_only: bool,
    pub deadline: Instant,
    /// When the loop took the read from its inbox.
    pub accepted: Instant,
}

/// The ReadIndex requests of one replica.
pub(super) struct Reads<G> {
    next_ctx: u64,
    /// Arrived this pass, not yet asked.
    batch: Vec<ReadWaiter<G>>,
    /// Asked, waiting for their ReadState: ctx -> (waiters, tick asked).
    issued: HashMap<u64, (Vec<ReadWaiter<G>>, u64)>,
    /// Index confirmed (at the instant), waiting for apply to reach it.
    confirmed: VecDeque<(u64, Instant, Vec<ReadWaiter<G>>)>,
}

impl<G> Default for Reads<G> {
    fn default() -> Self {
        Reads { next_ctx: 0, batch: Vec::new(), issued: HashMap::new(), confirmed: VecDeque::new() }
    }
}

impl<G: Clone> Reads<G> {
    /// Queues a read for the next `read_index` call.
    pub fn push(&mut self, w: ReadWaiter<G>) {
        self.batch.push(w);
    }

    /// Asks raft-rs for one read index for every read queued this pass.
    pub fn issue(&mut self, raw: &mut RawNode<RaftStorage>, tick: u64) {
        if self.batch.is_empty() {
            return;
        }
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        self.issued.insert(ctx, (std::mem::take(&mut self.batch), tick));
        raw.read_index(request_ctx(raw.raft.id, ctx));
    }

    /// Takes raft-rs's answers.
    pub fn confirm(&mut self, states: Vec<ReadState>) {
        if states.is_empty() {
            return;
        }
        // One instant for every read this Ready confirms.
        let now = Instant::now();
        for rs in states {
            let ctx = rs.request_ctx.get(8..).and_then(|c| c.try_into().ok()).map_or(u64::MAX, u64::from_be_bytes);
            if let Some((w, _)) = self.issued.remove(&ctx) {
                self.confirmed.push_back((rs.index, now, w));
            }
        }
    }

    /// Serves every confirmed read whose index is applied, as of `now`
    /// (the pass's instant), observing each one's wait in `waited`.
    pub fn serve(&mut self, applied: u64, group: &G, now: Instant, waited: &Histogram) {
        while self.confirmed.front().is_some_and(|(idx, _, _)| *idx <= applied) {
            let Some((_, committed, waiters)) = self.confirmed.pop_front() else { break };
            for w in waiters {
                waited.observe(now.saturating_duration_since(w.accepted).as_secs_f64());
                let timings = Timings { accepted: w.accepted, committed: Some(committed), done: now };
                let _ = w.cb.send(Ok(Timed { value: group.clone(), timings }));
            }
        }
    }

    /// Asks again for requests older than `reissue_after` ticks; drops the
    /// ones whose callers gave up; answers the ones past their deadline.
    /// True if it asked raft-rs anything.
    pub fn on_tick(&mut self, raw: &mut RawNode<RaftStorage>, tick: u64, reissue_after: u64, now: Instant) -> bool {
        let mut asked = false;
        for (ctx, (_, at)) in self.issued.iter_mut() {
            if tick - *at >= reissue_after {
                *at = tick;
                raw.read_index(request_ctx(raw.raft.id, *ctx));
                asked = true;
            }
        }
        let expire = |w: &mut Vec<ReadWaiter<G>>| {
            for x in std::mem::take(w) {
                if x.cb.is_closed() {
                    continue;
                }
                if x.deadline <= now {
                    let _ = x.cb.send(Err(Error::Retryable("read not confirmed before its deadline".into())));
                } else {
                    w.push(x);
                }
            }
        };
        self.issued.retain(|_, (w, _)| {
            expire(w);
            !w.is_empty()
        });
        for (_, _, w) in self.confirmed.iter_mut() {
            expire(w);
        }
        asked
    }

    /// Leadership was lost: reads that only a leader can confirm get `err()`
    /// (retryable: nothing was read, the caller can try the new leader).
    pub fn fail_leader_only(&mut self, err: impl Fn() -> Error) {
        for (waiters, _) in self.issued.values_mut() {
            for w in std::mem::take(waiters) {
                if w.leader_only {
                    let _ = w.cb.send(Err(err()));
                } else {
                    waiters.push(w);
                }
            }
        }
        self.issued.retain(|_, (w, _)| !w.is_empty());
    }

    /// Answers every waiting read with `err()`.
    pub fn fail_all(&mut self, err: impl Fn() -> Error) {
        let issued = self.issued.drain().flat_map(|(_, (w, _))| w);
        let confirmed = self.confirmed.drain(..).flat_map(|(_, _, w)| w);
        for w in self.batch.drain(..).chain(issued).chain(confirmed) {
            let _ = w.cb.send(Err(err()));
        }
    }
}
