//! The NATS connection and hookrelay's JetStream streams, created idempotently at start.
//!
//! | stream | subjects | retention | read by |
//! | --- | --- | --- | --- |
//! | `HOOKRELAY_INGEST` | `hookrelay.ingest.>` | work queue | ingest |
//! | `HOOKRELAY_EVENTS` | `hookrelay.events.>` | limits, 3 days | router |
//! | `HOOKRELAY_DELIVERIES` | `hookrelay.deliveries.>` | work queue | deliverer |
//! | `HOOKRELAY_COMMANDS` | `hookrelay.commands.>` | work queue | deliverer (`.deliverer.>`), query (`.query.>`) |
//! | `HOOKRELAY_SYSTEM` | `hookrelay.system.>` | work queue | ingest (reserved `hookrelay/` events) |
//! | `HOOKRELAY_DEAD` | `hookrelay.dead.>` | limits, 14 days | operators |
//!
//! The intake stream captures core publishes too, so a producer's plain `PUBLISH` is stored
//! the moment the server takes it.

use std::time::Duration;

use async_nats::{
    HeaderMap,
    jetstream::{
        self,
        context::PublishAckFuture,
        stream::{self, RetentionPolicy, StorageType},
    },
};
use bytes::Bytes;
use hookrelay_types::subjects;

/// The servers `HOOKRELAY_NATS_URL` names: one URL, or several separated by commas (servers
/// of one cluster: the client connects to one that answers and learns the others from it).
pub fn server_addrs(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .map(|url| {
            if url.is_empty() {
                return Err("an entry of the list is empty".to_owned());
            }
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("`{url}` is not a NATS server URL: {e}"))
        })
        .collect()
}

/// Connects to the servers `urls` names (see [`server_addrs`]).
pub async fn connect(urls: &str) -> anyhow::Result<async_nats::Client> {
    let servers = server_addrs(urls).map_err(|e| anyhow::anyhow!("HOOKRELAY_NATS_URL: {e}"))?;
    let client = async_nats::ConnectOptions::new()
        .name("hookrelay")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await?;
    Ok(client)
}

fn stream_config(name: &str, subject: &str, retention: RetentionPolicy, max_age: Duration) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        retention,
        storage: StorageType::File,
        max_age,
        duplicate_window: Duration::from_secs(120),
        num_replicas: 1,
        ..Default::default()
    }
}

/// Creates hookrelay's streams with `replicas` copies each (`HOOKRELAY_STREAM_REPLICAS`: 3
/// on a three-server cluster); an existing stream with another count is updated to it.
pub async fn ensure_streams(js: &jetstream::Context, replicas: usize) -> Result<(), anyhow::Error> {
    let day = Duration::from_secs(86_400);
    let streams = [
        stream_config(
            subjects::INGEST_STREAM,
            subjects::INGEST_SUBJECTS,
            RetentionPolicy::WorkQueue,
            Duration::ZERO,
        ),
        stream_config(
            subjects::EVENTS_STREAM,
            subjects::EVENTS_SUBJECTS,
            RetentionPolicy::Limits,
            3 * day,
        ),
        stream_config(
            subjects::DELIVERIES_STREAM,
            subjects::DELIVERIES_SUBJECTS,
            RetentionPolicy::WorkQueue,
            Duration::ZERO,
        ),
        stream_config(
            subjects::COMMANDS_STREAM,
            subjects::COMMANDS_SUBJECTS,
            RetentionPolicy::WorkQueue,
            Duration::ZERO,
        ),
        stream_config(
            subjects::SYSTEM_STREAM,
            subjects::SYSTEM_SUBJECTS,
            RetentionPolicy::WorkQueue,
            Duration::ZERO,
        ),
        stream_config(
            subjects::DEAD_STREAM,
            subjects::DEAD_SUBJECTS,
            RetentionPolicy::Limits,
            14 * day,
        ),
    ];
    for mut config in streams {
        config.num_replicas = replicas;
        let name = config.name.clone();
        let failed = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!("stream {name} with {replicas} replicas (HOOKRELAY_STREAM_REPLICAS): {e}")
        };
        let mut stream = js.get_or_create_stream(config.clone()).await.map_err(|e| failed(&e))?;
        let info = stream.info().await.map_err(|e| failed(&e))?;
        if info.config.num_replicas != replicas {
            js.update_stream(config).await.map_err(|e| failed(&e))?;
        }
    }
    Ok(())
}

