//! The HTTP API: routes, the extractors that authenticate callers, and JSON handling with stable errors.
//!
//! Callers are people (and scripts) with API tokens (`Authorization: Bearer ...`, roles checked per route) or
//! devices with client certificates from the device CA (mutual TLS, checked by rustls during the handshake).

use std::net::SocketAddr;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use edgefleet_protocol::DeviceId;
use edgefleet_protocol::api::TokenRole;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::state::{AppState, CertCheck, now_ms};
use crate::store::Audit;
use crate::tls::ClientCert;

mod admin;
mod dashboard;
mod devices;
pub mod error;
mod metrics;
mod openapi;
mod rollouts;
mod telemetry;

pub use openapi::{Access, ROUTES as openapi_route_table, RouteDoc};

/// The documented routes (the OpenAPI document is built from them).
pub fn openapi_routes() -> &'static [RouteDoc] {
    openapi::ROUTES
}
mod registry;

pub use error::{ApiError, ApiResult};

/// What the connection told us: the peer address and, for mutual TLS, the verified client certificate.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub client: Option<ClientCert>,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    Token { id: i64, name: String, role: TokenRole },
    Device(DeviceId),
}

/// SHA-256 of an API or enrollment token: what is stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A numeric id from a path segment, refused in the API's error shape.
pub fn path_id(s: &str) -> ApiResult<i64> {
    s.parse().map_err(|_| ApiError::bad_request("invalid_id", format!("{s:?} is not a numeric id")))
}

/// A new random token with a recognisable prefix.
pub fn new_token(prefix: &str) -> Result<String, ApiError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| ApiError::internal(&e))?;
    Ok(format!("{prefix}_{}", hex::encode(b)))
}

impl Principal {
    /// The caller's name in the audit log.
    pub fn actor(&self) -> String {
        match self {
            Principal::Token { name, role, .. } => format!("token:{name} ({role})"),
            Principal::Device(id) => format!("device:{id}"),
        }
    }

    /// Requires an API token whose role allows `needed`.
    pub fn require(&self, needed: TokenRole) -> ApiResult<()> {
        match self {
            Principal::Token { role, .. } if role.allows(needed) => Ok(()),
            Principal::Token { role, .. } => {
                Err(ApiError::forbidden(format!("this needs the {needed} role; this token is a {role} token")))
            }
            Principal::Device(_) => Err(ApiError::forbidden("a device certificate cannot call this route")),
        }
    }

    /// Requires a device certificate.
    pub fn device(&self) -> ApiResult<&DeviceId> {
        match self {
            Principal::Device(id) => Ok(id),
            Principal::Token { .. } => Err(ApiError::forbidden("this route is for devices (mutual TLS)")),
        }
    }

    /// A viewer token or any device.
    pub fn require_viewer_or_device(&self) -> ApiResult<()> {
        match self {
            Principal::Device(_) => Ok(()),
            token => token.require(TokenRole::Viewer),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) {
            let token = header
                .to_str()
                .ok()
                .and_then(|h| h.strip_prefix("Bearer "))
                .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
            let row = state
                .store
                .token_by_hash(&token_hash(token.trim()))
                .await?
                .filter(|t| !t.revoked)
                .ok_or_else(|| ApiError::unauthorized("unknown or revoked API token"))?;
            if let Some(at) = row.expires_at.filter(|at| *at <= now_ms()) {
                return Err(ApiError::unauthorized(format!("this API token expired at {}", crate::state::rfc3339(at))));
            }
            return Ok(Principal::Token { id: row.id, name: row.name, role: row.role });
        }
        let cert = parts.extensions.get::<ConnInfo>().and_then(|c| c.client.clone());
        if let Some(cert) = cert {
            let id: DeviceId = cert
                .common_name
                .parse()
                .map_err(|_| ApiError::forbidden("client certificate does not name a device"))?;
            return match state.check_certificate(&id, &cert.serial).await? {
                CertCheck::Current => Ok(Principal::Device(id)),
                CertCheck::Revoked => Err(ApiError::forbidden(format!("device {id} is revoked"))),
                CertCheck::Replaced => Err(ApiError::forbidden(format!(
                    "this certificate of device {id} was replaced by a renewal; only the newest one is accepted"
                ))),
                CertCheck::Unknown => Err(ApiError::forbidden(format!("device {id} is not enrolled"))),
            };
        }
        Err(ApiError::unauthorized("an API token (Authorization: Bearer) or a device certificate is required"))
    }
}

/// A role a route needs, as a type, so the check happens while extracting: before the body is read.
pub trait NeededRole {
    const ROLE: TokenRole;
}

macro_rules! needed_roles {
    ($($name:ident => $role:ident),*) => {$(
        #[derive(Debug)]
        pub struct $name;
        impl NeededRole for $name {
            const ROLE: TokenRole = TokenRole::$role;
        }
    )*};
}

needed_roles!(Viewer => Viewer, Publisher => Publisher, Operator => Operator, Admin => Admin);

