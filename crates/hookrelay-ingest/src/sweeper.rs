//! Publishes events that were stored but never reached HOOKRELAY_EVENTS (the process died
//! between the two steps, or NATS was down after the insert): the batches whose
//! `unpublished_batches` row is still there. Reads `events`, deletes `unpublished_batches`.

use std::time::Duration;

use hookrelay_types::{EndpointId, EventId, EventType, TenantId};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{accept::Ingest, publish, store};

const REPUBLISHED: &str = "hookrelay_events_republished_total";
/// Batches the sweeper could not publish (a NATS error, a row it cannot read): left marked,
/// tried again at the next pass, and never in the way of the batches after them.
const REPUBLISH_FAILED: &str = "hookrelay_events_republish_failed_total";
/// Batches read per pass; a full page is followed at once by the next.
const PAGE: i64 = 500;
/// Batches published at once; each publishes its events at once and awaits their acks.
const BATCHES_AT_ONCE: usize = 16;

/// Times the events stream was found made anew (and recent events marked to publish again).
const STREAMS_REMADE: &str = "hookrelay_events_stream_remade_total";
/// How far back events are published again when the events stream is found made anew.
const STREAM_LOSS_WINDOW: Duration = Duration::from_secs(300);

/// `noted`: the events stream's creation time as noted at start.
pub(crate) async fn run(ingest: Ingest, noted: Option<time::OffsetDateTime>, shutdown: CancellationToken) {
    metrics::counter!(REPUBLISH_FAILED).increment(0);
    let every = (ingest.cfg.republish_after / 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let mut wait = every;
    // The stream as this process noted it last: the database is asked only on a change.
    let mut noted = noted;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = every;
        noted = check_events_stream(&ingest, noted).await;
        match sweep(&ingest).await {
            Ok(pass) => {
                if pass.events > 0 {
                    info!(events = pass.events, "republished events left unpublished");
                }
                // A backlog (after a NATS outage) drains without waiting between pages.
                if pass.full_page && pass.failed_batches == 0 {
                    wait = Duration::ZERO;
                }
            }
            Err(error) => warn!(%error, "sweeping unpublished events failed"),
        }
    }
}

/// When HOOKRELAY_EVENTS was deleted (by hand) and made again, the events it held and the
/// router had not yet routed went with it. The stream is known by its creation time, noted
/// in `stream_instances` (so a change made while ingest was down counts too); when it
/// changes, every event accepted in the last [`STREAM_LOSS_WINDOW`] is marked to be
/// published again. The router routes each again, and the deliverer keeps one delivery per
/// event and endpoint, so what was delivered already is not sent twice. Runs at start and
/// at every pass of the sweeper; `noted` is the creation time this process noted last (the
/// database is only asked when the stream's differs). Returns the one noted now.
pub(crate) async fn check_events_stream(
    ingest: &Ingest,
    noted: Option<time::OffsetDateTime>,
) -> Option<time::OffsetDateTime> {
    let Ok(stream) = ingest.js.get_stream(hookrelay_types::subjects::EVENTS_STREAM).await else {
        return noted;
    };
    let created = hookrelay_runtime::nats::stream_created(stream.cached_info());
    if noted == Some(created) {
        return noted;
    }
    let stream = hookrelay_types::subjects::EVENTS_STREAM;
    match store::note_stream(&ingest.db, stream, created, STREAM_LOSS_WINDOW).await {
        Ok(Some(batches)) => {
            metrics::counter!(STREAMS_REMADE).increment(1);
            warn!(
                batches,
                window_seconds = STREAM_LOSS_WINDOW.as_secs(),
                "the events stream was made anew; publishing the events accepted within the window again"
            );
        }
        Ok(None) => {}
        Err(error) => {
            warn!(%error, "noting the events stream failed; trying again at the next pass");
            return noted;
        }
    }
    Some(created)
}

/// What one pass did.
#[derive(Debug, Default)]
struct Pass {
    events: usize,
    failed_batches: usize,
    full_page: bool,
}

/// Publishes the events of the batches left unpublished past `HOOKRELAY_REPUBLISH_AFTER`
/// (a page of them, oldest first, several at once), clearing each batch's mark once all
/// its events are acknowledged. A batch that fails is counted and left for the next pass.
async fn sweep(ingest: &Ingest) -> anyhow::Result<Pass> {
    use futures::StreamExt as _;
    let batches = store::unpublished(&ingest.db, ingest.cfg.republish_after, PAGE).await?;
    let mut pass = Pass {
        full_page: i64::try_from(batches.len()).is_ok_and(|n| n == PAGE),
        ..Pass::default()
    };
    let mut results = futures::stream::iter(batches.into_iter().map(|batch| {
        let ingest = ingest.clone();
        async move {
            let result = republish(&ingest, &batch).await;
            (batch, result)
        }
    }))
    .buffer_unordered(BATCHES_AT_ONCE);
    while let Some((batch, result)) = results.next().await {
        match result {
            Ok(n) => pass.events += n,
            Err(error) => {
                metrics::counter!(REPUBLISH_FAILED).increment(1);
                pass.failed_batches += 1;
                warn!(%error, batch = batch.id, received_at = %batch.received_at, "republishing a batch failed; it is tried again at the next pass");
            }
        }
    }
    Ok(pass)
}

/// Publishes every event of `batch` at once, awaits their acks, then clears its mark.
async fn republish(ingest: &Ingest, batch: &store::Unpublished) -> anyhow::Result<usize> {
    let rows = store::events_received_at(&ingest.db, batch.received_at).await?;
    let publishes = rows.into_iter().map(|row| async move {
        let tenant = TenantId::parse(&row.tenant_id)?;
        let event_id = EventId::parse(&row.event_id)?;
        let event_type = EventType::parse(&row.event_type)?;
        let only = row.only_endpoint_id.as_deref().map(EndpointId::parse).transpose()?;
        publish::event_accepted(
            &ingest.js,
            false,
            &tenant,
            &event_id,
            &event_type,
            row.body.into_bytes(),
            row.received_at,
            only.as_ref(),
        )
        .await?;
        metrics::counter!(REPUBLISHED).increment(1);
        anyhow::Ok(())
    });
    let published = futures::future::try_join_all(publishes).await?.len();
    store::remove_marks(&ingest.db, &[batch.id]).await?;
    Ok(published)
}
