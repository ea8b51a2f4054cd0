//! Query's one consumer: `EndpointCommand`s from the deliverer on
//! `hookrelay.commands.query.<tenant>` (stream HOOKRELAY_COMMANDS, durable consumer
//! `query-commands`). `disable` sets `endpoints.enabled = false` with `disabled_reason`,
//! then notifies routers on `hookrelay.control.endpoints.<tenant>` (core NATS).

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message, consumer::PullConsumer};
use hookrelay_runtime::nats::{ConsumerSpec, Handed, Source};
use hookrelay_types::{
    EndpointId, TenantId,
    messages::{EndpointCommand, endpoint_command::Action},
    subjects,
};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store;

const POISON: &str = "hookrelay_query_poison_commands_total";
const RETRY_DELAY: Duration = Duration::from_secs(1);

pub(crate) const CONSUMER: ConsumerSpec = ConsumerSpec {
    stream: subjects::COMMANDS_STREAM,
    name: subjects::QUERY_COMMANDS_CONSUMER,
    filter: Some(subjects::QUERY_COMMANDS_FILTER),
};

pub(crate) async fn commands_consumer(js: &jetstream::Context) -> anyhow::Result<PullConsumer> {
    hookrelay_runtime::nats::consumer(js, CONSUMER, None).await
}

#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) db: sqlx::PgPool,
    pub(crate) nats: async_nats::Client,
}

pub(crate) async fn run(
    ctx: Ctx,
    source: Source,
    consumer: PullConsumer,
    drain: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    hookrelay_runtime::nats::consume(source, consumer, 16, drain, shutdown, move |Handed { msg, .. }| {
        let ctx = ctx.clone();
        async move { on_command(&ctx, msg).await }
    })
    .await
}

enum Failure {
    Poison(String),
    Retry(String),
}

#[tracing::instrument(skip_all, fields(subject = %msg.subject))]
async fn on_command(ctx: &Ctx, msg: Message) {
    let kind = match handle(ctx, &msg).await {
        Ok(()) => AckKind::Ack,
        Err(Failure::Poison(error)) => {
            metrics::counter!(POISON).increment(1);
            warn!(%error, "dropping a command that cannot be handled");
            AckKind::Term
        }
        Err(Failure::Retry(error)) => {
            warn!(%error, "handling a command failed; it will be redelivered");
            AckKind::Nak(Some(RETRY_DELAY))
        }
    };
    if let Err(error) = msg.ack_with(kind).await {
        warn!(%error, "settling a command failed; it may be redelivered");
    }
}

async fn handle(ctx: &Ctx, msg: &Message) -> Result<(), Failure> {
    let poison = |e: &dyn std::fmt::Display| Failure::Poison(e.to_string());
    let command = EndpointCommand::decode(msg.payload.clone()).map_err(|e| poison(&e))?;
    let tenant = TenantId::parse(&command.tenant_id).map_err(|e| poison(&e))?;
    let Some(Action::Disable(disable)) = command.action else {
        return Err(Failure::Poison("a command without an action".into()));
    };
    let endpoint = EndpointId::parse(&disable.endpoint_id).map_err(|e| poison(&e))?;
    let changed = store::disable_endpoint(&ctx.db, &tenant, &endpoint, &disable.reason)
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
    if changed {
        info!(endpoint_id = %endpoint, reason = %disable.reason, "endpoint disabled by its health");
    }
    // Routers reload on the notice; a lost one costs nothing (they reload on reconnect).
    if let Err(error) = ctx
        .nats
        .publish(subjects::endpoint_changed(&tenant), endpoint.to_string().into())
        .await
    {
        warn!(%error, "notifying routers of a disabled endpoint failed");
    }
    Ok(())
}
