//! The local fair queue: messages buffered per tenant, handed out round-robin between the
//! tenants that have work, with at most `per_tenant` of one tenant's messages out at once.
//!
//! Pure bookkeeping (no I/O), so its order is unit-tested here and the runtime only feeds it.
//! Order: tenants enter the ring in the order their first buffered message arrived; [`pop`]
//! takes the ring's front tenant's oldest message and moves that tenant to the back (if it may
//! take more); a tenant at its limit leaves the ring and rejoins at the back when one of its
//! messages is [`done`]. So among `T` tenants with work, each gets its next message within `T`
//! pops, whatever one tenant has queued.
//!
//! [`pop`]: FairQueue::pop
//! [`done`]: FairQueue::done

use std::collections::{HashMap, VecDeque};

struct Lane<T> {
    queued: VecDeque<T>,
    out: usize,
    in_ring: bool,
}

pub struct FairQueue<T> {
    per_tenant: usize,
    lanes: HashMap<String, Lane<T>>,
    ring: VecDeque<String>,
    len: usize,
}

impl<T> FairQueue<T> {
    pub fn new(per_tenant: usize) -> Self {
        FairQueue {
            per_tenant: per_tenant.max(1),
            lanes: HashMap::new(),
            ring: VecDeque::new(),
            len: 0,
        }
    }

    /// Messages buffered (not yet popped).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tenants with buffered messages.
    pub fn tenants_waiting(&self) -> usize {
        self.lanes.values().filter(|l| !l.queued.is_empty()).count()
    }

    pub fn push(&mut self, tenant: &str, item: T) {
        let per_tenant = self.per_tenant;
        let lane = self.lanes.entry(tenant.to_owned()).or_insert_with(|| Lane {
            queued: VecDeque::new(),
            out: 0,
            in_ring: false,
        });
        lane.queued.push_back(item);
        self.len += 1;
        if !lane.in_ring && lane.out < per_tenant {
            lane.in_ring = true;
            self.ring.push_back(tenant.to_owned());
        }
    }

    /// The next message to hand out, and its tenant.
    pub fn pop(&mut self) -> Option<(String, T)> {
        let tenant = self.ring.pop_front()?;
        let lane = self.lanes.get_mut(&tenant)?;
        let item = lane.queued.pop_front()?;
        self.len -= 1;
        lane.out += 1;
        if !lane.queued.is_empty() && lane.out < self.per_tenant {
            self.ring.push_back(tenant.clone());
        } else {
            lane.in_ring = false;
        }
        Some((tenant, item))
    }

    /// One of `tenant`'s handed-out messages is finished.
    pub fn done(&mut self, tenant: &str) {
        let Some(lane) = self.lanes.get_mut(tenant) else {
            return;
        };
        lane.out = lane.out.saturating_sub(1);
        if lane.queued.is_empty() {
            if lane.out == 0 {
                self.lanes.remove(tenant);
            }
        } else if !lane.in_ring {
            lane.in_ring = true;
            self.ring.push_back(tenant.to_owned());
        }
    }

    /// Every buffered message, for in-progress acks (in no particular order).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.lanes.values_mut().flat_map(|l| l.queued.iter_mut())
    }

    /// Empties the buffer (shutdown hands these back to the stream).
    pub fn drain(&mut self) -> Vec<T> {
        self.ring.clear();
        self.len = 0;
        let mut out = Vec::new();
        for lane in self.lanes.values_mut() {
            out.extend(lane.queued.drain(..));
            lane.in_ring = false;
        }
        self.lanes.retain(|_, l| l.out > 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_big_tenant_cannot_starve_the_others() {
        let mut q = FairQueue::new(1);
        for i in 0..10_000 {
            q.push("big", i);
        }
        for t in 0..50 {
            q.push(&format!("small{t}"), t);
        }
        // Four workers: pop four, then keep finishing the oldest and popping one.
        let mut out: VecDeque<String> = VecDeque::new();
        let mut order = Vec::new();
        for _ in 0..4 {
            let (t, _) = q.pop().unwrap();
            order.push(t.clone());
            out.push_back(t);
        }
        while order.len() < 60 {
            let t = out.pop_front().unwrap();
            q.done(&t);
            if let Some((t, _)) = q.pop() {
                order.push(t.clone());
                out.push_back(t);
            }
        }
        let last_small = order.iter().rposition(|t| t.starts_with("small")).unwrap();
        assert!(last_small <= 51, "{order:?}");
        assert_eq!(order.iter().filter(|t| *t == "big").count(), 60 - 50);
    }

    #[test]
    fn at_most_k_out_per_tenant_and_it_rejoins_when_done() {
        let mut q = FairQueue::new(2);
        for i in 0..5 {
            q.push("a", i);
        }
        assert_eq!(q.pop().map(|(_, i)| i), Some(0));
        assert_eq!(q.pop().map(|(_, i)| i), Some(1));
        assert!(q.pop().is_none());
        q.done("a");
        assert_eq!(q.pop().map(|(_, i)| i), Some(2));
        assert_eq!(q.len(), 2);
        assert_eq!(q.drain().len(), 2);
        assert!(q.is_empty());
    }
}
