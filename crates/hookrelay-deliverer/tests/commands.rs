//! Jobs and operators' commands: duplicate and poison jobs, retry, recover and replay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use async_nats::HeaderMap;
use common::*;
use hookrelay_testkit::{Receiver, TestEnv, eventually};
use hookrelay_types::{
    DeliveryId, EndpointId, TenantId,
    messages::{DeliveryCommand, DeliveryJob, RecoverEndpoint, ReplayEvent, RetryDelivery, delivery_command::Action},
    subjects,
};
use prost::Message as _;
use serde_json::json;

#[tokio::test]
async fn a_second_job_for_the_same_event_and_endpoint_is_dropped() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("ok/once"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;
    wait_for(&db, &sent.delivery_id, "delivered", 1).await;

    // The router routed the event again (another delivery id), and our own job came back;
    // neither is a first routing.
    let mut again = job(&sent, &ep);
    again.delivery_id = DeliveryId::generate().to_string();
    again.first_routing = false;
    publish_job(&js, &again, ":again").await;
    let mut ours = job(&sent, &ep);
    ours.first_routing = false;
    publish_job(&js, &ours, ":redelivered").await;

    let counted = eventually(WAIT, || async {
        let m = running.metrics().await;
        m.contains("hookrelay_deliverer_duplicate_jobs_total 1").then_some(())
    })
    .await;
    assert!(counted.is_some(), "{}", running.metrics().await);
    until("both jobs are acked", || async {
        let stream = js.get_stream(subjects::DELIVERIES_STREAM).await.ok()?;
        (stream.get_info().await.ok()?.state.messages == 0).then_some(())
    })
    .await;
    assert_eq!(receiver.received_id("ok/once", &sent.event_id).len(), 1);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries WHERE event_id = $1")
        .bind(&sent.event_id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(delivery(&db, &again.delivery_id).await.is_none());
    assert_eq!(attempts(&db, &sent.delivery_id).await.len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn poison_messages_do_not_stop_the_consumer() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("ok/after-poison"), json!({})).await;
    let subject = subjects::delivery(&TenantId::parse(TENANT).unwrap(), &EndpointId::parse(&ep).unwrap());

    // Not protobuf at all, then a well-formed job whose ids are nonsense.
    hookrelay_runtime::nats::publish(&js, subject.clone(), "poison-1", HeaderMap::new(), vec![0xff; 7].into())
        .await
        .unwrap()
        .await
        .unwrap();
    let bad = DeliveryJob {
        delivery_id: "not-an-id".into(),
        tenant_id: TENANT.into(),
        event_id: "evt_x".into(),
        event_type: "orders/created".into(),
        endpoint_id: ep.clone(),
        envelope: b"{}".to_vec(),
        accepted_at_ms: 1,
        first_routing: true,
    };
    hookrelay_runtime::nats::publish(&js, subject, "poison-2", HeaderMap::new(), bad.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // And a command without an action.
    let empty = DeliveryCommand {
        tenant_id: TENANT.into(),
        command_id: "c1".into(),
        action: None,
    };
    hookrelay_runtime::nats::publish(
        &js,
        subjects::deliverer_command(&TenantId::parse(TENANT).unwrap()),
        "poison-3",
        HeaderMap::new(),
        empty.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let sent = send_event(&db, &js, &ep).await;
    wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    assert_eq!(receiver.received_id("ok/after-poison", &sent.event_id).len(), 1);
    let counted = eventually(WAIT, || async {
        let m = running.metrics().await;
        m.contains("hookrelay_deliverer_poison_messages_total 3").then_some(())
    })
    .await;
    assert!(counted.is_some(), "{}", running.metrics().await);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM deliveries")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    running.stop().await;
}

#[tokio::test]
async fn manual_retry_and_recover_commands_requeue_failed_deliveries() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[("HOOKRELAY_RETRY_SCHEDULE", "100ms")]).await;
    let receiver = Receiver::start().await.unwrap();
    let (a_ep, _) = endpoint(&db, &receiver.url("fail/a"), json!({})).await;
    let (b_ep, _) = endpoint(&db, &receiver.url("fail/b"), json!({})).await;
    let one = send_event(&db, &js, &a_ep).await;
    let two = send_event(&db, &js, &b_ep).await;
    let three = send_event(&db, &js, &b_ep).await;
    for sent in [&one, &two, &three] {
        wait_for(&db, &sent.delivery_id, "failed", 2).await;
    }

    // The receivers are fixed (as an operator would, through query).
    for (ep, path) in [(&a_ep, "ok/a"), (&b_ep, "ok/b")] {
        sqlx::query("UPDATE endpoints SET url = $2 WHERE id = $1")
            .bind(ep)
            .bind(receiver.url(path))
            .execute(&db)
            .await
            .unwrap();
        changed(&js, ep).await;
    }
    publish_command(
        &js,
        Action::Retry(RetryDelivery {
            delivery_id: one.delivery_id.clone(),
        }),
    )
    .await;
    let row = wait_for(&db, &one.delivery_id, "delivered", 3).await;
    assert!(!row.manual_retry);
    let recorded = attempts(&db, &one.delivery_id).await;
    let triggers: Vec<_> = recorded.iter().map(|a| a.trigger.as_str()).collect();
    assert_eq!(triggers, ["scheduled", "scheduled", "manual"]);
    assert_eq!(recorded[2].request_headers["hookrelay-attempt"], "3");
    assert!(delivery(&db, &two.delivery_id).await.unwrap().status == "failed");

    let since_ms = (time::OffsetDateTime::now_utc().unix_timestamp() - 3600) * 1000;
    publish_command(
        &js,
        Action::Recover(RecoverEndpoint {
            endpoint_id: b_ep.clone(),
            since_ms,
        }),
    )
    .await;
    for sent in [&two, &three] {
        wait_for(&db, &sent.delivery_id, "delivered", 3).await;
        assert_eq!(attempts(&db, &sent.delivery_id).await[2].trigger, "manual");
        assert_eq!(receiver.received_id("ok/b", &sent.event_id).len(), 1);
    }
    // A recover from the future requeues nothing.
    let later = (time::OffsetDateTime::now_utc().unix_timestamp() + 3600) * 1000;
    let four = send_event(&db, &js, &a_ep).await;
    wait_for(&db, &four.delivery_id, "delivered", 1).await;
    sqlx::query("UPDATE endpoints SET url = $2 WHERE id = $1")
        .bind(&b_ep)
        .bind(receiver.url("fail/b"))
        .execute(&db)
        .await
        .unwrap();
    changed(&js, &b_ep).await;
    let five = send_event(&db, &js, &b_ep).await;
    wait_for(&db, &five.delivery_id, "failed", 2).await;
    publish_command(
        &js,
        Action::Recover(RecoverEndpoint {
            endpoint_id: b_ep.clone(),
            since_ms: later,
        }),
    )
    .await;
    commands_handled(&js).await;
    assert_eq!(delivery(&db, &five.delivery_id).await.unwrap().status, "failed");
    assert_eq!(attempts(&db, &five.delivery_id).await.len(), 2);
    running.stop().await;
}

#[tokio::test]
async fn a_retry_asked_for_during_an_attempt_is_not_lost() {
    let env = TestEnv::start().await.unwrap();
    let (running, db, js) = setup(&env, &[]).await;
    let receiver = Receiver::start().await.unwrap();
    let (ep, _) = endpoint(&db, &receiver.url("slow/1500/x"), json!({})).await;
    let sent = send_event(&db, &js, &ep).await;

    // The receiver logs a request as it arrives, then takes 1.5s to answer. An operator
    // asks for a retry of the delivery the log shows in flight (a slow first attempt's row
    // is stored within HOOKRELAY_PENDING_AFTER, 200 ms).
    receiver.wait_for("slow/1500/x", &sent.event_id, 1, WAIT).await;
    let shown = eventually(Duration::from_secs(1), || async {
        delivery(&db, &sent.delivery_id).await
    })
    .await;
    assert_eq!(
        shown.map(|d| (d.status, d.attempt_count)),
        Some(("pending".to_owned(), 0))
    );
    publish_command(
        &js,
        Action::Retry(RetryDelivery {
            delivery_id: sent.delivery_id.clone(),
        }),
    )
    .await;
    wait_for(&db, &sent.delivery_id, "delivered", 2).await;
    // Nothing is left to attempt: the retry was handled and its attempt recorded.
    commands_handled(&js).await;
    until("the manual attempt recorded", || async {
        let row = delivery(&db, &sent.delivery_id).await?;
        (row.status == "delivered" && !row.manual_retry && row.next_attempt_at.is_none()).then_some(())
    })
    .await;
    let recorded = attempts(&db, &sent.delivery_id).await;
    let mut seen: Vec<_> = recorded.iter().map(|a| (a.trigger.as_str(), a.response_code)).collect();
    seen.sort();
    assert_eq!(
        seen,
        [("manual", Some(200)), ("scheduled", Some(200))],
        "exactly one more attempt"
    );
    let numbers: Vec<_> = recorded.iter().map(|a| a.attempt).collect();
    assert_eq!(numbers, [1, 2]);
    let row = delivery(&db, &sent.delivery_id).await.unwrap();
    assert_eq!(
        (row.status.as_str(), row.attempt_count, row.manual_retry),
        ("delivered", 2, false)
    );
    assert_eq!(receiver.received_id("slow/1500/x", &sent.event_id).len(), 2);
    running.stop().await;
}

/// The delivery of `event_id` to `endpoint_id`, if there is one.
async fn delivery_of(db: &sqlx::PgPool, event_id: &str, endpoint_id: &str) -> Option<String> {
    sqlx::query_scalar("SELECT id FROM deliveries WHERE event_id = $1 AND endpoint_id = $2")
        .bind(event_id)
        .bind(endpoint_id)
        .fetch_optional(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_replay_command_handled_twice_sends_once_and_a_malformed_one_is_poison() {
    let env = TestEnv::start().await.unwrap();
    // A slow scheduler: both copies of the command are handled before it next claims.
    let extra = [("HOOKRELAY_SCHEDULER_INTERVAL", "1500ms")];
    let (running, db, js) = setup(&env, &extra).await;
    let receiver = Receiver::start().await.unwrap();
    let (old_ep, _) = endpoint(&db, &receiver.url("ok/old"), json!({})).await;
    let (new_ep, _) = endpoint(&db, &receiver.url("ok/new"), json!({})).await;
    let sent = send_event(&db, &js, &old_ep).await;
    wait_for(&db, &sent.delivery_id, "delivered", 1).await;
    running.stop().await;

    // The same replay twice (as after a lost ack), one of an event never stored, one malformed.
    let replay = |event_id: &str, endpoints: &[&str]| {
        Action::Replay(ReplayEvent {
            event_id: event_id.to_owned(),
            endpoint_ids: endpoints.iter().map(|e| (*e).to_owned()).collect(),
        })
    };
    publish_command(&js, replay(&sent.event_id, &[&old_ep, &new_ep])).await;
    publish_command(&js, replay(&sent.event_id, &[&old_ep, &new_ep])).await;
    publish_command(&js, replay("evt_never_stored", &[&old_ep])).await;
    publish_command(&js, replay(&sent.event_id, &["not an endpoint id"])).await;
    let running = start(&env, &extra).await;

    let row = wait_for(&db, &sent.delivery_id, "delivered", 2).await;
    assert!(!row.manual_retry);
    let triggers: Vec<_> = attempts(&db, &sent.delivery_id)
        .await
        .into_iter()
        .map(|a| a.trigger)
        .collect();
    assert_eq!(triggers, ["scheduled", "manual"]);
    let new_id = eventually(WAIT, || delivery_of(&db, &sent.event_id, &new_ep)).await;
    let new_id = new_id.expect("the replay created a delivery for the other endpoint");
    assert_ne!(new_id, sent.delivery_id);
    wait_for(&db, &new_id, "delivered", 1).await;
    assert_eq!(attempts(&db, &new_id).await[0].trigger, "manual");
    assert_eq!(
        attempts(&db, &new_id).await[0].request_headers["webhook-id"],
        sent.event_id.as_str()
    );

    // Every command is handled and neither delivery waits for another attempt: nothing
    // more can be sent.
    commands_handled(&js).await;
    for id in [&sent.delivery_id, &new_id] {
        let row = delivery(&db, id).await.unwrap();
        assert_eq!((row.status.as_str(), row.manual_retry), ("delivered", false), "{id}");
    }
    assert_eq!(
        receiver.received_id("ok/old", &sent.event_id).len(),
        2,
        "first delivery and one replay"
    );
    assert_eq!(receiver.received_id("ok/new", &sent.event_id).len(), 1, "one replay");
    assert_eq!(receiver.received("ok/new").len(), 1, "nothing else reached it");
    assert!(delivery_of(&db, "evt_never_stored", &old_ep).await.is_none());
    until("the malformed replay was not counted as poison", || async {
        running
            .metrics()
            .await
            .contains("hookrelay_deliverer_poison_messages_total 1")
            .then_some(())
    })
    .await;
    running.stop().await;
}
