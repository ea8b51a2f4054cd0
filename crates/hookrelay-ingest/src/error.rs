//! What can go wrong while accepting an event, sorted into the producer's fault (a clear
//! refusal, never retried) and ours (retried; the event is not acknowledged).

use hookrelay_runtime::http::ApiError;
use hookrelay_types::EnvelopeError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// `data` broke its type's schema and the type's validation is `enforce`.
    #[error("event type `{event_type}` schema version {version}: {violation}")]
    SchemaViolation {
        event_type: String,
        version: i32,
        violation: hookrelay_types::schema::Violation,
    },
    #[error("tenant `{0}` does not exist")]
    UnknownTenant(String),
    /// Shared: one failed batch fails every event in it.
    #[error("database: {0}")]
    Database(std::sync::Arc<sqlx::Error>),
    #[error("publishing to NATS: {0}")]
    Publish(String),
}

impl From<sqlx::Error> for IngestError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(std::sync::Arc::new(e))
    }
}

impl From<std::sync::Arc<sqlx::Error>> for IngestError {
    fn from(e: std::sync::Arc<sqlx::Error>) -> Self {
        Self::Database(e)
    }
}

impl IngestError {
    /// The producer's fault: refuse (REST 4xx, NATS dead letter) rather than retry.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::Envelope(_) | Self::UnknownTenant(_) | Self::SchemaViolation { .. }
        )
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Envelope(e) => e.code(),
            Self::SchemaViolation { .. } => "schema_violation",
            Self::UnknownTenant(_) => "unknown_tenant",
            Self::Database(_) => "database_unavailable",
            Self::Publish(_) => "nats_unavailable",
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Envelope(e) => e.into(),
            e @ IngestError::SchemaViolation { .. } => ApiError::unprocessable("schema_violation", e.to_string()),
            IngestError::UnknownTenant(_) => ApiError::not_found("tenant"),
            // The event is not stored: the producer must send it again.
            other => {
                tracing::error!(error = %other, "event not accepted");
                ApiError::unavailable("the event could not be stored right now; send it again")
            }
        }
    }
}
