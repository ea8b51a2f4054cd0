//! Who is calling: the operator's admin token or a tenant's API key (`hr_…`, stored only
//! as its SHA-256). Handlers take a [`Principal`] and ask it for scopes and the tenant.
//! Keys are read from `api_keys` (written by query) on every request, so a revoke takes
//! effect at once.

use std::sync::Arc;

use axum::{
    extract::{FromRef, FromRequestParts},
    http::{header::AUTHORIZATION, request::Parts},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hookrelay_types::{ApiKeyId, TenantId};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::http::ApiError;

pub const KEY_PREFIX: &str = "hr_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    EventsWrite,
    EndpointsRead,
    EndpointsWrite,
    DeliveriesRead,
    DeliveriesWrite,
    KeysWrite,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::EventsWrite,
        Scope::EndpointsRead,
        Scope::EndpointsWrite,
        Scope::DeliveriesRead,
        Scope::DeliveriesWrite,
        Scope::KeysWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::EventsWrite => "events:write",
            Scope::EndpointsRead => "endpoints:read",
            Scope::EndpointsWrite => "endpoints:write",
            Scope::DeliveriesRead => "deliveries:read",
            Scope::DeliveriesWrite => "deliveries:write",
            Scope::KeysWrite => "keys:write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

#[derive(Debug, Clone)]
pub enum Principal {
    /// `HOOKRELAY_ADMIN_TOKEN`: every scope, every tenant.
    Admin,
    Key {
        id: ApiKeyId,
        tenant: TenantId,
        scopes: Vec<Scope>,
    },
}

impl Principal {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Key { scopes, .. } if scopes.contains(&scope) => Ok(()),
            Principal::Key { .. } => Err(ApiError::forbidden(format!(
                "this API key lacks the `{}` scope",
                scope.as_str()
            ))),
        }
    }

    /// The tenant a request acts for: a key's own; for the admin, `requested` (from
    /// `?tenant_id=` or the body), which is then required. A key naming another tenant
    /// gets a 404, as for any other tenant's object.
    pub fn tenant(&self, requested: Option<&str>) -> Result<TenantId, ApiError> {
        match (self, requested) {
            (Principal::Key { tenant, .. }, None) => Ok(tenant.clone()),
            (Principal::Key { tenant, .. }, Some(r)) if r == tenant.as_str() => Ok(tenant.clone()),
            (Principal::Key { .. }, Some(_)) => Err(ApiError::not_found("tenant")),
            (Principal::Admin, Some(r)) => Ok(TenantId::parse(r)?),
            (Principal::Admin, None) => Err(ApiError::bad_request(
                "tenant_required",
                "the admin token acts for every tenant: name one with ?tenant_id=",
            )),
        }
    }

    /// For lookups of one object by id: `None` (any tenant) for the admin.
    pub fn tenant_scope(&self) -> Option<&TenantId> {
        match self {
            Principal::Admin => None,
            Principal::Key { tenant, .. } => Some(tenant),
        }
    }
}

/// Checks credentials. Put one in the router state (`FromRef`) and take [`Principal`] in
/// handlers.
#[derive(Clone)]
pub struct Authenticator(Arc<AuthInner>);

struct AuthInner {
    db: sqlx::PgPool,
    admin_token_hash: [u8; 32],
}

impl Authenticator {
    pub fn new(db: sqlx::PgPool, admin_token: &str) -> Self {
        Self(Arc::new(AuthInner {
            db,
            admin_token_hash: sha256(admin_token.as_bytes()),
        }))
    }

    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, ApiError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("send `Authorization: Bearer <API key or admin token>`"))?;
        let hash = sha256(token.as_bytes());
        // Comparing hashes keeps the comparison's time independent of the token's content.
        if constant_time_eq(&hash, &self.0.admin_token_hash) {
            return Ok(Principal::Admin);
        }
        if !token.starts_with(KEY_PREFIX) {
            return Err(ApiError::unauthorized("the credential is not valid"));
        }
        let row: Option<(String, String, Vec<String>)> =
            sqlx::query_as("SELECT id, tenant_id, scopes FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
                .bind(hash.as_slice())
                .fetch_optional(&self.0.db)
                .await?;
        let (id, tenant, scopes) =
            row.ok_or_else(|| ApiError::unauthorized("the API key is not valid or was revoked"))?;
        Ok(Principal::Key {
            id: ApiKeyId::parse(&id).map_err(ApiError::internal)?,
            tenant: TenantId::parse(&tenant).map_err(ApiError::internal)?,
            scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        })
    }
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Authenticator: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
        Authenticator::from_ref(state).authenticate(header).await
    }
}

/// A new API key: the text shown once (`hr_…`) and the hash to store.
pub fn new_api_key() -> (String, [u8; 32]) {
    let mut raw = [0u8; 24];
    rand::rng().fill_bytes(&mut raw);
    let key = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
    let hash = sha256(key.as_bytes());
    (key, hash)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_hashed() {
        let (key, hash) = new_api_key();
        assert!(key.starts_with("hr_") && key.len() > 30);
        assert_eq!(sha256(key.as_bytes()), hash);
        assert_ne!(new_api_key().0, key);
    }

    #[test]
    fn scopes_parse_from_their_contract_names() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
        assert_eq!(Scope::parse("everything"), None);
    }

    #[test]
    fn a_key_acts_only_for_its_tenant() {
        let p = Principal::Key {
            id: ApiKeyId::generate(),
            tenant: TenantId::parse("acme").unwrap(),
            scopes: vec![Scope::DeliveriesRead],
        };
        assert_eq!(p.tenant(None).unwrap().as_str(), "acme");
        assert_eq!(p.tenant(Some("globex")).unwrap_err().status, 404);
        assert_eq!(p.require(Scope::EndpointsWrite).unwrap_err().status, 403);
        assert!(p.require(Scope::DeliveriesRead).is_ok());
        assert_eq!(Principal::Admin.tenant(None).unwrap_err().status, 400);
    }
}
