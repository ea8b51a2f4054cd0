//! The deliverer's attempts in flight (`HOOKRELAY_DELIVERER_CONCURRENCY`), shared fairly
//! between the tenants that have work, and within a tenant between its endpoints. Reads and
//! writes no subjects or tables.
//!
//! An attempt takes a [`Permit`] after its endpoint's slot (`limits`), so a permit is never
//! held by an attempt waiting for its endpoint. The rules:
//! - A tenant below its fair share (`total / tenants with work`; three quarters of `total`
//!   for a tenant alone) gets a free permit at once.
//! - A tenant at or over its share gets one only while more than [`reserve`] permits are
//!   free and no other tenant waits: one tenant alone may use three quarters of them, and
//!   the quarter kept back lets a tenant that starts sending begin at once, instead of
//!   waiting for a slow attempt of another tenant to end.
//! - A freed permit goes to the waiting tenants in turn (round robin), tenants under
//!   their share first; within a tenant, to its endpoints in turn, each endpoint's waiters
//!   first come, first served.
//!
//! So a tenant whose endpoints are slow or dead holds its share and no more while others
//! wait, and a probe of a failing endpoint counts against its own tenant's share.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::oneshot;

/// Permits kept back from tenants at or over their share.
fn reserve(total: usize) -> usize {
    total / 4
}

#[derive(Debug, Default)]
struct Tenant {
    in_flight: usize,
    /// Each endpoint's waiters, first come first served.
    waiting: HashMap<String, VecDeque<oneshot::Sender<Permit>>>,
    /// The endpoints with waiters, in turn.
    turn: VecDeque<String>,
}

impl Tenant {
    fn has_waiters(&self) -> bool {
        !self.turn.is_empty()
    }

    fn active(&self) -> bool {
        self.in_flight > 0 || self.has_waiters()
    }
}

#[derive(Debug, Default)]
struct State {
    available: usize,
    tenants: HashMap<String, Tenant>,
    /// The tenants with waiters, in turn.
    turn: VecDeque<String>,
}

#[derive(Debug)]
pub(crate) struct Fair {
    total: usize,
    state: Mutex<State>,
}

/// One attempt's place among the deliverer's attempts in flight; given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    owner: Arc<Fair>,
    tenant: String,
}

