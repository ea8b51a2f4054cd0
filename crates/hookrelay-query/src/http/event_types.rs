//! `/v1/event-types`: the catalogue. Writes `event_types` and `event_type_versions` (ingest
//! reads them to validate events) and reads `events` for the types only seen. After each
//! commit it publishes the type's name on `hookrelay.control.event-types.<tenant>` (core
//! NATS) so ingest applies the change to the very next event.
//!
//! `validation` defaults to `enforce` when a schema is given, else `off`; `enforce` and
//! `warn` need a schema. A changed schema adds a version; the example must match the
//! current schema.

use std::collections::BTreeMap;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use hookrelay_runtime::{
    auth::Principal,
    http::{ApiError, AppJson, AppQuery, List, json},
};
use hookrelay_types::{
    EventType, Invalid, TenantId,
    schema::{Schema, Validation},
    subjects,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AppState, ListParams, NamePath, TenantParam};
use crate::{error::QueryError, store};

/// How many of a tenant's newest events the list scans for types only seen.
pub(crate) const SEEN_SCAN: i64 = 10_000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EventTypeDeclaration)]
pub(crate) struct Declare {
    name: String,
    description: Option<String>,
    schema: Option<Value>,
    example: Option<Value>,
    validation: Option<String>,
    deprecated: Option<bool>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EventTypeChange)]
pub(crate) struct Change {
    description: Option<String>,
    schema: Option<Value>,
    example: Option<Value>,
    validation: Option<String>,
    deprecated: Option<bool>,
}

/// One entry of the list: declared, seen, or both.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = EventTypeEntry)]
pub(crate) struct Entry {
    /// Only for a type not declared (a declaration carries its own `name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    declared: bool,
    #[serde(flatten)]
    #[schema(value_type = super::openapi::DeclaredFields)]
    declaration: Option<store::EventType>,
    /// Events of this type among the newest scanned ([`SEEN_SCAN`]).
    count: i64,
    /// The newest such event's envelope.
    sample: Option<Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = EventTypeDetail)]
pub(crate) struct Detail {
    #[serde(flatten)]
    declaration: store::EventType,
    versions: Vec<store::SchemaVersion>,
}

/// A name from a body or path, refused when it is not a producer's event type.
fn event_type_name(raw: &str) -> Result<EventType, Invalid> {
    let name = EventType::parse(raw)?;
    if name.is_reserved() {
        return Err(Invalid::new(
            "reserved_event_type",
            format!(
                "event types starting with `{}` are hookrelay's own",
                hookrelay_types::event_type::RESERVED_PREFIX
            ),
        ));
    }
    Ok(name)
}

/// The rules a declaration must keep, whatever changed: a valid mode, a schema behind
/// `enforce`/`warn`, an example that matches the schema.
fn check(schema: Option<&Value>, validation: Validation, example: Option<&Value>) -> Result<(), Invalid> {
    let compiled = schema.map(Schema::compile).transpose()?;
    if compiled.is_none() && validation != Validation::Off {
        return Err(Invalid::new(
            "schema_required",
            format!("validation `{}` needs a schema", validation.as_str()),
        ));
    }
    if let (Some(schema), Some(example)) = (&compiled, example) {
        schema
            .check(example)
            .map_err(|v| Invalid::new("invalid_example", format!("example does not match the schema: {v}")))?;
    }
    Ok(())
}

async fn announce(state: &AppState, tenant: &TenantId, name: &str) {
    let client = state.js.client();
    let sent = client
        .publish(subjects::event_type_changed(tenant), name.to_owned().into())
        .await;
    if let Err(error) = sent
        .map_err(|e| e.to_string())
        .and(client.flush().await.map_err(|e| e.to_string()))
    {
        // Ingest's cache expires within a second anyway.
        tracing::warn!(%error, "event type change not announced");
    }
}

async fn detail(state: &AppState, tenant: &TenantId, name: &str) -> Result<Detail, QueryError> {
    let declaration = store::event_type(&state.db, tenant, name)
        .await?
        .ok_or(QueryError::NotFound("event type"))?;
    let versions = store::schema_versions(&state.db, tenant, name).await?;
    Ok(Detail { declaration, versions })
}

#[utoipa::path(
    post,
    path = "/v1/event-types",
    tag = "event-types",
    params(TenantParam),
    request_body = Declare,
    responses((status = 201, description = "declared", body = Detail))
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(param): AppQuery<TenantParam>,
    AppJson(input): AppJson<Declare>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(param.tenant_id.as_deref())?;
    let name = event_type_name(&input.name)?;
    let validation = match input.validation.as_deref() {
        Some(v) => Validation::parse(v)?,
        None => Validation::default_for(input.schema.is_some()),
    };
    check(input.schema.as_ref(), validation, input.example.as_ref())?;
    let spec = store::EventTypeSpec {
        description: input.description.unwrap_or_default(),
        validation: validation.as_str().to_owned(),
        deprecated: input.deprecated.unwrap_or(false),
        example: input.example,
    };
    let mut tx = state.db.begin().await.map_err(QueryError::from)?;
    store::insert_event_type(&mut *tx, &tenant, name.as_str(), &spec).await?;
    if let Some(schema) = &input.schema {
        store::add_schema_version(&mut tx, &tenant, name.as_str(), schema).await?;
    }
    tx.commit().await.map_err(QueryError::from)?;
    announce(&state, &tenant, name.as_str()).await;
    Ok(json(StatusCode::CREATED, detail(&state, &tenant, name.as_str()).await?))
}

