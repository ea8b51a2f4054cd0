//! Publishes events that were stored but never reached HOOKRELAY_EVENTS (the process died
//! between the two steps, or NATS was down after the insert). Reads and updates `events`.

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

async fn sweep(ingest: &Ingest) -> anyhow::Result<usize> {
    let rows = store::unpublished(&ingest.db, ingest.cfg.republish_after, 500).await?;
    for row in &rows {
        let tenant = TenantId::parse(&row.tenant_id)?;
        let event_id = EventId::parse(&row.event_id)?;
        let event_type = EventType::parse(&row.event_type)?;
        let only = row.only_endpoint_id.as_deref().map(EndpointId::parse).transpose()?;
        publish::event_accepted(
            &ingest.js,
            &tenant,
            &event_id,
            &event_type,
            row.body.clone().into_bytes(),
            row.received_at,
            only.as_ref(),
        )
        .await?;
        store::mark_published(&ingest.db, &[(row.tenant_id.clone(), row.event_id.clone())]).await?;
        metrics::counter!(REPUBLISHED).increment(1);
    }
    Ok(rows.len())
}
