//! Administration: API tokens, the audit log, trust roots, and assignments (which release of a model runs on
//! which devices; the rollout engine will replace plain assignments).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgefleet_protocol::api::{Assignment, AuditEntry, CreateAssignment, CreateToken, TokenCreated, TokenInfo, WhoAmI};
use serde::Deserialize;

use super::{
    Admin, ApiError, ApiJson, ApiResult, Authorized, Operator, Principal, Source, Viewer, new_token, path_id,
    token_hash,
};
use crate::state::{AppState, Trust, now_ms, rfc3339};

// === tokens ===

pub async fn create_token(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Admin>,
    source: Source,
    ApiJson(req): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    if req.name.is_empty() || req.name.len() > 64 || !req.name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ApiError::bad_request("invalid_name", "token names are 1 to 64 printable characters"));
    }
    if req.expires_in_secs.is_some_and(|s| s == 0 || s > 10 * 365 * 86_400) {
        return Err(ApiError::bad_request("invalid_expiry", "expires_in_secs must be 1 to 315360000 (ten years)"));
    }
    let token = new_token("eft")?;
    let now = now_ms();
    let expires = req.expires_in_secs.map(|s| now + s as i64 * 1000);
    let id = state.store.create_token(&req.name, req.role, &token_hash(&token), &who.actor(), now, expires).await?;
    let detail = serde_json::json!({"id": id, "role": req.role, "expires_at": expires.map(rfc3339)});
    state.audit(&who, &source, "token.create", &req.name, detail).await?;
    Ok((StatusCode::CREATED, Json(TokenCreated { id, name: req.name, role: req.role, token })))
}

pub async fn list_tokens(State(state): State<AppState>, _: Authorized<Admin>) -> ApiResult<Json<Vec<TokenInfo>>> {
    let rows = state.store.list_tokens().await?;
    Ok(Json(
        rows.into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                name: t.name,
                role: t.role,
                created_at: rfc3339(t.created_at),
                revoked: t.revoked,
                expires_at: t.expires_at.map(rfc3339),
            })
            .collect(),
    ))
}

pub async fn revoke_token(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Admin>,
    source: Source,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = path_id(&id)?;
    if !state.store.revoke_token(id, now_ms()).await? {
        return Err(ApiError::not_found(format!("active token {id}")));
    }
    state.audit(&who, &source, "token.revoke", &id.to_string(), serde_json::json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}

// === audit ===

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    pub limit: Option<i64>,
    pub before: Option<i64>,
    /// Only entries about this target (a rollout id, a device id, ...).
    pub target: Option<String>,
}

/// `GET /api/v1/whoami`: the calling token's name and role (what a dashboard may offer).
pub async fn whoami(Authorized(who, _): Authorized<Viewer>) -> ApiResult<Json<WhoAmI>> {
    match who {
        Principal::Token { name, role, .. } => Ok(Json(WhoAmI { name, role })),
        Principal::Device(_) => Err(ApiError::forbidden("a device certificate cannot call this route")),
    }
}

pub async fn audit(
    State(state): State<AppState>,
    _: Authorized<Viewer>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let rows = state.store.list_audit(q.limit.unwrap_or(100).clamp(1, 1000), q.before, q.target.as_deref()).await?;
    Ok(Json(
        rows.into_iter()
            .map(|a| AuditEntry {
                id: a.id,
                at: rfc3339(a.at),
                actor: a.actor,
                action: a.action,
                target: a.target,
                source: a.source,
                detail: serde_json::from_str(&a.detail).unwrap_or(serde_json::Value::Null),
            })
            .collect(),
    ))
}

// === trust roots ===

/// `GET /api/v1/trust/roots`: the versions a device can walk through. Public: roots are signed.
pub async fn list_roots(State(state): State<AppState>) -> Json<serde_json::Value> {
    let trust = state.trust();
    Json(serde_json::json!({
        "versions": trust.chain.iter().map(|(v, _)| v).collect::<Vec<_>>(),
        "latest": trust.root.version,
    }))
}

pub async fn get_root(State(state): State<AppState>, Path(version): Path<String>) -> ApiResult<Response> {
    let version = path_id(&version)? as u64;
    let trust = state.trust();
    let (_, body) = trust
        .chain
        .iter()
        .find(|(v, _)| *v == version)
        .ok_or_else(|| ApiError::not_found(format!("root version {version}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response())
}

/// `POST /api/v1/trust/roots`: the next root version, which must be signed by a threshold of the current root
/// keys and of its own.
pub async fn add_root(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Admin>,
    source: Source,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let current = state.trust();
    let next = model_registry::update_root(&current.root, &body, &state.limits).map_err(|r| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "root_refused",
            format!("refused by the {} defence: {r}", r.defence()),
        )
    })?;
    let fleet = state.fleet_key.key_id();
    if !next.roles.fleet.keyids.contains(&fleet) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "root_refused",
            format!("root {} drops this server's fleet key {fleet}; configure the new fleet key first", next.version),
        ));
    }
    let text = String::from_utf8(body.to_vec()).map_err(|_| ApiError::bad_request("malformed_json", "not UTF-8"))?;
    if !state.store.add_root(next.version as i64, &text, now_ms()).await? {
        return Err(ApiError::conflict("root_exists", format!("root version {} is already stored", next.version)));
    }
    let mut chain = current.chain.clone();
    chain.push((next.version, text));
    let version = next.version;
    *state.trust.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Trust { chain, root: next });
    state.changed(crate::changes::Scope::Roots).await?;
    state.audit(&who, &source, "trust.root.add", &version.to_string(), serde_json::json!({})).await?;
    Ok(StatusCode::CREATED)
}

// === assignments ===

pub async fn create_assignment(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Operator>,
    source: Source,
    ApiJson(req): ApiJson<CreateAssignment>,
) -> ApiResult<(StatusCode, Json<Assignment>)> {
    super::trusted_release(&state, &req.model, req.version).await?;
    super::above_floor(&state, &req.model, &[req.version]).await?;
    let now = now_ms();
    let id = state.store.add_assignment(&req.model, req.version, &req.selector, &who.actor(), now).await?;
    state.changed(crate::changes::Scope::All).await?;
    state
        .audit(
            &who,
            &source,
            "assignment.create",
            &format!("{}/{}", req.model, req.version),
            serde_json::json!({"id": id, "selector": req.selector}),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(Assignment {
            id,
            model: req.model,
            version: req.version,
            selector: req.selector,
            created_at: rfc3339(now),
            created_by: who.actor(),
        }),
    ))
}

pub async fn list_assignments(
    State(state): State<AppState>,
    _: Authorized<Viewer>,
) -> ApiResult<Json<Vec<Assignment>>> {
    let rows = state.store.assignments().await?;
    Ok(Json(
        rows.into_iter()
            .map(|a| Assignment {
                id: a.id,
                model: a.model,
                version: a.version,
                selector: a.selector,
                created_at: rfc3339(a.created_at),
                created_by: a.created_by,
            })
            .collect(),
    ))
}

pub async fn delete_assignment(
    State(state): State<AppState>,
    Authorized(who, _): Authorized<Operator>,
    source: Source,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = path_id(&id)?;
    if !state.store.delete_assignment(id).await? {
        return Err(ApiError::not_found(format!("assignment {id}")));
    }
    state.changed(crate::changes::Scope::All).await?;
    state.audit(&who, &source, "assignment.delete", &id.to_string(), serde_json::json!({})).await?;
    Ok(StatusCode::NO_CONTENT)
}