/// Core NATS announcements of a change (an endpoint's, for instance) that a process must
/// apply before the work that follows them. The server writes messages to one connection
/// in the order it handles them, and an announcer flushes before it answers; so an
/// announcement is already here when any message published after that answer (an event's
/// job) arrives on the same connection. Taking every [`Announcements::ready`] one before
/// each piece of work applies every change announced before it. (Across the servers of a
/// cluster the order is not kept.)
pub struct Announcements(async_nats::Subscriber);

impl Announcements {
    /// Subscribes to `subject`; flushed, so nothing announced after this returns is missed.
    pub async fn subscribe(nats: &async_nats::Client, subject: &'static str) -> Result<Self, async_nats::Error> {
        let subscriber = nats.subscribe(subject).await?;
        nats.flush().await?;
        Ok(Self(subscriber))
    }

    /// The next announcement already received, without waiting.
    pub fn ready(&mut self) -> Option<async_nats::Message> {
        use futures::{FutureExt as _, StreamExt as _};
        self.0.next().now_or_never().flatten()
    }
}

/// [`Announcements`] a cache shares among its tasks: none until [`Followed::follow`], then
/// every [`Followed::apply`] hands over what has arrived. The cache reports each entry it
/// drops with [`Followed::changed`], so a read that began before ([`Followed::generation`]
/// moved meanwhile) can tell, and is used once and not kept.
#[derive(Default)]
pub struct Followed {
    announcements: std::sync::Mutex<Option<Announcements>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Followed {
    /// Subscribes to `subject` (see [`Announcements::subscribe`]).
    pub async fn follow(&self, nats: &async_nats::Client, subject: &'static str) -> Result<(), async_nats::Error> {
        let announcements = Announcements::subscribe(nats, subject).await?;
        *self.announcements.lock().unwrap_or_else(|e| e.into_inner()) = Some(announcements);
        Ok(())
    }

    /// Hands every announcement already received to `apply`, in order.
    pub fn apply(&self, mut apply: impl FnMut(&async_nats::Message)) {
        let mut announcements = self.announcements.lock().unwrap_or_else(|e| e.into_inner());
        let Some(announcements) = announcements.as_mut() else {
            return;
        };
        while let Some(msg) = announcements.ready() {
            apply(&msg);
        }
    }

    /// Counts a dropped entry: reads begun before it are not kept.
    pub fn changed(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// How many entries were dropped so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Publishes with `Nats-Msg-Id` (JetStream drops a repeat within the duplicate window) and
/// the current span's trace context (`traceparent`, see `telemetry`), and returns the ack
/// future: await it before acknowledging whatever caused the publish.
pub async fn publish(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    mut headers: HeaderMap,
    payload: Bytes,
) -> Result<PublishAckFuture, jetstream::context::PublishError> {
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    crate::telemetry::inject(&mut headers);
    js.publish_with_headers(subject, headers, payload).await
}

/// The consumer loop every service uses: fetch, hand each message to `handle` on its own
/// task (at most `concurrency` at once), stop fetching on `shutdown`, then give in-flight
/// handlers `drain` to finish. `handle` settles the message itself (ack, nak or term); a
/// message it never settles is redelivered after the consumer's ack wait. A fetch error
/// never ends the loop. While it runs, the consumer's lag is reported (see [`report_lag`]).
pub async fn consume<F, Fut>(
    consumer: jetstream::consumer::PullConsumer,
    concurrency: usize,
    drain: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt as _;

    let name = consumer.cached_info().name.clone();
    let tracker = tokio_util::task::TaskTracker::new();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut messages = consumer.messages().await?;
    let lag = tokio::spawn(report_lag(consumer.clone()));
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => break,
            next = messages.next() => match next {
                Some(Ok(msg)) => msg,
                Some(Err(error)) => {
                    tracing::warn!(consumer = %name, %error, "fetch failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                None => break,
            },
        };
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit?,
        };
        let work = handle(msg);
        tracker.spawn(async move {
            work.await;
            drop(permit);
        });
    }
    lag.abort();
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(consumer = %name, "messages still in flight at the drain deadline; they will be redelivered");
    }
    Ok(())
}

/// How often a consumer's lag is read from the server.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

/// Every [`LAG_EVERY`], the consumer's lag as gauges labelled `stream` and `consumer`:
/// `hookrelay_consumer_pending_messages` (in the stream, not yet delivered to the consumer)
/// and `hookrelay_consumer_ack_pending_messages` (delivered, not yet acknowledged). Every
/// replica sharing a durable consumer reports the same numbers: aggregate with `max`.
async fn report_lag(mut consumer: jetstream::consumer::PullConsumer) {
    let mut tick = tokio::time::interval(LAG_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match consumer.info().await {
            Ok(info) => {
                let labels = [("stream", info.stream_name.clone()), ("consumer", info.name.clone())];
                metrics::gauge!("hookrelay_consumer_pending_messages", &labels).set(info.num_pending as f64);
                metrics::gauge!("hookrelay_consumer_ack_pending_messages", &labels).set(info.num_ack_pending as f64);
            }
            Err(error) => tracing::debug!(%error, "reading consumer lag failed"),
        }
    }
}

/// The durable pull consumer `name` on `stream` (created if missing): explicit acks, a 30 s
/// ack wait, up to 10,000 messages in flight.
pub async fn durable_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    consumer_with_filter(js, stream, name, None).await
}

