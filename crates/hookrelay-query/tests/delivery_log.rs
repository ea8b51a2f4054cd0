//! The delivery log, event inspection, stats and operator commands, over fixture rows that
//! play ingest and the deliverer, against real NATS and Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{ADMIN, App, Dlv, app, assert_error, ids};
use hookrelay_types::messages::delivery_command::Action;
use serde_json::{Value, json};

/// Acme with a full key and two endpoints, globex with one.
struct Fixture {
    app: App,
    key: String,
    ep1: String,
    ep2: String,
    globex_key: String,
    globex_ep: String,
}

async fn fixture() -> Fixture {
    let app = app().await;
    let key = app.full_key("acme").await;
    let globex_key = app.full_key("globex").await;
    let ep1 = app.simple_endpoint(&key).await;
    let ep2 = app.simple_endpoint(&key).await;
    let globex_ep = app.simple_endpoint(&globex_key).await;
    Fixture {
        app,
        key,
        ep1,
        ep2,
        globex_key,
        globex_ep,
    }
}

fn sorted_desc(mut v: Vec<String>) -> Vec<String> {
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

#[tokio::test]
async fn the_delivery_log_filters_by_each_parameter() {
    let f = fixture().await;
    let app = &f.app;
    let a = app.delivery(Dlv::new("acme", "evt_a", &f.ep1, "delivered")).await;
    let b = app
        .delivery(Dlv {
            event_type: "returns/updated",
            ..Dlv::new("acme", "evt_b", &f.ep1, "failed")
        })
        .await;
    let c = app.delivery(Dlv::new("acme", "evt_a", &f.ep2, "retrying")).await;
    let old = app
        .delivery(Dlv {
            age_secs: 3 * 86_400,
            ..Dlv::new("acme", "evt_old", &f.ep2, "pending")
        })
        .await;
    app.delivery(Dlv::new("globex", "evt_a", &f.globex_ep, "delivered"))
        .await;

    let get = |q: String| {
        let key = f.key.clone();
        async move { app.api.get(&format!("/v1/deliveries{q}"), &key).await }
    };
    let all = get(String::new()).await;
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(
        ids(&all),
        sorted_desc(vec![a.clone(), b.clone(), c.clone(), old.clone()])
    );
    assert_eq!(all.body["next_cursor"], Value::Null);
    let row = &all.body["data"][0];
    for field in [
        "id",
        "event_id",
        "event_type",
        "endpoint_id",
        "status",
        "attempt_count",
        "last_response_code",
        "last_duration_ms",
        "next_attempt_at",
        "created_at",
        "updated_at",
    ] {
        assert!(row.get(field).is_some(), "{field} missing in {row}");
    }
    assert!(row.get("tenant_id").is_none());

    assert_eq!(
        ids(&get(format!("?endpoint_id={}", f.ep1)).await),
        sorted_desc(vec![a.clone(), b.clone()])
    );
    assert_eq!(ids(&get("?event_type=returns/updated".into()).await), [b.as_str()]);
    assert_eq!(ids(&get("?event_type=returns%2Fupdated".into()).await), [b.as_str()]);
    assert_eq!(
        ids(&get("?event_id=evt_a".into()).await),
        sorted_desc(vec![a.clone(), c.clone()])
    );
    assert_eq!(ids(&get("?status=retrying".into()).await), [c.as_str()]);
    assert_eq!(ids(&get("?status=failed".into()).await), [b.as_str()]);
    let day_ago = (time::OffsetDateTime::now_utc() - time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let since = get(format!("?since={}", day_ago.replace('+', "%2B"))).await;
    assert_eq!(ids(&since), sorted_desc(vec![a.clone(), b.clone(), c.clone()]));
    assert_eq!(ids(&get(format!("?until={day_ago}")).await), [old.as_str()]);
    let combined = get(format!("?endpoint_id={}&status=delivered&event_id=evt_a", f.ep1)).await;
    assert_eq!(ids(&combined), [a.as_str()]);

    let admin = app.api.get("/v1/deliveries?tenant_id=globex", ADMIN).await;
    assert_eq!(ids(&admin).len(), 1);
    assert_error(&app.api.get("/v1/deliveries", ADMIN).await, 400, "tenant_required");
}

#[tokio::test]
async fn bad_log_parameters_are_400_with_the_error_body() {
    let f = fixture().await;
    for (q, code) in [
        ("status=done", "invalid_status"),
        ("status_class=3xx", "invalid_status_class"),
        ("status_class=5XX", "invalid_status_class"),
        ("status_class=500", "invalid_status_class"),
        ("since=yesterday", "invalid_since"),
        ("until=2024-02-30T00:00:00Z", "invalid_until"),
        ("cursor=ep_01hzzzzzzzzzzzzzzzzzzzzzzz", "invalid_cursor"),
        ("limit=0", "invalid_limit"),
        ("limit=5000", "invalid_limit"),
        ("endpoint_id=nope", "invalid_endpoint_id"),
        ("event_id=has%20space", "invalid_event_id"),
        ("event_type=Orders", "invalid_event_type"),
    ] {
        assert_error(&f.app.api.get(&format!("/v1/deliveries?{q}"), &f.key).await, 400, code);
    }
    let bad_window = f
        .app
        .api
        .get(&format!("/v1/endpoints/{}/stats?window=31d", f.ep1), &f.key)
        .await;
    assert_error(&bad_window, 400, "invalid_window");
    let bad_window = f
        .app
        .api
        .get(&format!("/v1/endpoints/{}/stats?window=soon", f.ep1), &f.key)
        .await;
    assert_error(&bad_window, 400, "invalid_window");
}

#[tokio::test]
async fn delivery_pages_are_stable_when_rows_arrive() {
    let f = fixture().await;
    let app = &f.app;
    let mut made = Vec::new();
    for i in 0..7 {
        let event = format!("evt_{i}");
        made.push(app.delivery(Dlv::new("acme", &event, &f.ep1, "delivered")).await);
    }
    let made = sorted_desc(made);
    let first = app.api.get("/v1/deliveries?limit=3", &f.key).await;
    assert_eq!(ids(&first), made[..3]);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(cursor, made[2]);

    // A delivery created after page 1 must neither appear on page 2 nor shift it.
    let newer = app.delivery(Dlv::new("acme", "evt_new", &f.ep1, "pending")).await;
    let second = app
        .api
        .get(&format!("/v1/deliveries?limit=3&cursor={cursor}"), &f.key)
        .await;
    assert_eq!(ids(&second), made[3..6]);
    let cursor = second.body["next_cursor"].as_str().unwrap().to_owned();
    let third = app
        .api
        .get(&format!("/v1/deliveries?limit=3&cursor={cursor}"), &f.key)
        .await;
    assert_eq!(ids(&third), made[6..]);
    assert_eq!(third.body["next_cursor"], Value::Null);
    let fresh = app.api.get("/v1/deliveries?limit=1", &f.key).await;
    assert_eq!(ids(&fresh), [newer]);
}

fn rfc3339_ago(secs: i64) -> String {
    (time::OffsetDateTime::now_utc() - time::Duration::seconds(secs))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn the_delivery_log_filters_by_the_class_of_the_last_response() {
    let f = fixture().await;
    let app = &f.app;
    let ok = app.delivery(Dlv::new("acme", "evt_ok", &f.ep1, "delivered")).await;
    let no_content = app
        .delivery(Dlv {
            code: Some(204),
            ..Dlv::new("acme", "evt_ok", &f.ep2, "delivered")
        })
        .await;
    let gone = app
        .delivery(Dlv {
            code: Some(404),
            ..Dlv::new("acme", "evt_gone", &f.ep1, "failed")
        })
        .await;
    let throttled = app
        .delivery(Dlv {
            code: Some(429),
            ..Dlv::new("acme", "evt_slow", &f.ep2, "retrying")
        })
        .await;
    let broken = app.delivery(Dlv::new("acme", "evt_broken", &f.ep1, "retrying")).await;
    let refused = app
        .delivery(Dlv {
            code: None,
            ..Dlv::new("acme", "evt_refused", &f.ep1, "failed")
        })
        .await;
    let waiting = app
        .delivery(Dlv {
            attempts: 0,
            code: None,
            ..Dlv::new("acme", "evt_new", &f.ep2, "pending")
        })
        .await;
    // A redirect is a failure of no listed class: it shows only unfiltered.
    let moved = app
        .delivery(Dlv {
            code: Some(301),
            ..Dlv::new("acme", "evt_moved", &f.ep2, "failed")
        })
        .await;
    app.delivery(Dlv {
        code: Some(404),
        ..Dlv::new("globex", "evt_gone", &f.globex_ep, "failed")
    })
    .await;

    let key = f.key.as_str();
    let get = |q: &str| {
        let path = format!("/v1/deliveries?{q}");
        async move { app.api.get(&path, key).await }
    };
    assert_eq!(
        ids(&get("status_class=2xx").await),
        sorted_desc(vec![ok.clone(), no_content])
    );
    assert_eq!(
        ids(&get("status_class=4xx").await),
        sorted_desc(vec![gone.clone(), throttled.clone()])
    );
    assert_eq!(ids(&get("status_class=5xx").await), [broken.as_str()]);
    assert_eq!(
        ids(&get("status_class=none").await),
        sorted_desc(vec![refused.clone(), waiting.clone()])
    );
    assert_eq!(ids(&get("").await).len(), 8);
    assert!(ids(&get("").await).contains(&moved));

    // With the other filters.
    let q = format!("status_class=4xx&endpoint_id={}", f.ep1);
    assert_eq!(ids(&get(&q).await), [gone.as_str()]);
    assert_eq!(ids(&get("status_class=none&status=pending").await), [waiting.as_str()]);
    assert_eq!(
        ids(&get("status_class=4xx&status=retrying").await),
        [throttled.as_str()]
    );
    assert_eq!(
        ids(&get("status_class=2xx&event_id=evt_gone").await),
        Vec::<String>::new()
    );
    let q = format!(
        "status_class=none&event_type=orders/created&since={}",
        rfc3339_ago(3_600)
    );
    assert_eq!(ids(&get(&q).await), sorted_desc(vec![refused, waiting]));
    // An empty value is no filter, as for the contract's filters.
    assert_eq!(ids(&get("status_class=").await).len(), 8);

    // Pages of a class walk by cursor like the whole log.
    let first = get("status_class=4xx&limit=1").await;
    assert_eq!(ids(&first), [throttled.max(gone.clone())]);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let second = get(&format!("status_class=4xx&limit=1&cursor={cursor}")).await;
    assert_eq!(second.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(second.body["next_cursor"], Value::Null);
}

#[tokio::test]
async fn since_and_until_select_a_window_and_pages_walk_through_it() {
    let f = fixture().await;
    let app = &f.app;
    let day = 86_400;
    let mut by_age = Vec::new();
    for (i, age) in [20 * day, 9 * day, 8 * day, 7 * day, 6 * day, 5 * day, day, 60]
        .into_iter()
        .enumerate()
    {
        let event = format!("evt_w{i}");
        let id = app
            .delivery(Dlv {
                age_secs: age,
                ..Dlv::new("acme", &event, &f.ep1, "delivered")
            })
            .await;
        by_age.push((age, id));
    }
    let inside: Vec<String> = by_age
        .iter()
        .filter(|(age, _)| *age < 10 * day && *age > 2 * day)
        .map(|(_, id)| id.clone())
        .collect();
    let inside = sorted_desc(inside);
    assert_eq!(inside.len(), 5);

    let window = format!("since={}&until={}", rfc3339_ago(10 * day), rfc3339_ago(2 * day));
    let mut walked = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .api
            .get(&format!("/v1/deliveries?{window}&limit=2&cursor={cursor}"), &f.key)
            .await;
        assert_eq!(page.status, 200, "{page:?}");
        walked.extend(ids(&page));
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(walked, inside);

    // Until alone reaches the oldest; since alone the newest.
    let until = app
        .api
        .get(&format!("/v1/deliveries?until={}", rfc3339_ago(15 * day)), &f.key)
        .await;
    assert_eq!(ids(&until), [by_age[0].1.as_str()]);
    let since = app
        .api
        .get(&format!("/v1/deliveries?since={}", rfc3339_ago(2 * day)), &f.key)
        .await;
    assert_eq!(ids(&since), sorted_desc(vec![by_age[6].1.clone(), by_age[7].1.clone()]));
    // An empty window is empty; one that ends before it starts is a mistake.
    let empty = format!("since={}&until={}", rfc3339_ago(4 * day), rfc3339_ago(3 * day));
    assert_eq!(
        ids(&app.api.get(&format!("/v1/deliveries?{empty}"), &f.key).await),
        Vec::<String>::new()
    );
    let backwards = format!("since={}&until={}", rfc3339_ago(day), rfc3339_ago(9 * day));
    assert_error(
        &app.api.get(&format!("/v1/deliveries?{backwards}"), &f.key).await,
        422,
        "invalid_window",
    );
}

#[tokio::test]
async fn a_delivery_stored_long_after_it_was_routed_is_listed_where_its_id_puts_it() {
    let f = fixture().await;
    let app = &f.app;
    let recent = app.delivery(Dlv::new("acme", "evt_recent", &f.ep1, "delivered")).await;
    // Routed two hours ago, stored only now (its job waited out a deliverer outage).
    let late = app
        .delivery(Dlv {
            age_secs: 2 * 3_600,
            ..Dlv::new("acme", "evt_late", &f.ep1, "pending")
        })
        .await;
    sqlx::query("UPDATE deliveries SET created_at = now() WHERE id = $1")
        .bind(&late)
        .execute(&app.db)
        .await
        .unwrap();
    let get = |q: String| {
        let key = f.key.clone();
        async move { app.api.get(&format!("/v1/deliveries?{q}"), &key).await }
    };
    assert_eq!(ids(&get(String::new()).await), [recent.clone(), late.clone()]);
    // A window from half an hour ago starts after its id: not in it (docs/delivery-log.md).
    assert_eq!(
        ids(&get(format!("since={}", rfc3339_ago(1_800))).await),
        [recent.as_str()]
    );
    // A window from before it was routed finds it.
    assert_eq!(
        ids(&get(format!("since={}", rfc3339_ago(3 * 3_600))).await),
        [recent, late.clone()]
    );
    assert_eq!(
        ids(&get(format!("until={}", rfc3339_ago(1_800))).await),
        Vec::<String>::new()
    );
    assert_eq!(ids(&get("status=pending".into()).await), [late]);
}

#[tokio::test]
async fn filtered_pages_continue_where_they_ended_while_matching_rows_arrive() {
    let f = fixture().await;
    let app = &f.app;
    let mut failed = Vec::new();
    for i in 0..12 {
        let event = format!("evt_f{i}");
        let status = if i % 3 == 0 { "failed" } else { "delivered" };
        let id = app.delivery(Dlv::new("acme", &event, &f.ep1, status)).await;
        if status == "failed" {
            failed.push(id);
        }
    }
    let failed = sorted_desc(failed);
    let q = format!("status=failed&endpoint_id={}&limit=1", f.ep1);
    let mut walked = Vec::new();
    let mut cursor = String::new();
    for round in 0.. {
        let page = app
            .api
            .get(&format!("/v1/deliveries?{q}&cursor={cursor}"), &f.key)
            .await;
        walked.extend(ids(&page));
        // Newer matching rows keep arriving between pages: none shows up behind the cursor.
        let event = format!("evt_late{round}");
        app.delivery(Dlv::new("acme", &event, &f.ep1, "failed")).await;
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(walked, failed, "every match once, newest first, no gaps");
    let fresh = app.api.get(&format!("/v1/deliveries?{q}"), &f.key).await;
    assert!(
        !failed.contains(&ids(&fresh)[0]),
        "the newest page starts with a late row"
    );
}

#[tokio::test]
async fn a_delivery_shows_its_payload_and_every_attempt() {
    let f = fixture().await;
    let app = &f.app;
    let body = app.event("acme", "evt_detail", "orders/created").await;
    let id = app
        .delivery(Dlv {
            attempts: 2,
            ..Dlv::new("acme", "evt_detail", &f.ep1, "delivered")
        })
        .await;
    app.attempt(&id, 2, Some(200), 80, 10).await;
    app.attempt(&id, 1, None, 15_000, 20).await;

    let r = app.api.get(&format!("/v1/deliveries/{id}"), &f.key).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["id"], id.as_str());
    assert_eq!(r.body["status"], "delivered");
    assert_eq!(
        r.body["payload"].to_string(),
        body,
        "the envelope must keep its bytes' key order"
    );
    let attempts = r.body["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["error"], "connection refused");
    assert_eq!(attempts[0]["response_code"], Value::Null);
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["response_code"], 200);
    assert_eq!(attempts[1]["error"], Value::Null);
    assert_eq!(attempts[1]["duration_ms"], 80);
    assert_eq!(attempts[1]["trigger"], "scheduled");
    assert_eq!(attempts[1]["request_headers"]["webhook-signature"], "v1,abc");
    assert!(attempts[1]["started_at"].as_str().unwrap().contains('T'));
}

#[tokio::test]
async fn unknown_or_malformed_delivery_ids_are_404() {
    let f = fixture().await;
    for id in [
        "dlv_01hzzzzzzzzzzzzzzzzzzzzzzz",
        "not-a-delivery",
        "ep_01hzzzzzzzzzzzzzzzzzzzzzzz",
    ] {
        assert_error(
            &f.app.api.get(&format!("/v1/deliveries/{id}"), &f.key).await,
            404,
            "not_found",
        );
        let r = f
            .app
            .api
            .post(&format!("/v1/deliveries/{id}/retry"), &f.key, json!({}))
            .await;
        assert_error(&r, 404, "not_found");
    }
    assert_error(&f.app.api.get("/v1/events/evt_missing", &f.key).await, 404, "not_found");
    assert_error(&f.app.api.get("/v1/events/bad%20id", &f.key).await, 404, "not_found");
    assert!(f.app.commands().await.is_empty());
}

#[tokio::test]
async fn an_event_shows_its_envelope_and_deliveries() {
    let f = fixture().await;
    let app = &f.app;
    app.event("acme", "ord:1.2_3-x", "orders/created").await;
    let d1 = app.delivery(Dlv::new("acme", "ord:1.2_3-x", &f.ep1, "delivered")).await;
    let d2 = app.delivery(Dlv::new("acme", "ord:1.2_3-x", &f.ep2, "failed")).await;
    app.delivery(Dlv::new("acme", "evt_other", &f.ep2, "failed")).await;

    let r = app.api.get("/v1/events/ord:1.2_3-x", &f.key).await;
    assert_eq!(r.status, 200, "{r:?}");
    let keys: Vec<&String> = r.body.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "event",
            "event_id",
            "timestamp",
            "data",
            "schema_version",
            "schema_violation",
            "deliveries"
        ]
    );
    assert_eq!(r.body["event"], "orders/created");
    assert_eq!(r.body["event_id"], "ord:1.2_3-x");
    assert_eq!(r.body["timestamp"], "2024-03-15T14:30:00Z");
    let data_keys: Vec<&String> = r.body["data"].as_object().unwrap().keys().collect();
    assert_eq!(data_keys, ["zeta", "alpha", "merchant"]);
    let deliveries: Vec<String> = r.body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deliveries, sorted_desc(vec![d1, d2]));
    assert_eq!(r.body["deliveries"][0]["event_id"], "ord:1.2_3-x");

    let admin = app.api.get("/v1/events/ord:1.2_3-x?tenant_id=acme", ADMIN).await;
    assert_eq!(admin.status, 200);
}

#[tokio::test]
async fn another_tenants_delivery_and_event_are_404() {
    let f = fixture().await;
    let app = &f.app;
    app.event("globex", "evt_secret", "orders/created").await;
    let theirs = app
        .delivery(Dlv::new("globex", "evt_secret", &f.globex_ep, "failed"))
        .await;
    let mine = app.delivery(Dlv::new("acme", "evt_mine", &f.ep1, "failed")).await;

    assert_error(
        &app.api.get(&format!("/v1/deliveries/{theirs}"), &f.key).await,
        404,
        "not_found",
    );
    let retry = app
        .api
        .post(&format!("/v1/deliveries/{theirs}/retry"), &f.key, json!({}))
        .await;
    assert_error(&retry, 404, "not_found");
    assert_error(&app.api.get("/v1/events/evt_secret", &f.key).await, 404, "not_found");
    assert_error(
        &app.api.get("/v1/events/evt_secret?tenant_id=globex", &f.key).await,
        404,
        "not_found",
    );
    assert_eq!(ids(&app.api.get("/v1/deliveries", &f.key).await), [mine]);
    let filtered = app
        .api
        .get(&format!("/v1/deliveries?endpoint_id={}", f.globex_ep), &f.key)
        .await;
    assert_eq!(ids(&filtered), Vec::<String>::new());
    assert_error(
        &app.api.get("/v1/deliveries?tenant_id=globex", &f.key).await,
        404,
        "not_found",
    );
    assert_eq!(
        app.api
            .get(&format!("/v1/deliveries/{theirs}"), &f.globex_key)
            .await
            .status,
        200
    );
    assert!(app.commands().await.is_empty());
}

#[tokio::test]
async fn stats_count_the_window_and_report_health() {
    let f = fixture().await;
    let app = &f.app;
    // ep1: 3 delivered, 1 failed, 1 retrying, 1 pending in the last day; one old delivered.
    let mut delivered = Vec::new();
    for (i, ms) in [100, 200, 300].into_iter().enumerate() {
        let event = format!("evt_ok{i}");
        let d = app.delivery(Dlv::new("acme", &event, &f.ep1, "delivered")).await;
        app.attempt(&d, 1, Some(200), ms, 100 - i as i64).await;
        delivered.push(d);
    }
    let failed = app
        .delivery(Dlv {
            age_secs: 200,
            ..Dlv::new("acme", "evt_fail", &f.ep1, "failed")
        })
        .await;
    app.attempt(&failed, 1, Some(500), 5_000, 300).await;
    app.delivery(Dlv::new("acme", "evt_r", &f.ep1, "retrying")).await;
    app.delivery(Dlv::new("acme", "evt_p", &f.ep1, "pending")).await;
    let old = app
        .delivery(Dlv {
            age_secs: 2 * 86_400,
            ..Dlv::new("acme", "evt_old", &f.ep1, "delivered")
        })
        .await;
    app.attempt(&old, 1, Some(200), 9_000, 2 * 86_400).await;

    let r = app.api.get(&format!("/v1/endpoints/{}/stats", f.ep1), &f.key).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["window"], "24h");
    assert_eq!(
        (r.body["delivered"].as_i64(), r.body["failed"].as_i64()),
        (Some(3), Some(1))
    );
    assert_eq!(r.body["pending"], 2);
    assert_eq!(r.body["delivery_rate"], 0.75);
    // Read off the rollup's histogram: each within 10 % of the one duration it stands for.
    let near = |v: &Value, ms: i64| v.as_i64().is_some_and(|v| (v - ms).abs() * 10 <= ms);
    let l = &r.body["latency_ms"];
    assert!(
        near(&l["p50"], 200) && near(&l["p95"], 300) && near(&l["p99"], 300),
        "{l}"
    );
    // One failure among the last attempts; the most recently finished delivery succeeded.
    assert_eq!(r.body["health"], "degraded");

    let wide = app
        .api
        .get(&format!("/v1/endpoints/{}/stats?window=7d", f.ep1), &f.key)
        .await;
    assert_eq!(
        (wide.body["window"].as_str(), wide.body["delivered"].as_i64()),
        (Some("7d"), Some(4))
    );
    assert!(near(&wide.body["latency_ms"]["p99"], 9_000), "{}", wide.body);

    // ep2 has nothing: healthy with nulls.
    let empty = app
        .api
        .get(&format!("/v1/endpoints/{}/stats?window=1h", f.ep2), &f.key)
        .await;
    assert_eq!(
        empty.body,
        json!({"window": "1h", "delivered": 0, "failed": 0, "pending": 0, "delivery_rate": null,
               "latency_ms": {"p50": null, "p95": null, "p99": null}, "health": "healthy",
               "concurrency": {"limit": null, "in_flight": 0, "max_in_flight": null}})
    );

    // Five failed attempts in a row make ep2 failing.
    let d = app.delivery(Dlv::new("acme", "evt_bad", &f.ep2, "retrying")).await;
    for n in 1..=5 {
        app.attempt(&d, n, Some(503), 50, 60 - i64::from(n)).await;
    }
    let failing = app.api.get(&format!("/v1/endpoints/{}/stats", f.ep2), &f.key).await;
    assert_eq!(failing.body["health"], "failing");
    assert_eq!(failing.body["delivery_rate"], Value::Null);

    // A healthy record whose last finished delivery exhausted its retries is failing too.
    let globex_ok = app
        .delivery(Dlv::new("globex", "evt_g1", &f.globex_ep, "delivered"))
        .await;
    app.attempt(&globex_ok, 1, Some(200), 10, 30).await;
    let healthy = app
        .api
        .get(&format!("/v1/endpoints/{}/stats", f.globex_ep), &f.globex_key)
        .await;
    assert_eq!(healthy.body["health"], "healthy");
    app.delivery(Dlv {
        age_secs: 5,
        attempts: 0,
        code: None,
        ..Dlv::new("globex", "evt_g2", &f.globex_ep, "failed")
    })
    .await;
    let exhausted = app
        .api
        .get(&format!("/v1/endpoints/{}/stats", f.globex_ep), &f.globex_key)
        .await;
    assert_eq!(exhausted.body["health"], "failing");

    // Disabled wins over everything.
    let r = app
        .api
        .patch(&format!("/v1/endpoints/{}", f.ep2), &f.key, json!({"enabled": false}))
        .await;
    assert_eq!(r.status, 200);
    let disabled = app.api.get(&format!("/v1/endpoints/{}/stats", f.ep2), &f.key).await;
    assert_eq!(disabled.body["health"], "disabled");
}

