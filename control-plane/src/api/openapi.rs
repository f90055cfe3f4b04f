//! `GET /api/v1/openapi.json`: the API described from [`ROUTES`], the table that also drives the tests that
//! try every route with every role (so the document and the router cannot drift apart unnoticed).

use axum::Json;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem, PathsBuilder};
use utoipa::openapi::{InfoBuilder, OpenApiBuilder, ResponseBuilder};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials (health, signed trust roots, enrollment with its one-time token in the body).
    Public,
    /// An API token of at least this role.
    Role(edgefleet_protocol::api::TokenRole),
    /// A device client certificate (mutual TLS).
    Device,
    /// A viewer token or a device certificate.
    ViewerOrDevice,
}

#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    /// Relative to `/api/v1`, with `{param}`s.
    pub path: &'static str,
    pub access: Access,
    pub summary: &'static str,
}

use edgefleet_protocol::api::TokenRole::{Admin, Operator, Publisher, Viewer};

const fn r(method: &'static str, path: &'static str, access: Access, summary: &'static str) -> RouteDoc {
    RouteDoc { method, path, access, summary }
}

pub const ROUTES: &[RouteDoc] = &[
    r("GET", "/trust/roots", Access::Public, "Root versions the server holds (signed; devices walk them forward)"),
    r("GET", "/trust/roots/{version}", Access::Public, "One signed root.json"),
    r("POST", "/trust/roots", Access::Role(Admin), "Add the next root version (signed by old and new root keys)"),
    r("PUT", "/blobs/{digest}", Access::Role(Publisher), "Upload a blob; streamed, digest and Content-Length checked"),
    r("GET", "/blobs/{digest}", Access::ViewerOrDevice, "Download a blob (Range, ETag, Cache-Control: immutable)"),
    r(
        "POST",
        "/releases",
        Access::Role(Publisher),
        "Publish a signed release manifest (verified; blobs present; version above every earlier one)",
    ),
    r("GET", "/models", Access::Role(Viewer), "Models with their latest release"),
    r("GET", "/models/{model}/releases", Access::Role(Viewer), "Releases of a model, newest first"),
    r(
        "GET",
        "/models/{model}/telemetry",
        Access::Role(Viewer),
        "Per window, release and device class: requests, errors, p50/p95/p99, energy per inference (?since=ms)",
    ),
    r("GET", "/models/{model}/releases/{version}", Access::ViewerOrDevice, "A signed release manifest as published"),
    r("GET", "/assignments", Access::Role(Viewer), "Assignments of releases to label selectors"),
    r("POST", "/assignments", Access::Role(Operator), "Assign a release to the devices a selector matches"),
    r("DELETE", "/assignments/{id}", Access::Role(Operator), "Remove an assignment"),
    r(
        "POST",
        "/enrollment-tokens",
        Access::Role(Operator),
        "Create a one-time enrollment token (expiring, with labels)",
    ),
    r("POST", "/enroll", Access::Public, "Enroll a device: one-time token + CSR -> client certificate"),
    r(
        "POST",
        "/device/checkin",
        Access::Device,
        "Report state; answer the signed desired state, or 304 (long-poll with ?wait=)",
    ),
    r("POST", "/device/events", Access::Device, "Report events (idempotent by event id)"),
    r("POST", "/device/renew", Access::Device, "Renew the device certificate from a new CSR"),
    r(
        "GET",
        "/devices",
        Access::Role(Viewer),
        "Devices, filtered by ?selector=k=v,..., ?q=id-prefix and ?class=, paginated with ?after= and ?limit=",
    ),
    r(
        "GET",
        "/fleet",
        Access::Role(Viewer),
        "The fleet in numbers: devices per class, online, never seen, failing, revoked, per running release",
    ),
    r("GET", "/devices/{id}", Access::Role(Viewer), "One device with its hardware, last report and events"),
    r(
        "GET",
        "/devices/{id}/telemetry",
        Access::Role(Viewer),
        "One device per window, model and release: requests, errors, p50/p95/p99, J/inference, watts (?since=ms)",
    ),
    r("PUT", "/devices/{id}/labels", Access::Role(Operator), "Replace a device's labels"),
    r(
        "POST",
        "/devices/{id}/revoke",
        Access::Role(Operator),
        "Revoke a device: its certificate is refused from now on",
    ),
    r("GET", "/tokens", Access::Role(Admin), "API tokens (never their secrets)"),
    r("POST", "/tokens", Access::Role(Admin), "Create an API token with a role; the secret is shown once"),
    r("DELETE", "/tokens/{id}", Access::Role(Admin), "Revoke an API token"),
    r("GET", "/rollouts", Access::Role(Viewer), "Rollouts, newest first, with their gates' numbers (?model=)"),
    r(
        "POST",
        "/rollouts",
        Access::Role(Operator),
        "Start a rollout of a release to a selector, in waves with bake times and gates",
    ),
    r("GET", "/rollouts/{id}", Access::Role(Viewer), "One rollout: waves, state, every gate against its threshold"),
    r("POST", "/rollouts/{id}/pause", Access::Role(Operator), "Pause a running rollout"),
    r("POST", "/rollouts/{id}/resume", Access::Role(Operator), "Resume a paused rollout"),
    r("POST", "/rollouts/{id}/abort", Access::Role(Operator), "Abort a rollout: its devices go back to the baseline"),
    r(
        "POST",
        "/rollouts/{id}/promote",
        Access::Role(Operator),
        "Skip the remaining waves: every selected device gets the release",
    ),
    r("GET", "/audit", Access::Role(Viewer), "The audit log, newest first (?limit=, ?before=id, ?target=)"),
    r("GET", "/whoami", Access::Role(Viewer), "The calling token's name and role"),
    r("GET", "/openapi.json", Access::Public, "This document"),
];

fn access_text(a: Access) -> String {
    match a {
        Access::Public => "No credentials.".into(),
        Access::Role(role) => format!("API token with role `{role}` (or admin)."),
        Access::Device => "Device client certificate (mutual TLS).".into(),
        Access::ViewerOrDevice => "API token (viewer or above) or a device client certificate.".into(),
    }
}

pub fn build() -> utoipa::openapi::OpenApi {
    let mut paths = PathsBuilder::new();
    for route in ROUTES {
        let method = match route.method {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            "PUT" => HttpMethod::Put,
            _ => HttpMethod::Delete,
        };
        let op = OperationBuilder::new()
            .summary(Some(route.summary))
            .description(Some(access_text(route.access)))
            .response("default", ResponseBuilder::new().description("Errors are {\"error\": {\"code\", \"message\"}}"))
            .build();
        paths = paths.path(format!("/api/v1{}", route.path), PathItem::new(method, op));
    }
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("edgefleet control plane").version(env!("CARGO_PKG_VERSION")).build())
        .paths(paths.build())
        .build()
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(build())
}