impl Fair {
    pub(crate) fn new(total: usize) -> Arc<Self> {
        let total = total.max(1);
        Arc::new(Self {
            total,
            state: Mutex::new(State {
                available: total,
                ..State::default()
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change keeps the counts consistent before anything can panic.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Permits not held now.
    pub(crate) fn available(&self) -> usize {
        self.state().available
    }

    /// A tenant's fair share, counting `tenant` among the tenants with work.
    fn share(&self, state: &State, tenant: Option<&str>) -> usize {
        let newcomer = tenant.is_some_and(|id| !state.tenants.get(id).is_some_and(Tenant::active));
        let active = state.tenants.values().filter(|t| t.active()).count() + usize::from(newcomer);
        if active <= 1 {
            (self.total - reserve(self.total)).max(1)
        } else {
            (self.total / active).max(1)
        }
    }

    /// Whether `tenant` may take a permit now, `others_wait`: another tenant has waiters.
    fn may_take(&self, state: &State, tenant: &Tenant, share: usize, others_wait: bool) -> bool {
        state.available > 0 && (tenant.in_flight < share || (!others_wait && state.available > reserve(self.total)))
    }

    fn grant(self: &Arc<Self>, state: &mut State, tenant: &str) -> Permit {
        state.available -= 1;
        state.tenants.entry(tenant.to_owned()).or_default().in_flight += 1;
        Permit {
            owner: self.clone(),
            tenant: tenant.to_owned(),
        }
    }

    /// A permit for an attempt of `tenant` to `endpoint`, waiting for its turn if need be.
    pub(crate) async fn acquire(self: &Arc<Self>, tenant: &str, endpoint: &str) -> Permit {
        let waiting = {
            let mut state = self.state();
            let share = self.share(&state, Some(tenant));
            let others_wait = state.turn.iter().any(|t| t != tenant);
            let idle = Tenant::default();
            let t = state.tenants.get(tenant).unwrap_or(&idle);
            if !t.has_waiters() && self.may_take(&state, t, share, others_wait) {
                return self.grant(&mut state, tenant);
            }
            let (tx, rx) = oneshot::channel();
            let t = state.tenants.entry(tenant.to_owned()).or_default();
            if !t.waiting.contains_key(endpoint) {
                t.turn.push_back(endpoint.to_owned());
            }
            t.waiting.entry(endpoint.to_owned()).or_default().push_back(tx);
            if !state.turn.iter().any(|t| t == tenant) {
                state.turn.push_back(tenant.to_owned());
            }
            rx
        };
        // The sender is dropped only with a permit sent, or with the whole gate.
        match waiting.await {
            Ok(permit) => permit,
            Err(_) => std::future::pending().await,
        }
    }

    /// Gives `tenant`'s permit back and hands free permits to waiters, in turn.
    fn release(self: &Arc<Self>, tenant: &str) {
        let mut undelivered = Vec::new();
        {
            let mut state = self.state();
            state.available += 1;
            if let Some(t) = state.tenants.get_mut(tenant) {
                t.in_flight = t.in_flight.saturating_sub(1);
            }
            while let Some(next) = self.next_waiter(&mut state) {
                let (tenant, tx) = next;
                let permit = self.grant(&mut state, &tenant);
                // A waiter that gave up: its permit comes back once the lock is released.
                if let Err(permit) = tx.send(permit) {
                    undelivered.push(permit);
                }
            }
            state.tenants.retain(|_, t| t.active());
        }
        drop(undelivered);
    }

    /// The next waiter to serve, taken off its queues: the first tenant in turn that is
    /// under its share, else (while more than the reserve is free) the first in turn.
    fn next_waiter(&self, state: &mut State) -> Option<(String, oneshot::Sender<Permit>)> {
        if state.available == 0 || state.turn.is_empty() {
            return None;
        }
        let share = self.share(state, None);
        let eligible = |over_share_ok: bool| {
            state.turn.iter().position(|id| {
                let t = &state.tenants[id];
                t.in_flight < share || over_share_ok
            })
        };
        let position = eligible(false).or_else(|| {
            // Over their share: only from beyond the reserve, and only one tenant waiting.
            (state.available > reserve(self.total) && state.turn.len() == 1).then_some(0)
        })?;
        let tenant = state.turn.remove(position)?;
        let t = state.tenants.get_mut(&tenant)?;
        let endpoint = t.turn.pop_front()?;
        let queue = t.waiting.get_mut(&endpoint)?;
        let tx = queue.pop_front()?;
        if queue.is_empty() {
            t.waiting.remove(&endpoint);
        } else {
            t.turn.push_back(endpoint);
        }
        if t.has_waiters() {
            state.turn.push_back(tenant.clone());
        }
        Some((tenant, tx))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.owner.release(&self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn took(f: &Arc<Fair>, tenant: &str, endpoint: &str) -> Option<Permit> {
        tokio::time::timeout(Duration::from_millis(50), f.acquire(tenant, endpoint))
            .await
            .ok()
    }

    #[tokio::test]
    async fn one_tenant_alone_takes_three_quarters_and_another_starts_at_once() {
        let f = Fair::new(8);
        let mut a = Vec::new();
        for _ in 0..6 {
            a.push(took(&f, "a", "a1").await.expect("within three quarters"));
        }
        assert!(took(&f, "a", "a1").await.is_none(), "the reserve is kept");
        let b = took(&f, "b", "b1").await;
        assert!(b.is_some(), "a tenant that starts sending begins at once");
        drop(a);
    }

    #[tokio::test]
    async fn freed_permits_go_to_the_tenant_under_its_share() {
        let f = Fair::new(4);
        let a: Vec<_> = [
            took(&f, "a", "a1").await,
            took(&f, "a", "a1").await,
            took(&f, "a", "a1").await,
        ]
        .into_iter()
        .map(Option::unwrap)
        .collect();
        let b1 = took(&f, "b", "b1").await.unwrap();
        // Full: both wait; a (over its share of two) queued first.
        let fa = {
            let f = f.clone();
            tokio::spawn(async move { f.acquire("a", "a1").await })
        };
        tokio::task::yield_now().await;
        let fb = {
            let f = f.clone();
            tokio::spawn(async move { f.acquire("b", "b2").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut a = a.into_iter();
        drop(a.next());
        let b2 = tokio::time::timeout(Duration::from_secs(1), fb).await.unwrap().unwrap();
        assert!(!fa.is_finished(), "a is over its share while b waits");
        drop((b1, b2));
        let _a = tokio::time::timeout(Duration::from_secs(1), fa).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn within_a_tenant_endpoints_take_turns() {
        let f = Fair::new(1);
        let held = took(&f, "a", "x").await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for endpoint in ["x", "x", "x", "y"] {
            let (f, tx) = (f.clone(), tx.clone());
            tokio::spawn(async move {
                let permit = f.acquire("a", endpoint).await;
                tx.send(endpoint).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(permit);
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(held);
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, ["x", "y", "x", "x"], "y does not wait behind x's queue");
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_no_permit() {
        let f = Fair::new(1);
        let held = took(&f, "a", "x").await.unwrap();
        assert!(took(&f, "b", "y").await.is_none(), "gave up");
        drop(held);
        assert_eq!(f.available(), 1);
        assert!(took(&f, "c", "z").await.is_some());
    }
}