#[tokio::test]
async fn pipeline_stats_count_the_tenants_window_by_stage() {
    let f = fixture().await;
    let app = &f.app;
    for e in ["evt_a", "evt_b", "evt_c"] {
        app.event("acme", e, "orders/created").await;
    }
    app.event("globex", "evt_g", "orders/created").await;
    sqlx::query("UPDATE events SET received_at = now() - interval '2 hours' WHERE event_id = 'evt_c'")
        .execute(&app.db)
        .await
        .unwrap();
    for (event, ep, status) in [
        ("evt_a", &f.ep1, "delivered"),
        ("evt_a", &f.ep2, "failed"),
        ("evt_b", &f.ep1, "retrying"),
        ("evt_b", &f.ep2, "pending"),
    ] {
        let d = app.delivery(Dlv::new("acme", event, ep, status)).await;
        // The attempts that finished the first two (the rollup counts them).
        match status {
            "delivered" => app.attempt(&d, 1, Some(200), 40, 10).await,
            "failed" => app.attempt(&d, 1, Some(500), 900, 10).await,
            _ => {}
        }
    }
    app.delivery(Dlv {
        age_secs: 2 * 3_600,
        ..Dlv::new("acme", "evt_c", &f.ep1, "delivered")
    })
    .await;
    app.delivery(Dlv::new("globex", "evt_g", &f.globex_ep, "delivered"))
        .await;

    let r = app.api.get("/v1/stats", &f.key).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.body,
        json!({"window": "1h", "ingested": 2, "routed": 4, "delivered": 1, "retrying": 1,
               "failed": 1, "pending": 1,
               "finished": {"delivered": 1, "failed": 1, "delivery_rate": 0.5,
                            "latency_ms": {"p50": 40, "p95": 40, "p99": 40}}})
    );
    let day = app.api.get("/v1/stats?window=24h", &f.key).await;
    assert_eq!(
        (day.body["ingested"].as_i64(), day.body["routed"].as_i64()),
        (Some(3), Some(5))
    );
    let admin = app.api.get("/v1/stats?tenant_id=globex", ADMIN).await;
    assert_eq!(
        (admin.body["ingested"].as_i64(), admin.body["delivered"].as_i64()),
        (Some(1), Some(1))
    );

    assert_error(
        &app.api.get("/v1/stats?window=31d", &f.key).await,
        400,
        "invalid_window",
    );
    assert_error(&app.api.get("/v1/stats", ADMIN).await, 400, "tenant_required");
    let no_scope = app.key("acme", &["endpoints:read"]).await;
    assert_error(&app.api.get("/v1/stats", &no_scope).await, 403, "forbidden");
}

