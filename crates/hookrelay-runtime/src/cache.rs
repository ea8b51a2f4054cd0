//! A read-through cache that follows announcements: the one way a process keeps rows owned
//! by another service (an endpoint, an event type's schema) in memory and still applies a
//! change before the work that follows it.
//!
//! - The owner announces each change on core NATS after its commit, and flushes before it
//!   answers. [`crate::nats::Announcements`] says why an announcement is then already here
//!   when any later piece of work arrives on this connection.
//! - Every read first applies every announcement received ([`FollowedCache::catch_up`]); an
//!   idle process does so every [`IDLE_CATCH_UP`] ([`FollowedCache::idle`]), so the
//!   subscription never backs up.
//! - A read from the database that was under way when an entry was dropped may predate that
//!   change: it is used once, for the work that asked, and not kept.
//! - Without announcements (one lost, or the connection made again, which clears
//!   everything) an entry is read again once it is older than its freshness, so a change is
//!   never missed for longer than that.

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::nats::Announcements;

/// How often an idle process applies the announcements it has received.
pub const IDLE_CATCH_UP: Duration = Duration::from_millis(100);

/// Past this many entries, stale ones are swept out when the next is kept.
const SWEEP_PAST: usize = 10_000;

/// What an announcement changed.
pub enum Change<K, V> {
    /// This entry: drop it.
    One(K),
    /// The entries whose value this says yes to (an API key's entries, kept by the key's
    /// hash, named by its id).
    Matching(Box<dyn Fn(&V) -> bool + Send>),
    /// Anything: drop every entry (an announcement that names nothing readable).
    All,
}

struct Entry<V> {
    read_at: Instant,
    value: V,
}

/// Entries `K → V` read through [`FollowedCache::get_or_read`], each trusted for `fresh_for`
/// unless an announcement drops it first.
pub struct FollowedCache<K, V> {
    fresh_for: Duration,
    /// What an announcement on the followed subject changed.
    change_of: fn(&async_nats::Message) -> Change<K, V>,
    entries: Mutex<HashMap<K, Entry<V>>>,
    /// `None` until [`FollowedCache::follow`].
    announcements: Mutex<Option<Announcements>>,
    /// Entries dropped so far: a read begun before a drop is not kept.
    generation: AtomicU64,
}

impl<K: Eq + Hash + Clone, V: Clone> FollowedCache<K, V> {
    pub fn new(fresh_for: Duration, change_of: fn(&async_nats::Message) -> Change<K, V>) -> Self {
        Self {
            fresh_for,
            change_of,
            entries: Mutex::new(HashMap::new()),
            announcements: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// Subscribes to `subject` (flushed: nothing announced after this returns is missed);
    /// from then on every read applies the announcements first.
    pub async fn follow(&self, nats: &async_nats::Client, subject: &'static str) -> Result<(), async_nats::Error> {
        let announcements = Announcements::subscribe(nats, subject).await?;
        *self.announcements.lock().unwrap_or_else(|e| e.into_inner()) = Some(announcements);
        Ok(())
    }

    /// Applies every announcement received so far, in order; after a reconnect, first
    /// drops everything (announcements may have been missed meanwhile).
    pub fn catch_up(&self) {
        let mut announcements = self.announcements.lock().unwrap_or_else(|e| e.into_inner());
        let Some(announcements) = announcements.as_mut() else {
            return;
        };
        if announcements.reconnected() {
            self.clear();
        }
        while let Some(msg) = announcements.ready() {
            match (self.change_of)(&msg) {
                Change::One(key) => self.forget(&key),
                Change::Matching(drop) => self.forget_where(drop),
                Change::All => self.clear(),
            }
        }
    }

    /// The entry for `key` while fresh, else what `read` returns (kept unless an entry was
    /// dropped while it ran). An error is returned and nothing is kept.
    pub async fn get_or_read<E, F>(&self, key: K, read: impl FnOnce() -> F) -> Result<V, E>
    where
        F: Future<Output = Result<V, E>>,
    {
        let now = Instant::now();
        if let Some(value) = self.fresh_at(&key, now) {
            return Ok(value);
        }
        let before = self.generation.load(Ordering::Acquire);
        let value = read().await?;
        self.keep(key, now, before, value.clone());
        Ok(value)
    }

    /// The entry for `key` while fresh, without reading anything.
    pub fn fresh(&self, key: &K) -> Option<V> {
        self.fresh_at(key, Instant::now())
    }

    fn fresh_at(&self, key: &K, now: Instant) -> Option<V> {
        self.catch_up();
        self.entries()
            .get(key)
            .filter(|entry| now.duration_since(entry.read_at) < self.fresh_for)
            .map(|entry| entry.value.clone())
    }

    /// Keeps a read begun at `read_at`, unless an entry was dropped since `before`.
    fn keep(&self, key: K, read_at: Instant, before: u64, value: V) {
        self.catch_up();
        let mut entries = self.entries();
        if self.generation.load(Ordering::Acquire) != before {
            return;
        }
        if entries.len() >= SWEEP_PAST {
            entries.retain(|_, e| read_at.duration_since(e.read_at) < self.fresh_for);
        }
        entries.insert(key, Entry { read_at, value });
    }

    /// Drops `key`: the next read of it goes to the database.
    pub fn forget(&self, key: &K) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(key);
    }

    /// Drops every entry whose value `drop` says yes to.
    pub fn forget_where(&self, drop: impl Fn(&V) -> bool) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.retain(|_, entry| !drop(&entry.value));
    }

    /// Drops every entry.
    pub fn clear(&self) {
        let mut entries = self.entries();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// Applies announcements while nothing reads, until `shutdown`.
    pub async fn idle(&self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(IDLE_CATCH_UP);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => self.catch_up(),
            }
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<K, Entry<V>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An announcement whose payload is the changed entry's key as text (an endpoint id):
/// that entry, or every entry when the payload is empty or not text.
pub fn payload_names_the_key<V>(msg: &async_nats::Message) -> Change<String, V> {
    match std::str::from_utf8(&msg.payload).map(str::trim) {
        Ok(key) if !key.is_empty() => Change::One(key.to_owned()),
        _ => Change::All,
    }
}
