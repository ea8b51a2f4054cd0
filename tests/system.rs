//! The whole system over real NATS, PostgreSQL and loopback receivers, one module per
//! concern. One test binary: linking the workspace once instead of once per file.

mod api_keys;
mod crash;
mod drills;
mod encryption;
mod endpoint_health;
mod flow;
mod healing;
mod nats_destination;
mod nats_permissions;
mod replay;
mod retention;
mod signatures;
mod support;
mod traces;
