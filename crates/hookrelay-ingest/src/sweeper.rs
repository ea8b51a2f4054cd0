//! Publishes events that were stored but never reached HOOKRELAY_EVENTS (the process died
//! between the two steps, or NATS was down after the insert): the batches whose
//! `unpublished_batches` row is still there. Reads `events`, deletes `unpublished_batches`.

use std::time::Duration;

use hookrelay_types::{EndpointId, EventId, EventType, TenantId};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{accept::Ingest, publish, store};

const REPUBLISHED: &str = "hookrelay_events_republished_total";

pub(crate) async fn run(ingest: Ingest, shutdown: CancellationToken) {
    let every = (ingest.cfg.republish_after / 2).clamp(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match sweep(&ingest).await {
            Ok(0) => {}
            Ok(n) => info!(events = n, "republished events left unpublished"),
            Err(error) => warn!(%error, "sweeping unpublished events failed"),
        }
    }
}

/// Publishes the events of every batch left unpublished past `HOOKRELAY_REPUBLISH_AFTER`,
/// then clears the batch's mark. Returns how many events were published.
async fn sweep(ingest: &Ingest) -> anyhow::Result<usize> {
    let batches = store::unpublished(&ingest.db, ingest.cfg.republish_after, 50).await?;
    let mut published = 0;
    for batch in &batches {
        for row in store::events_received_at(&ingest.db, batch.received_at).await? {
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
            published += 1;
        }
        store::remove_marks(&ingest.db, &[batch.id]).await?;
    }
    Ok(published)
}
