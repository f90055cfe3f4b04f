//! `GET /api/v1/openapi.json`: the API described from [`ROUTES`], the table that also drives the tests that
//! try every route with every role (so the document and the router cannot drift apart unnoticed), with every
//! request and response body's JSON schema, derived from the protocol types the handlers use (utoipa), so
//! generated clients and API fuzzers work from it.

use axum::Json;
use edgefleet_protocol::api::*;
use edgefleet_protocol::rollout::{CreateRollout, RolloutView};
use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApiBuilder, Ref, RefOr, ResponseBuilder};

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

/// A request or response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Empty,
    /// JSON of the named component schema.
    Json(&'static str),
    /// A JSON array of the named component schema.
    Array(&'static str),
    /// A signed document (`{"signed": …, "signatures": […]}`), checked against the trust root, not a schema.
    Signed(&'static str),
    /// Raw bytes.
    Bytes(&'static str),
    /// Free-form JSON.
    Any(&'static str),
}

/// What each route takes and answers: (request body, success status, response body). `None`: a route this
/// table does not know, which the tests refuse.
pub fn bodies(method: &str, path: &str) -> Option<(Body, u16, Body)> {
    use Body::*;
    Some(match (method, path) {
        ("GET", "/trust/roots") => (Empty, 200, Json("RootList")),
        ("GET", "/trust/roots/{version}") => (Empty, 200, Signed("a root.json")),
        ("POST", "/trust/roots") => (Signed("the next root.json, signed by the old and the new root keys"), 201, Empty),
        ("PUT", "/blobs/{digest}") => (Bytes("the blob, exactly Content-Length bytes"), 201, Json("BlobStored")),
        ("GET", "/blobs/{digest}") => {
            (Empty, 200, Bytes("the blob or the asked range (206); 307 to the object store when redirects are on"))
        }
        ("POST", "/releases") => {
            (Signed("a release manifest signed by a threshold of release keys"), 201, Json("ReleaseSummary"))
        }
        ("GET", "/models") => (Empty, 200, Array("ModelSummary")),
        ("GET", "/models/{model}/releases") => (Empty, 200, Array("ReleaseSummary")),
        ("GET", "/models/{model}/telemetry") => (Empty, 200, Json("ModelTelemetry")),
        ("GET", "/models/{model}/releases/{version}") => (Empty, 200, Signed("the release manifest as published")),
        ("GET", "/assignments") => (Empty, 200, Array("Assignment")),
        ("POST", "/assignments") => (Json("CreateAssignment"), 201, Json("Assignment")),
        ("DELETE", "/assignments/{id}") => (Empty, 204, Empty),
        ("POST", "/enrollment-tokens") => (Json("CreateEnrollToken"), 201, Json("EnrollTokenCreated")),
        ("POST", "/enroll") => (Json("EnrollRequest"), 201, Json("EnrollResponse")),
        ("POST", "/device/checkin") => (
            Json("DeviceReport"),
            200,
            Signed("the device's desired state, signed by the fleet key (304 when If-None-Match names it)"),
        ),
        ("POST", "/device/events") => (Array("DeviceEvent"), 200, Json("EventsAccepted")),
        ("POST", "/device/renew") => (Json("RenewRequest"), 200, Json("Renewed")),
        ("GET", "/devices") => (Empty, 200, Json("DevicePage")),
        ("GET", "/fleet") => (Empty, 200, Json("FleetOverview")),
        ("GET", "/devices/{id}") => (Empty, 200, Json("DeviceDetail")),
        ("GET", "/devices/{id}/telemetry") => (Empty, 200, Json("DeviceTelemetry")),
        ("PUT", "/devices/{id}/labels") => (Json("SetLabels"), 200, Json("SetLabels")),
        ("POST", "/devices/{id}/revoke") => (Empty, 204, Empty),
        ("GET", "/tokens") => (Empty, 200, Array("TokenInfo")),
        ("POST", "/tokens") => (Json("CreateToken"), 201, Json("TokenCreated")),
        ("DELETE", "/tokens/{id}") => (Empty, 204, Empty),
        ("GET", "/rollouts") => (Empty, 200, Array("RolloutView")),
        ("POST", "/rollouts") => (Json("CreateRollout"), 201, Json("RolloutView")),
        ("GET", "/rollouts/{id}") => (Empty, 200, Json("RolloutView")),
        (
            "POST",
            "/rollouts/{id}/pause" | "/rollouts/{id}/resume" | "/rollouts/{id}/abort" | "/rollouts/{id}/promote",
        ) => (Empty, 200, Json("RolloutView")),
        ("GET", "/audit") => (Empty, 200, Array("AuditEntry")),
        ("GET", "/whoami") => (Empty, 200, Json("WhoAmI")),
        ("GET", "/openapi.json") => (Empty, 200, Any("this document (OpenAPI 3.1)")),
        _ => return None,
    })
}

fn reference(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

/// Every body schema, with the schemas they refer to.
fn schemas() -> Vec<(String, RefOr<Schema>)> {
    fn add<T: ToSchema>(all: &mut Vec<(String, RefOr<Schema>)>) {
        all.push((T::name().into_owned(), T::schema()));
        T::schemas(all);
    }
    let mut all = Vec::new();
    add::<ErrorBody>(&mut all);
    add::<ModelSummary>(&mut all);
    add::<ReleaseSummary>(&mut all);
    add::<ModelTelemetry>(&mut all);
    add::<CreateAssignment>(&mut all);
    add::<Assignment>(&mut all);
    add::<CreateEnrollToken>(&mut all);
    add::<EnrollTokenCreated>(&mut all);
    add::<EnrollRequest>(&mut all);
    add::<EnrollResponse>(&mut all);
    add::<DeviceReport>(&mut all);
    add::<DeviceEvent>(&mut all);
    add::<EventsAccepted>(&mut all);
    add::<RenewRequest>(&mut all);
    add::<DevicePage>(&mut all);
    add::<FleetOverview>(&mut all);
    add::<DeviceDetail>(&mut all);
    add::<DeviceTelemetry>(&mut all);
    add::<SetLabels>(&mut all);
    add::<TokenInfo>(&mut all);
    add::<CreateToken>(&mut all);
    add::<TokenCreated>(&mut all);
    add::<CreateRollout>(&mut all);
    add::<RolloutView>(&mut all);
    add::<AuditEntry>(&mut all);
    add::<WhoAmI>(&mut all);
    add::<edgefleet_protocol::Sha256Digest>(&mut all);
    // Answers the handlers build as JSON values rather than protocol types.
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let integer = || ObjectBuilder::new().schema_type(Type::Integer);
    all.push((
        "RootList".into(),
        ObjectBuilder::new()
            .property("versions", ArrayBuilder::new().items(integer()))
            .property("latest", integer())
            .description(Some("The root versions the server holds; fetch each from /trust/roots/{version}"))
            .into(),
    ));
    all.push((
        "BlobStored".into(),
        ObjectBuilder::new()
            .property("sha256", reference("Sha256Digest"))
            .property("size", integer())
            .property("stored", ObjectBuilder::new().schema_type(Type::Boolean))
            .required("sha256")
            .required("size")
            .into(),
    ));
    all.push((
        "Renewed".into(),
        ObjectBuilder::new()
            .property("certificate_pem", string())
            .property("ca_pem", string())
            .required("certificate_pem")
            .required("ca_pem")
            .into(),
    ));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.dedup_by(|a, b| a.0 == b.0);
    all
}

fn content(body: Body) -> Option<(&'static str, utoipa::openapi::Content, Option<&'static str>)> {
    let json = |schema: RefOr<Schema>| ContentBuilder::new().schema(Some(schema)).build();
    match body {
        Body::Empty => None,
        Body::Json(name) => Some(("application/json", json(reference(name)), None)),
        Body::Array(name) => Some(("application/json", json(ArrayBuilder::new().items(reference(name)).into()), None)),
        Body::Signed(what) => {
            let envelope = ObjectBuilder::new()
                .property("signed", ObjectBuilder::new())
                .property("signatures", ArrayBuilder::new().items(ObjectBuilder::new()))
                .description(Some(what));
            Some(("application/json", json(envelope.into()), Some(what)))
        }
        Body::Any(what) => {
            Some(("application/json", json(ObjectBuilder::new().description(Some(what)).into()), Some(what)))
        }
        Body::Bytes(what) => Some((
            "application/octet-stream",
            json(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Binary)))
                    .into(),
            ),
            Some(what),
        )),
    }
}

pub fn build() -> utoipa::openapi::OpenApi {
    let mut paths = PathsBuilder::new();
    let error = ContentBuilder::new().schema(Some(reference("ErrorBody"))).build();
    for route in ROUTES {
        let method = match route.method {
            "GET" => HttpMethod::Get,
            "POST" => HttpMethod::Post,
            "PUT" => HttpMethod::Put,
            _ => HttpMethod::Delete,
        };
        let (request, status, response) = bodies(route.method, route.path).unwrap_or((Body::Empty, 200, Body::Empty));
        let mut ok = ResponseBuilder::new().description("Success");
        if let Some((mime, c, what)) = content(response) {
            ok = ok.content(mime, c).description(what.unwrap_or("Success"));
        }
        let mut op = OperationBuilder::new()
            .summary(Some(route.summary))
            .description(Some(access_text(route.access)))
            .response(status.to_string(), ok)
            .response(
                "default",
                ResponseBuilder::new().description("An error").content("application/json", error.clone()),
            );
        // Path parameters, `{name}` in the route, each a required string.
        for name in route.path.split('{').skip(1).filter_map(|p| p.split('}').next()) {
            let param = ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Path)
                .required(utoipa::openapi::Required::True)
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)));
            op = op.parameter(param);
        }
        if let Some((mime, c, what)) = content(request) {
            op = op.request_body(Some(
                RequestBodyBuilder::new()
                    .content(mime, c)
                    .description(what)
                    .required(Some(utoipa::openapi::Required::True))
                    .build(),
            ));
        }
        paths = paths.path(format!("/api/v1{}", route.path), PathItem::new(method, op.build()));
    }
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("edgefleet control plane").version(env!("CARGO_PKG_VERSION")).build())
        .paths(paths.build())
        .components(Some(ComponentsBuilder::new().schemas_from_iter(schemas()).build()))
        .build()
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_body_has_a_schema_and_every_reference_resolves() {
        for route in ROUTES {
            assert!(bodies(route.method, route.path).is_some(), "{} {} has no bodies", route.method, route.path);
        }
        let doc = serde_json::to_value(build()).expect("json");
        let components = doc["components"]["schemas"].as_object().expect("components");
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 50, "{} references", found.len());
        for r in found {
            let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r}"));
            assert!(components.contains_key(name), "{r} does not resolve");
        }
        // Bodies as the handlers take them: unknown fields refused, required fields required, ids as strings
        // with their patterns, the check-in's report and the rollout request among them.
        let s = |name: &str| &components[name];
        assert_eq!(s("DeviceReport")["additionalProperties"], false, "{}", s("DeviceReport"));
        let create = s("CreateRollout");
        let required: Vec<&str> =
            create["required"].as_array().expect("required").iter().filter_map(|v| v.as_str()).collect();
        assert!(
            required.contains(&"model") && required.contains(&"release") && required.contains(&"waves"),
            "{create}"
        );
        assert_eq!(s("DeviceId")["type"], "string");
        assert!(s("DeviceId")["pattern"].is_string());
        let checkin = &doc["paths"]["/api/v1/device/checkin"]["post"];
        assert_eq!(
            checkin["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/DeviceReport"
        );
        let events =
            &doc["paths"]["/api/v1/device/events"]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(events["items"]["$ref"], "#/components/schemas/DeviceEvent", "{events}");
        let labels = &doc["paths"]["/api/v1/devices/{id}/labels"]["put"]["parameters"][0];
        assert_eq!((&labels["name"], &labels["in"], &labels["required"]), (&"id".into(), &"path".into(), &true.into()));
        let created = &doc["paths"]["/api/v1/rollouts"]["post"]["responses"]["201"]["content"]["application/json"];
        assert_eq!(created["schema"]["$ref"], "#/components/schemas/RolloutView");
    }
}