/// A caller holding an API token whose role allows `R`.
#[derive(Debug)]
pub struct Authorized<R>(pub Principal, std::marker::PhantomData<R>);

impl<R: NeededRole + Send + Sync> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let who = Principal::from_request_parts(parts, state).await?;
        who.require(R::ROLE)?;
        Ok(Self(who, std::marker::PhantomData))
    }
}

/// A caller with a device certificate.
#[derive(Debug)]
pub struct DeviceCaller(pub DeviceId);

impl FromRequestParts<AppState> for DeviceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let who = Principal::from_request_parts(parts, state).await?;
        Ok(Self(who.device()?.clone()))
    }
}

/// A route a device calls on its own, rate-limited per device.
pub trait DeviceRoute {
    const WHAT: &'static str;
    fn limiter(state: &AppState) -> &crate::limiter::Limiter;
}

#[derive(Debug)]
pub struct Checkins;
impl DeviceRoute for Checkins {
    const WHAT: &'static str = "check-ins";
    fn limiter(state: &AppState) -> &crate::limiter::Limiter {
        &state.checkin_limiter
    }
}

#[derive(Debug)]
pub struct Events;
impl DeviceRoute for Events {
    const WHAT: &'static str = "event reports";
    fn limiter(state: &AppState) -> &crate::limiter::Limiter {
        &state.event_limiter
    }
}

/// A caller with a device certificate, within its rate for route `R`: past it, 429 with `Retry-After` before
/// the body is read.
#[derive(Debug)]
pub struct Limited<R>(pub DeviceId, std::marker::PhantomData<R>);

impl<R: DeviceRoute + Send + Sync> FromRequestParts<AppState> for Limited<R> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let DeviceCaller(id) =
            DeviceCaller::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        if let Err(wait) = R::limiter(state).admit(&id, crate::state::now_ms()) {
            let why = format!("device {id} sends {} faster than the server takes them; retry in {wait} s", R::WHAT);
            return Err(too_many(why, wait));
        }
        Ok(Self(id, std::marker::PhantomData))
    }
}

/// An enrollment within its source address's rate (`enrollments_per_sec`, `enrollment_burst`): past it, 429
/// with `Retry-After` before the body is read.
#[derive(Debug)]
pub struct EnrollAllowed;

impl FromRequestParts<AppState> for EnrollAllowed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(ip) = parts.extensions.get::<ConnInfo>().map(|c| c.remote.ip()) else { return Ok(Self) };
        match state.enroll_limiter.admit(&ip, crate::state::now_ms()) {
            Ok(()) => Ok(Self),
            Err(wait) => Err(too_many(format!("too many enrollments from {ip}; retry in {wait} s"), wait)),
        }
    }
}

/// 429 in the API's error shape, with `Retry-After`.
fn too_many(message: String, wait: u64) -> Response {
    let mut resp = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).into_response();
    resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(wait));
    resp
}

/// The caller's address, for the audit log.
#[derive(Debug)]
pub struct Source(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Source {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Source(parts.extensions.get::<ConnInfo>().map(|c| c.remote.to_string()).unwrap_or_else(|| "local".into())))
    }
}

/// JSON bodies with errors in the API's shape: 415 without a JSON content type, 413 when too large, 400 with
/// the parser's message when malformed or of the wrong shape.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection.status() {
                StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send JSON with Content-Type: application/json",
                ),
                StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body is too large")
                }
                _ => ApiError::bad_request("malformed_json", rejection.body_text()),
            }),
        }
    }
}

impl AppState {
    /// Records a state-changing call.
    pub async fn audit(
        &self,
        who: &Principal,
        source: &Source,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> ApiResult<()> {
        let actor = who.actor();
        self.store
            .audit(Audit { actor: &actor, action, target, source: &source.0, detail }, now_ms())
            .await
            .map_err(ApiError::from)
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    let unready =
        |what: &'static str| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", what).into_response();
    // Reasons go to the server's log, not to whoever asks: `/readyz` answers anyone, and database and store
    // errors name hosts, users, buckets and paths.
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "not ready: the database does not answer");
        return unready("the database does not answer");
    }
    if !state.in_sync() {
        tracing::warn!("not ready: the change log has not been read lately");
        return unready("this server is behind the database's change log");
    }
    if let Err(e) = state.blobs.health().await {
        tracing::warn!(error = %e, "not ready: the blob store does not answer");
        return unready("the blob store does not answer");
    }
    "ready".into_response()
}

