//! All of query's SQL, one module per table. Writes `tenants`, `api_keys`, `endpoints`,
//! `event_types` and `event_type_versions` (query is their only writer); reads `events`
//! (ingest's), `deliveries`, `attempts`, `endpoint_health`, `endpoint_health_transitions`,
//! `endpoint_limits` and `endpoint_minutes` (the deliverer's).
//! Every function takes `impl PgExecutor` so a caller may pass the pool or a transaction.
//! Lookups take `Option<&TenantId>`: `None` (the admin) sees every tenant's rows.

mod api_keys;
mod attempts;
mod deliveries;
mod endpoints;
mod event_types;
mod events;
mod health;
mod limits;
mod minutes;
mod tenants;

pub(crate) use api_keys::*;
pub(crate) use attempts::*;
pub(crate) use deliveries::*;
pub(crate) use endpoints::*;
pub(crate) use event_types::*;
pub(crate) use events::*;
pub(crate) use health::*;
pub(crate) use limits::*;
pub(crate) use minutes::*;
pub(crate) use tenants::*;

use crate::error::QueryError;

type Result<T> = std::result::Result<T, QueryError>;