#[utoipa::path(
    patch,
    path = "/v1/event-types/{name}",
    tag = "event-types",
    params(TenantParam, NamePath),
    request_body = Change,
    responses((status = 200, description = "updated", body = Detail))
)]
pub(crate) async fn update(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(param): AppQuery<TenantParam>,
    Path(NamePath { name }): Path<NamePath>,
    AppJson(input): AppJson<Change>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(param.tenant_id.as_deref())?;
    let mut tx = state.db.begin().await.map_err(QueryError::from)?;
    if !store::lock_event_type(&mut *tx, &tenant, &name).await? {
        return Err(ApiError::not_found("event type"));
    }
    let current = store::event_type(&mut *tx, &tenant, &name)
        .await?
        .ok_or(QueryError::NotFound("event type"))?;
    let new_schema = input.schema.filter(|s| Some(s) != current.schema.as_ref());
    let schema = new_schema.as_ref().or(current.schema.as_ref());
    let validation = match input.validation.as_deref() {
        Some(v) => Validation::parse(v)?,
        None if current.schema.is_none() && new_schema.is_some() && current.validation == "off" => Validation::Enforce,
        None => Validation::parse(&current.validation)?,
    };
    let example = input.example.or(current.example);
    check(schema, validation, example.as_ref())?;
    let spec = store::EventTypeSpec {
        description: input.description.unwrap_or(current.description),
        validation: validation.as_str().to_owned(),
        deprecated: input.deprecated.unwrap_or(current.deprecated),
        example,
    };
    store::update_event_type(&mut *tx, &tenant, &name, &spec).await?;
    if let Some(schema) = &new_schema {
        store::add_schema_version(&mut tx, &tenant, &name, schema).await?;
    }
    tx.commit().await.map_err(QueryError::from)?;
    announce(&state, &tenant, &name).await;
    Ok(json(StatusCode::OK, detail(&state, &tenant, &name).await?))
}

#[utoipa::path(
    get,
    path = "/v1/event-types/{name}",
    tag = "event-types",
    params(TenantParam, NamePath),
    responses((status = 200, description = "the type with its schema versions", body = Detail))
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(param): AppQuery<TenantParam>,
    Path(NamePath { name }): Path<NamePath>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(param.tenant_id.as_deref())?;
    Ok(json(StatusCode::OK, detail(&state, &tenant, &name).await?))
}

/// Declared and seen types merged by name, in name order; the cursor is the last name.
#[utoipa::path(
    get,
    path = "/v1/event-types",
    tag = "event-types",
    params(ListParams),
    responses((status = 200, description = "declared and seen types", body = super::openapi::EventTypeList))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(params): AppQuery<ListParams>,
) -> Result<Response, ApiError> {
    let tenant = principal.tenant(params.tenant_id.as_deref())?;
    let page = params.page();
    let limit = usize::try_from(page.limit()?).unwrap_or(0);
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for declared in store::event_types(&state.db, &tenant).await? {
        entries.insert(
            declared.name.clone(),
            Entry {
                name: None,
                declared: true,
                declaration: Some(declared),
                count: 0,
                sample: None,
            },
        );
    }
    for seen in store::seen_event_types(&state.db, &tenant, SEEN_SCAN).await? {
        let entry = entries.entry(seen.event_type.clone()).or_insert_with(|| Entry {
            name: Some(seen.event_type.clone()),
            declared: false,
            declaration: None,
            count: 0,
            sample: None,
        });
        entry.count = seen.count;
        entry.sample = serde_json::from_str(&seen.sample).ok();
    }
    let after = page.cursor.clone().filter(|c| !c.is_empty());
    let mut rows: Vec<(String, Entry)> = entries
        .into_iter()
        .filter(|(name, _)| after.as_ref().is_none_or(|a| name.as_str() > a.as_str()))
        .take(limit + 1)
        .collect();
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more {
        rows.last().map(|(name, _)| name.clone())
    } else {
        None
    };
    let rows: Vec<Entry> = rows.into_iter().map(|(_, e)| e).collect();
    Ok(json(
        StatusCode::OK,
        List {
            data: rows,
            next_cursor,
        },
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_declaration_keeps_its_rules() {
        let schema = json!({"type": "object", "required": ["id"]});
        assert!(check(Some(&schema), Validation::Enforce, Some(&json!({"id": 1}))).is_ok());
        let code = |r: Result<(), Invalid>| r.unwrap_err().code;
        assert_eq!(
            code(check(Some(&schema), Validation::Warn, Some(&json!({})))),
            "invalid_example"
        );
        assert_eq!(
            code(check(Some(&json!({"type": "no-such-type"})), Validation::Off, None)),
            "invalid_schema"
        );
        assert_eq!(code(check(None, Validation::Warn, None)), "schema_required");
        assert!(check(None, Validation::Off, Some(&json!({"anything": true}))).is_ok());
        assert_eq!(
            event_type_name("hookrelay/ping").unwrap_err().code,
            "reserved_event_type"
        );
        assert_eq!(event_type_name("orders").unwrap_err().code, "invalid_event_type");
    }
}
