//! The announcement-following cache over a real NATS server: an announced entry is read
//! again, a read that raced a drop is not kept, a failed read keeps nothing.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use hookrelay_runtime::cache::{FollowedCache, payload_names_the_key};
use hookrelay_testkit::TestEnv;

const SUBJECT: &str = "test.changes.>";

fn cache() -> FollowedCache<String, u32> {
    FollowedCache::new(Duration::from_secs(3600), payload_names_the_key)
}

/// Reads `key` from `source` through the cache.
async fn read(cache: &FollowedCache<String, u32>, key: &str, source: &Mutex<u32>) -> u32 {
    cache
        .get_or_read(key.to_owned(), || async { Ok::<_, ()>(*source.lock().unwrap()) })
        .await
        .unwrap()
}

/// A cache following [`SUBJECT`] on a private server, with the connection announcements
/// are awaited on.
async fn followed() -> (TestEnv, async_nats::Client, FollowedCache<String, u32>) {
    let env = TestEnv::start().await.unwrap();
    let ours = env.nats().await.unwrap();
    let cache = cache();
    cache.follow(&ours, SUBJECT).await.unwrap();
    (env, ours, cache)
}

#[tokio::test]
async fn an_entry_announced_before_the_next_read_is_read_again() {
    let (env, ours, cache) = followed().await;
    let source = Mutex::new(1);
    assert_eq!(read(&cache, "ep_a", &source).await, 1);

    *source.lock().unwrap() = 2;
    assert_eq!(read(&cache, "ep_a", &source).await, 1, "kept while fresh");
    env.announce_before_work(&ours, "test.changes.acme".into(), "ep_a".into())
        .await
        .unwrap();
    assert_eq!(
        read(&cache, "ep_a", &source).await,
        2,
        "the announced change was missed"
    );
}

#[tokio::test]
async fn an_announcement_naming_nothing_drops_every_entry() {
    let (env, ours, cache) = followed().await;
    let source = Mutex::new(1);
    assert_eq!(read(&cache, "ep_a", &source).await, 1);
    assert_eq!(read(&cache, "ep_b", &source).await, 1);
    *source.lock().unwrap() = 2;
    env.announce_before_work(&ours, "test.changes.acme".into(), String::new())
        .await
        .unwrap();
    assert_eq!(read(&cache, "ep_a", &source).await, 2);
    assert_eq!(read(&cache, "ep_b", &source).await, 2);
}

#[tokio::test]
async fn a_read_that_raced_a_drop_is_used_once_and_not_kept() {
    let cache = Arc::new(cache());
    let source = Mutex::new(1);
    // The entry is dropped while its read is under way.
    let raced = cache
        .get_or_read("ep_a".to_owned(), || async {
            cache.forget(&"ep_a".to_owned());
            Ok::<_, ()>(*source.lock().unwrap())
        })
        .await
        .unwrap();
    assert_eq!(raced, 1, "the raced read serves the work that asked");

    *source.lock().unwrap() = 2;
    assert_eq!(read(&cache, "ep_a", &source).await, 2, "a raced read was kept");
    *source.lock().unwrap() = 3;
    assert_eq!(read(&cache, "ep_a", &source).await, 2, "an unraced read is kept");
}

#[tokio::test]
async fn a_failed_read_keeps_nothing() {
    let cache = cache();
    let failed = cache
        .get_or_read("ep_a".to_owned(), || async { Err::<u32, _>("database down") })
        .await;
    assert_eq!(failed, Err("database down"));
    assert_eq!(read(&cache, "ep_a", &Mutex::new(7)).await, 7);
}

#[tokio::test]
async fn a_stale_entry_is_read_again() {
    let cache = FollowedCache::new(Duration::ZERO, payload_names_the_key);
    let source = Mutex::new(1);
    assert_eq!(read(&cache, "ep_a", &source).await, 1);
    *source.lock().unwrap() = 2;
    assert_eq!(read(&cache, "ep_a", &source).await, 2);
}