/// As [`durable_consumer`], reading only `filter` (needed where several consumers share a
/// work-queue stream, whose consumers may not overlap). A consumer found with another
/// filter (made by an older release) is updated to this one.
pub async fn filtered_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    filter: &str,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    consumer_with_filter(js, stream, name, Some(filter)).await
}

async fn consumer_with_filter(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    filter: Option<&str>,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    use jetstream::consumer::{AckPolicy, pull};
    let stream_handle = js
        .get_stream(stream)
        .await
        .map_err(|e| anyhow::anyhow!("stream {stream}: {e}"))?;
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 10_000,
        filter_subject: filter.unwrap_or_default().to_owned(),
        ..Default::default()
    };
    let mut consumer: jetstream::consumer::PullConsumer = stream_handle
        .get_or_create_consumer(name, config.clone())
        .await
        .map_err(|e| anyhow::anyhow!("consumer {name} on {stream}: {e}"))?;
    if filter.is_some_and(|f| consumer.cached_info().config.filter_subject != f) {
        stream_handle
            .update_consumer(config)
            .await
            .map_err(|e| anyhow::anyhow!("updating consumer {name} on {stream}: {e}"))?;
        consumer = stream_handle
            .get_consumer(name)
            .await
            .map_err(|e| anyhow::anyhow!("consumer {name} on {stream}: {e}"))?;
    }
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_list_of_nats_servers_is_parsed_and_a_bad_entry_is_named() {
        let servers = super::server_addrs("nats://127.0.0.1:4222, nats://10.0.0.2:4223").unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(super::server_addrs("nats://127.0.0.1:4222").unwrap().len(), 1);
        let e = super::server_addrs("nats://127.0.0.1:4222,,nats://b:1").unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = super::server_addrs("nats://127.0.0.1:4222,http://[::1").unwrap_err();
        assert!(e.contains("http://[::1"), "{e}");
    }
}
