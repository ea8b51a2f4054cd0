//! The NATS connection and hookrelay's JetStream streams, created idempotently at start.
//!
//! | stream | subjects | retention | read by |
//! | --- | --- | --- | --- |
//! | `HOOKRELAY_INGEST` | `hookrelay.ingest.>` | work queue | ingest |
//! | `HOOKRELAY_EVENTS` | `hookrelay.events.>` | limits, 3 days | router |
//! | `HOOKRELAY_DELIVERIES` | `hookrelay.deliveries.>` | work queue | deliverer |
//! | `HOOKRELAY_COMMANDS` | `hookrelay.commands.>` | work queue | deliverer |
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

pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name("hookrelay")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}

fn stream_config(name: &str, subject: &str, retention: RetentionPolicy, max_age: Duration) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        retention,
        storage: StorageType::File,
        max_age,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

pub async fn ensure_streams(js: &jetstream::Context) -> Result<(), anyhow::Error> {
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
            subjects::DEAD_STREAM,
            subjects::DEAD_SUBJECTS,
            RetentionPolicy::Limits,
            14 * day,
        ),
    ];
    for config in streams {
        let name = config.name.clone();
        js.get_or_create_stream(config)
            .await
            .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
    }
    Ok(())
}

/// Publishes with `Nats-Msg-Id` (JetStream drops a repeat within the duplicate window) and
/// returns the ack future: await it before acknowledging whatever caused the publish.
pub async fn publish(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    mut headers: HeaderMap,
    payload: Bytes,
) -> Result<PublishAckFuture, jetstream::context::PublishError> {
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
    js.publish_with_headers(subject, headers, payload).await
}
