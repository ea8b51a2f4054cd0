//! The consumer loop every service runs, over a real NATS server: a message it holds longer
//! than its consumer's ack wait, waiting for a permit or in a slow handler, stays its own
//! and is not handed to anyone else meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_nats::jetstream::{self, consumer::pull};
use hookrelay_runtime::{
    Readiness,
    nats::{ConsumerSpec, Handed, Source, consume},
};
use hookrelay_testkit::{TestEnv, wait_until};
use tokio_util::sync::CancellationToken;

const SPEC: ConsumerSpec = ConsumerSpec {
    stream: "HELD",
    name: "held",
    filter: None,
};

#[tokio::test]
async fn messages_held_past_the_ack_wait_are_not_redelivered() {
    let env = TestEnv::start().await.unwrap();
    let nats = env.nats().await.unwrap();
    let js = jetstream::new(nats.clone());
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: SPEC.stream.into(),
            subjects: vec!["held.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let ack_wait = Duration::from_secs(2);
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(SPEC.name.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..3 {
        js.publish(format!("held.{i}"), "work".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // One at a time, each for 1.5 ack waits: the second waits that long for the permit, the
    // third twice as long. The handler's sleep is the slow work under test.
    let handled: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let source = Source {
        js: js.clone(),
        spec: SPEC,
        replicas: 1,
        ready: Readiness::new(nats, env.db().await.unwrap()),
        positions: None,
    };
    let stop = CancellationToken::new();
    let seen = handled.clone();
    let hold = ack_wait * 3 / 2;
    let task = tokio::spawn(consume(
        source,
        consumer,
        1,
        Duration::from_secs(5),
        stop.clone(),
        move |h: Handed| {
            let seen = seen.clone();
            async move {
                let delivered = h.msg.info().map(|i| i.delivered).unwrap_or(0);
                seen.lock().unwrap().push((h.msg.subject.to_string(), delivered));
                tokio::time::sleep(hold).await;
                h.msg.ack().await.unwrap();
            }
        },
    ));

    let info = wait_until(
        "all three messages acknowledged",
        async || {
            let mut consumer = stream.get_consumer::<pull::Config>(SPEC.name).await.ok()?;
            Some(consumer.info().await.ok()?.clone())
        },
        |info| info.as_ref().is_some_and(|i| i.ack_floor.stream_sequence == 3),
    )
    .await
    .unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(info.num_redelivered, 0, "{info:?}");
    assert_eq!(
        *handled.lock().unwrap(),
        vec![
            ("held.0".to_owned(), 1),
            ("held.1".to_owned(), 1),
            ("held.2".to_owned(), 1)
        ],
        "each message handled once, on its first delivery"
    );
}