#[tokio::test]
async fn retry_publishes_a_command_for_the_deliverer() {
    let f = fixture().await;
    let app = &f.app;
    let id = app.delivery(Dlv::new("acme", "evt_retry", &f.ep1, "failed")).await;
    let r = app
        .api
        .post(&format!("/v1/deliveries/{id}/retry"), &f.key, json!({}))
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body, json!({"id": id, "status": "queued"}));
    // The admin may retry any tenant's delivery; the command names the delivery's tenant.
    let theirs = app.delivery(Dlv::new("globex", "evt_g", &f.globex_ep, "failed")).await;
    let r = app
        .api
        .call(
            reqwest::Method::POST,
            &format!("/v1/deliveries/{theirs}/retry"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");

    let commands = app.commands().await;
    assert_eq!(commands.len(), 2, "{commands:?}");
    let (subject, msg_id, cmd) = &commands[0];
    assert_eq!(subject, "hookrelay.commands.deliverer.acme");
    assert_eq!(cmd.tenant_id, "acme");
    assert_eq!(msg_id, &cmd.command_id);
    assert!(ulid::Ulid::from_string(&cmd.command_id).is_ok(), "{}", cmd.command_id);
    match &cmd.action {
        Some(Action::Retry(retry)) => assert_eq!(retry.delivery_id, id),
        other => panic!("expected a retry, got {other:?}"),
    }
    let (subject, _, cmd) = &commands[1];
    assert_eq!(
        (subject.as_str(), cmd.tenant_id.as_str()),
        ("hookrelay.commands.deliverer.globex", "globex")
    );
    assert_ne!(commands[0].2.command_id, commands[1].2.command_id);

    let metrics = reqwest::get(format!("{}/metrics", app.api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hookrelay_query_commands_published_total{action=\"retry\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("hookrelay_api_requests_total"), "{metrics}");
}

#[tokio::test]
async fn recover_counts_failed_deliveries_since_and_publishes_a_command() {
    let f = fixture().await;
    let app = &f.app;
    for (event, status, age) in [
        ("evt_1", "failed", 60),
        ("evt_2", "failed", 120),
        ("evt_3", "failed", 7_200),
        ("evt_4", "delivered", 60),
        ("evt_5", "retrying", 60),
    ] {
        app.delivery(Dlv {
            age_secs: age,
            ..Dlv::new("acme", event, &f.ep1, status)
        })
        .await;
    }
    app.delivery(Dlv::new("acme", "evt_6", &f.ep2, "failed")).await;
    let since = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let since_text = since.format(&time::format_description::well_known::Rfc3339).unwrap();

    let r = app
        .api
        .post(
            &format!("/v1/endpoints/{}/recover", f.ep1),
            &f.key,
            json!({"since": since_text}),
        )
        .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body, json!({"requeued": 2}));

    let commands = app.commands().await;
    assert_eq!(commands.len(), 1);
    let (subject, msg_id, cmd) = &commands[0];
    assert_eq!(subject, "hookrelay.commands.deliverer.acme");
    assert_eq!(msg_id, &cmd.command_id);
    match &cmd.action {
        Some(Action::Recover(rec)) => {
            assert_eq!(rec.endpoint_id, f.ep1);
            assert_eq!(rec.since_ms, (since.unix_timestamp_nanos() / 1_000_000) as i64);
        }
        other => panic!("expected a recover, got {other:?}"),
    }

    for body in [
        json!({"since": "last tuesday"}),
        json!({}),
        json!({"since": "2024-01-01T00:00:00Z", "x": 1}),
    ] {
        let r = app
            .api
            .post(&format!("/v1/endpoints/{}/recover", f.ep1), &f.key, body)
            .await;
        assert_eq!(r.status, 422, "{r:?}");
        assert!(r.is_error_body());
    }
    let unknown = app
        .api
        .post(
            "/v1/endpoints/ep_01hzzzzzzzzzzzzzzzzzzzzzzz/recover",
            &f.key,
            json!({"since": since_text}),
        )
        .await;
    assert_error(&unknown, 404, "not_found");
    assert_eq!(app.commands().await.len(), 1);
}

/// An `endpoint_limits` row, as a deliverer replica writes it, refreshed `age_secs` ago.
async fn limit_row(app: &App, tenant: &str, endpoint: &str, replica: &str, limit: i32, in_flight: i32, age_secs: i64) {
    sqlx::query(
        "INSERT INTO endpoint_limits (endpoint_id, replica, tenant_id, concurrency, in_flight, updated_at)
         VALUES ($1, $2, $3, $4, $5, now() - $6 * interval '1 second')",
    )
    .bind(endpoint)
    .bind(replica)
    .bind(tenant)
    .bind(limit)
    .bind(in_flight)
    .bind(age_secs)
    .execute(&app.db)
    .await
    .unwrap();
}

#[tokio::test]
async fn stats_show_the_concurrency_the_deliverers_hold_now() {
    let f = fixture().await;
    let app = &f.app;
    let stats = async |ep: &str, key: &str| {
        let r = app.api.get(&format!("/v1/endpoints/{ep}/stats"), key).await;
        assert_eq!(r.status, 200, "{r:?}");
        r.body["concurrency"].clone()
    };
    assert_eq!(
        stats(&f.ep1, &f.key).await,
        json!({"limit": null, "in_flight": 0, "max_in_flight": null}),
        "no deliverer holds a limit"
    );

    limit_row(app, "acme", &f.ep1, "deliverer-a", 6, 4, 2).await;
    limit_row(app, "acme", &f.ep1, "deliverer-b", 10, 3, 20).await;
    limit_row(app, "acme", &f.ep1, "deliverer-gone", 50, 50, 45).await;
    limit_row(app, "acme", &f.ep2, "deliverer-a", 7, 7, 0).await;
    let patched = app
        .api
        .patch(
            &format!("/v1/endpoints/{}", f.ep1),
            &f.key,
            json!({"max_in_flight": 40}),
        )
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(
        stats(&f.ep1, &f.key).await,
        json!({"limit": 16, "in_flight": 7, "max_in_flight": 40}),
        "the fresh rows of this endpoint only"
    );

    sqlx::query("UPDATE endpoint_limits SET updated_at = now() - interval '1 minute' WHERE endpoint_id = $1")
        .bind(&f.ep1)
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(
        stats(&f.ep1, &f.key).await,
        json!({"limit": null, "in_flight": 0, "max_in_flight": 40}),
        "stale rows are no limit held"
    );
    assert_eq!(stats(&f.globex_ep, &f.globex_key).await["limit"], Value::Null);
}

#[tokio::test]
async fn attempts_show_the_contracts_headers_and_mask_every_other_value() {
    let f = fixture().await;
    let app = &f.app;
    app.event("acme", "evt_masked", "orders/created").await;
    let id = app.delivery(Dlv::new("acme", "evt_masked", &f.ep1, "delivered")).await;
    let sent = json!({
        "webhook-id": "evt_masked", "webhook-timestamp": "1710513000",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "content-type": "application/json", "user-agent": "hookrelay/0.1.0",
        "hookrelay-event": "orders/created", "hookrelay-delivery-id": id, "hookrelay-attempt": "1",
        "authorization": "Bearer sk_live_0123456789abcdef", "x-team": "billing",
        "x-stored-masked": "••••wxyz",
    });
    sqlx::query(
        "INSERT INTO attempts (delivery_id, attempt, trigger, started_at, duration_ms, request_headers,
                               response_code, response_body, error)
         VALUES ($1, 1, 'scheduled', now(), 12, $2, 200, 'ok', NULL)",
    )
    .bind(&id)
    .bind(&sent)
    .execute(&app.db)
    .await
    .unwrap();
    let r = app.api.get(&format!("/v1/deliveries/{id}"), &f.key).await;
    assert_eq!(r.status, 200, "{r:?}");
    let mut expected = sent.clone();
    expected["authorization"] = json!("••••cdef");
    expected["x-team"] = json!("••••");
    assert_eq!(r.body["attempts"][0]["request_headers"], expected);
}

#[tokio::test]
async fn a_window_whose_since_is_after_its_until_is_refused() {
    let f = fixture().await;
    let r = f
        .app
        .api
        .get(
            "/v1/deliveries?since=2024-03-16T00:00:00Z&until=2024-03-15T00:00:00Z",
            &f.key,
        )
        .await;
    assert_error(&r, 422, "invalid_window");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("since") && message.contains("until"), "{message}");
    let r = f
        .app
        .api
        .get(
            "/v1/deliveries?since=2024-03-15T00:00:00Z&until=2024-03-16T00:00:00Z",
            &f.key,
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}
