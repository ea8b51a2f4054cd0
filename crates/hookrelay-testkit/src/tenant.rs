//! Tenants and API keys for a test: over the admin API when query runs, straight into the
//! database when it does not.

use hookrelay_runtime::auth::new_api_key;
use serde_json::json;
use sqlx::PgPool;

use crate::{ADMIN_TOKEN, Api};

/// A key as made: its id and the secret shown once.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub key: String,
}

impl Api {
    /// Makes tenant `id` (named `name`) with the admin token; panics unless answered 201.
    pub async fn create_tenant(&self, id: &str, name: &str) {
        let r = self
            .post("/v1/tenants", ADMIN_TOKEN, json!({"id": id, "name": name}))
            .await;
        assert_eq!(r.status, 201, "creating tenant {id}: {r:?}");
    }

    /// Makes a key of `tenant` named `name` with `scopes`, with the admin token; panics
    /// unless answered 201.
    pub async fn create_api_key(&self, tenant: &str, name: &str, scopes: &[&str]) -> ApiKey {
        let r = self
            .post(
                "/v1/api-keys",
                ADMIN_TOKEN,
                json!({"tenant_id": tenant, "name": name, "scopes": scopes}),
            )
            .await;
        assert_eq!(r.status, 201, "creating a key of {tenant}: {r:?}");
        let field = |f: &str| {
            r.body[f]
                .as_str()
                .unwrap_or_else(|| panic!("no `{f}` in {r:?}"))
                .to_owned()
        };
        ApiKey {
            id: field("id"),
            key: field("key"),
        }
    }

    /// [`Api::create_tenant`] (named as its id) and [`Api::create_api_key`]: the key's secret.
    pub async fn create_tenant_with_key(&self, id: &str, key_name: &str, scopes: &[&str]) -> String {
        self.create_tenant(id, id).await;
        self.create_api_key(id, key_name, scopes).await.key
    }
}

/// Stores tenant `id` (named `name`) as query would.
pub async fn insert_tenant(db: &PgPool, id: &str, name: &str) {
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(name)
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("inserting tenant {id}: {e}"));
}

/// Stores a key of `tenant` named `name` with `scopes` as query would.
pub async fn insert_api_key(db: &PgPool, tenant: &str, name: &str, scopes: &[&str]) -> ApiKey {
    let (key, hash) = new_api_key();
    let id = hookrelay_types::ApiKeyId::generate().to_string();
    sqlx::query("INSERT INTO api_keys (id, tenant_id, name, scopes, key_hash) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(tenant)
        .bind(name)
        .bind(scopes)
        .bind(hash.as_slice())
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("inserting a key of {tenant}: {e}"));
    ApiKey { id, key }
}
