//! Attempts in flight per endpoint, held in this process, so one slow or dead endpoint
//! cannot take every attempt slot (`HOOKRELAY_ENDPOINT_MAX_IN_FLIGHT`). Reads and writes no
//! subjects or tables.
//!
//! The cap is per process: several deliverers each let an endpoint have up to the cap. The
//! scheduler claims with it (see `store::claim_due`): rows of an endpoint at its cap stay
//! due and unclaimed, so they cost no attempt and no lease. The job path, finding its
//! endpoint at the cap, stores the row due now and leaves it to the scheduler.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

/// Counts per endpoint; an endpoint with nothing in flight has no entry.
#[derive(Debug)]
pub(crate) struct InFlight {
    cap: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One attempt's place in its endpoint's count; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    owner: Arc<InFlight>,
    endpoint_id: String,
}

impl InFlight {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            counts: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // The map stays consistent even if a holder panicked: every change is one statement.
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for `endpoint_id`, or `None` when it already has `cap` attempts in flight.
    pub(crate) fn try_acquire(self: &Arc<Self>, endpoint_id: &str) -> Option<Slot> {
        let mut counts = self.counts();
        let n = counts.entry(endpoint_id.to_owned()).or_default();
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            endpoint_id: endpoint_id.to_owned(),
        })
    }

    /// Every endpoint with attempts in flight, and how many.
    pub(crate) fn snapshot(&self) -> Vec<(String, i32)> {
        self.counts()
            .iter()
            .map(|(id, n)| (id.clone(), i32::try_from(*n).unwrap_or(i32::MAX)))
            .collect()
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.counts().len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts();
        if let Some(n) = counts.get_mut(&self.endpoint_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.endpoint_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_gets_at_most_cap_slots_and_others_are_unaffected() {
        let f = InFlight::new(2);
        let a1 = f.try_acquire("ep_a").unwrap();
        let _a2 = f.try_acquire("ep_a").unwrap();
        assert!(f.try_acquire("ep_a").is_none());
        let _b = f.try_acquire("ep_b").unwrap();
        drop(a1);
        assert!(f.try_acquire("ep_a").is_some());
    }

    #[test]
    fn an_endpoint_with_nothing_in_flight_is_forgotten() {
        let f = InFlight::new(1);
        let a = f.try_acquire("ep_a").unwrap();
        assert_eq!(f.snapshot(), [("ep_a".to_owned(), 1)]);
        drop(a);
        assert_eq!(f.tracked(), 0);
        assert!(f.snapshot().is_empty());
        // A refused try leaves no entry behind either.
        let f = InFlight::new(1);
        let _a = f.try_acquire("ep_a").unwrap();
        assert!(f.try_acquire("ep_a").is_none());
        assert_eq!(f.tracked(), 1);
    }
}