/// Refusals may answer before the request body was read (a bad digest, a body too large, a missing role). On
/// HTTP/1.1 the rest of that body is still on the wire, so the connection cannot carry another request: say
/// so with `Connection: close`, or a client reusing it sees the connection drop under its next request.
async fn close_after_refusal(req: Request, next: axum::middleware::Next) -> Response {
    let http1 = req.version() < axum::http::Version::HTTP_2;
    let mut resp = next.run(req).await;
    if http1 && resp.status().is_client_error() {
        resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    resp
}

async fn fallback() -> ApiError {
    ApiError::not_found("no such route")
}

/// Every route. Bodies are capped at `max_json_bytes` except blob uploads, which stream with their own cap.
pub fn router(state: AppState) -> Router {
    let json_limit = state.config.max_json_bytes.max(state.limits.max_manifest_bytes as usize);
    let api = Router::new()
        .route("/trust/roots", get(admin::list_roots).post(admin::add_root))
        .route("/trust/roots/{version}", get(admin::get_root))
        .route(
            "/blobs/{digest}",
            put(registry::put_blob).get(registry::get_blob).head(registry::get_blob).layer(DefaultBodyLimit::disable()),
        )
        .route("/releases", post(registry::publish))
        .route("/models", get(registry::list_models))
        .route("/models/{model}/releases", get(registry::list_releases))
        .route("/models/{model}/telemetry", get(registry::telemetry))
        .route("/models/{model}/releases/{version}", get(registry::get_release))
        .route("/assignments", get(admin::list_assignments).post(admin::create_assignment))
        .route("/assignments/{id}", delete(admin::delete_assignment))
        .route("/enrollment-tokens", post(devices::create_enroll_token))
        .route("/enroll", post(devices::enroll))
        .route("/device/checkin", post(devices::checkin))
        .route("/device/events", post(devices::events))
        .route("/device/renew", post(devices::renew))
        .route("/devices", get(devices::list))
        .route("/devices/{id}", get(devices::show))
        .route("/devices/{id}/telemetry", get(devices::telemetry))
        .route("/fleet", get(devices::fleet))
        .route("/whoami", get(admin::whoami))
        .route("/devices/{id}/labels", put(devices::set_labels))
        .route("/devices/{id}/revoke", post(devices::revoke))
        .route("/tokens", get(admin::list_tokens).post(admin::create_token))
        .route("/tokens/{id}", delete(admin::revoke_token))
        .route("/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/rollouts/{id}", get(rollouts::show))
        .route("/rollouts/{id}/pause", post(rollouts::pause))
        .route("/rollouts/{id}/resume", post(rollouts::resume))
        .route("/rollouts/{id}/abort", post(rollouts::abort))
        .route("/rollouts/{id}/promote", post(rollouts::promote))
        .route("/audit", get(admin::audit))
        .route("/openapi.json", get(openapi::document))
        .fallback(fallback);
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/{file}", get(dashboard::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::prometheus))
        .route("/v1/metrics", post(telemetry::export))
        .nest("/api/v1", api)
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(json_limit))
        .layer(axum::middleware::from_fn(close_after_refusal))
        .with_state(state)
}

/// Refuses to point devices at any of `targets` of `model` when some of them may have seen a higher security
/// floor: the highest floor of any release of the model that an assignment or a rollout (either side, in any
/// state) named, and of the targets themselves (a rollout's baseline below its new release's floor). Devices
/// refuse a release below a floor they have seen, so such a target would leave them refusing every document
/// (422 `below_security_floor`).
pub async fn above_floor(
    state: &AppState,
    model: &edgefleet_protocol::ModelName,
    targets: &[edgefleet_protocol::ReleaseVersion],
) -> ApiResult<()> {
    let assigned = state.store.assignments().await?.into_iter().filter(|a| a.model == *model).map(|a| a.version);
    let rolled = state.store.rollouts().await?.into_iter().filter(|r| r.rollout.model == *model);
    let given: std::collections::BTreeSet<_> = assigned
        .chain(rolled.flat_map(|r| [r.rollout.release, r.rollout.baseline]))
        .chain(targets.iter().copied())
        .collect();
    let mut highest = None;
    for v in given {
        if let Some(row) = state.store.get_release(model, v).await?
            && highest.is_none_or(|(floor, _)| row.security_floor > floor)
        {
            highest = Some((row.security_floor, v));
        }
    }
    let below = targets.iter().copied().filter(|v| highest.is_some_and(|(floor, _)| *v < floor)).min();
    match highest.zip(below) {
        Some(((floor, from), version)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "below_security_floor",
            format!(
                "release {version} of {model} is below the security floor {floor} that release {from} carried to \
                 devices; they refuse anything under it. Target release {floor} or later"
            ),
        )),
        _ => Ok(()),
    }
}

/// A release that may be given to devices: in the registry (404 otherwise) and still signed by a threshold of
/// the current root's release keys (422 `release_untrusted` otherwise: every device would refuse it).
pub async fn trusted_release(
    state: &AppState,
    model: &edgefleet_protocol::ModelName,
    version: edgefleet_protocol::ReleaseVersion,
) -> ApiResult<()> {
    match state.release_trusted(model, version).await? {
        None => Err(ApiError::not_found(format!("release {version} of {model}"))),
        Some(false) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "release_untrusted",
            format!(
                "release {version} of {model} is not signed by a threshold of root version {}'s release keys (a \
                 signing key was revoked): devices would refuse it; publish a release signed by current keys",
                state.trust().root.version
            ),
        )),
        Some(true) => Ok(()),
    }
}
