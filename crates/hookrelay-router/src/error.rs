//! Routing failures: a message that can never be routed (poison) or trouble that passes.

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("undecodable message: {0}")]
    Poison(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("publishing a delivery job: {0}")]
    Publish(String),
}
