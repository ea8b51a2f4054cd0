//! What can go wrong in query, and its HTTP face. Postgres constraint names (from
//! `tenants`, `api_keys`, `endpoints`) become domain errors here, so handlers never look at
//! SQL errors themselves.

use axum::http::StatusCode;
use hookrelay_runtime::http::ApiError;
use hookrelay_types::Invalid;

#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    /// An unknown object, or another tenant's: the two are indistinguishable by design.
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("a tenant with this id already exists")]
    TenantExists,
    #[error("no such tenant")]
    UnknownTenant,
    #[error("an event type with this name is already declared; change it with PATCH")]
    EventTypeExists,
    /// A body that parses but breaks a rule (422).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A query parameter that breaks a rule (400).
    #[error("{0}")]
    BadQuery(Invalid),
    #[error("database: {0}")]
    Database(sqlx::Error),
    #[error("publishing to NATS: {0}")]
    Publish(String),
    /// A stored secret that does not open under this process's keys.
    #[error("stored secrets: {0}")]
    Vault(#[from] hookrelay_runtime::vault::VaultError),
}

impl From<sqlx::Error> for QueryError {
    fn from(e: sqlx::Error) -> Self {
        let constraint = match &e {
            sqlx::Error::Database(db) => db.constraint(),
            _ => None,
        };
        match constraint {
            Some("tenants_pkey") => Self::TenantExists,
            Some("event_types_pkey") => Self::EventTypeExists,
            Some("api_keys_tenant_id_fkey" | "endpoints_tenant_id_fkey" | "event_types_tenant_id_fkey") => {
                Self::UnknownTenant
            }
            _ => Self::Database(e),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NotFound(what) => ApiError::not_found(what),
            QueryError::TenantExists => ApiError::conflict("tenant_exists", e.to_string()),
            QueryError::UnknownTenant => ApiError::not_found("tenant"),
            QueryError::EventTypeExists => ApiError::conflict("event_type_exists", e.to_string()),
            QueryError::Invalid(invalid) => invalid.into(),
            QueryError::BadQuery(invalid) => ApiError::new(StatusCode::BAD_REQUEST, invalid.code, invalid.message),
            QueryError::Database(e) => ApiError::internal(format!("database: {e}")),
            QueryError::Vault(e) => ApiError::internal(format!("stored secrets: {e}")),
            QueryError::Publish(cause) => {
                tracing::error!(%cause, "command not published");
                ApiError::unavailable("the command could not be queued right now; send it again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_have_the_contracts_statuses() {
        let status = |e: QueryError| ApiError::from(e).status;
        assert_eq!(status(QueryError::NotFound("endpoint")), StatusCode::NOT_FOUND);
        assert_eq!(status(QueryError::TenantExists), StatusCode::CONFLICT);
        assert_eq!(status(QueryError::UnknownTenant), StatusCode::NOT_FOUND);
        assert_eq!(
            status(QueryError::Invalid(Invalid::new("invalid_url", "url: bad"))),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            status(QueryError::BadQuery(Invalid::new("invalid_status", "status: bad"))),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(QueryError::Publish("down".into())),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
