//! Request and response bodies of the REST API under `/api/v1`, shared by the server, the daemon and the CLI.
//! Timestamps on the wire are RFC 3339 strings; this crate keeps no time library.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, ModelName, ReleaseVersion, VariantId};

/// Every error answer: `{"error": {"code": "...", "message": "..."}}`. Codes are stable; messages are for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// The roles of API tokens. `admin` may do everything; `publisher` and `operator` each add their own powers to
/// `viewer`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TokenRole {
    Viewer,
    Publisher,
    Operator,
    Admin,
}

impl TokenRole {
    /// Whether a token of this role may call a route that needs `needed`.
    pub fn allows(self, needed: TokenRole) -> bool {
        self == needed || self == TokenRole::Admin || needed == TokenRole::Viewer
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Viewer => "viewer",
            TokenRole::Publisher => "publisher",
            TokenRole::Operator => "operator",
            TokenRole::Admin => "admin",
        }
    }
}

impl fmt::Display for TokenRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TokenRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(TokenRole::Viewer),
            "publisher" => Ok(TokenRole::Publisher),
            "operator" => Ok(TokenRole::Operator),
            "admin" => Ok(TokenRole::Admin),
            _ => Err(format!("role {s:?} is not one of viewer, publisher, operator, admin")),
        }
    }
}

// === labels and selectors ===

/// Device labels: lowercase keys (`hw.npu`, `region`) to values.
pub type Labels = BTreeMap<String, String>;

/// A label selector `key=value,key2=value2`: a device matches when it has every pair. The empty selector
/// matches every device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector(pub Vec<(String, String)>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {selector:?}: {problem}")]
pub struct SelectorError {
    pub selector: String,
    pub problem: String,
}

/// Label keys and values: 1 to 63 characters of `[a-z0-9._/-]` (keys) or `[A-Za-z0-9._-]` (values).
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let key_ok = !key.is_empty()
        && key.len() <= 63
        && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '/' | '-'));
    if !key_ok {
        return Err(format!("label key {key:?} must be 1 to 63 characters of a-z 0-9 . _ / -"));
    }
    let value_ok = !value.is_empty()
        && value.len() <= 63
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !value_ok {
        return Err(format!("label value {value:?} must be 1 to 63 characters of A-Z a-z 0-9 . _ -"));
    }
    Ok(())
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, SelectorError> {
        let err = |problem: String| SelectorError { selector: s.to_owned(), problem };
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (k, v) = term.split_once('=').ok_or_else(|| err(format!("{term:?} is not key=value")))?;
            check_label(k.trim(), v.trim()).map_err(err)?;
            terms.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        terms.sort();
        terms.dedup();
        Ok(Self(terms))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Selector {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("Label selector: `key=value` pairs joined by commas; empty selects every device"))
            .examples([serde_json::json!("region=eu,hw.npu=hexagon")])
            .into()
    }
}
#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Selector {}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

// === hardware ===

/// What a device is, as its daemon detects it: what the server picks variants by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    /// `qualcomm-hexagon`, `nvidia-jetson`, `intel-npu`, `raspberry-pi`, `x86-server`, ...
    pub device_class: String,
    /// `x86_64`, `aarch64`.
    pub arch: String,
    /// Execution providers to try, best first, ending with `CPUExecutionProvider`.
    pub execution_providers: Vec<String>,
    /// llama.cpp backends to try for language models, best first, ending with `CPU`.
    #[serde(default)]
    pub llm_backends: Vec<String>,
    pub memory_bytes: u64,
    /// SoC and NPU identifiers (`sm8550`, `htp-v73`, `tegra234`).
    #[serde(default)]
    pub soc: Vec<String>,
    /// `available` or `unavailable`, with the sensor kind when available (`rapl`, `hwmon`, ...).
    #[serde(default)]
    pub power: String,
}

// === enrollment ===

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time enrollment token an operator created.
    pub token: String,
    pub device_id: DeviceId,
    /// A PKCS#10 certificate signing request (PEM) for the device's own key pair.
    pub csr_pem: String,
    pub hardware: HardwareProfile,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub device_id: DeviceId,
    /// The device's client certificate (PEM), signed by the control plane's device CA.
    pub certificate_pem: String,
    /// The device CA (PEM).
    pub ca_pem: String,
    pub labels: Labels,
    /// Seconds between check-ins the server suggests.
    pub checkin_interval_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollToken {
    #[serde(default)]
    pub labels: Labels,
    /// Lifetime in seconds (default one day).
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollTokenCreated {
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
    pub labels: Labels,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub csr_pem: String,
}

// === check-in ===

/// What a device reports at each check-in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceReport {
    #[serde(default)]
    pub models: Vec<ModelStatus>,
    #[serde(default)]
    pub last_error: Option<String>,
    /// SHA-256 of the device's hardware profile, so a changed profile is noticed.
    #[serde(default)]
    pub hardware_digest: Option<String>,
    #[serde(default)]
    pub hardware: Option<HardwareProfile>,
    /// The version of the trust root the device verifies with.
    #[serde(default)]
    pub root_version: Option<u64>,
    /// The sequence of the last desired state the device accepted: a server restored from an older backup
    /// continues above it (the device refuses anything at or below it).
    #[serde(default)]
    pub desired_sequence: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ModelStatus {
    pub model: ModelName,
    #[serde(default)]
    pub active: Option<SlotStatus>,
    #[serde(default)]
    pub staged: Option<SlotStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SlotStatus {
    pub slot: String,
    pub release: ReleaseVersion,
    pub variant: VariantId,
    #[serde(default)]
    pub provider: Option<String>,
    /// `downloading`, `verifying`, `staged`, `serving`, `baking`, `committed`, `failed`.
    pub state: String,
}

/// Device events, sent with an idempotency key so a retry is harmless.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeviceEvent {
    /// Unique per event on this device; a repeated id is accepted and ignored.
    pub id: String,
    pub kind: EventKind,
    #[serde(default)]
    pub model: Option<ModelName>,
    #[serde(default)]
    pub release: Option<ReleaseVersion>,
    #[serde(default)]
    pub variant: Option<VariantId>,
    #[serde(default)]
    pub detail: String,
    /// When it happened on the device, RFC 3339.
    pub at: String,
    /// A `measured` event: each variant the device ran on the release's golden inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<crate::rollout::VariantMeasurement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DownloadStarted,
    DownloadFailed,
    Verified,
    VerificationFailed,
    /// The model did not load (ONNX Runtime refused it, or it does not fit the memory budget).
    LoadFailed,
    GoldenFailed,
    Installed,
    Swapped,
    Committed,
    RolledBack,
    NoVariantFits,
    Refused,
    /// The desired state no longer names the model: unloaded, its slots deleted.
    Removed,
    /// The variants the desired state asked to measure were run on the release's golden inputs (the event's
    /// `measurements`).
    Measured,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventsAccepted {
    pub accepted: usize,
    pub duplicates: usize,
}

// === registry and operations ===

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelSummary {
    pub model: ModelName,
    pub latest_version: ReleaseVersion,
    pub releases: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseSummary {
    pub model: ModelName,
    pub version: ReleaseVersion,
    pub security_floor: ReleaseVersion,
    pub description: String,
    pub variants: Vec<VariantId>,
    pub published_at: String,
    pub published_by: String,
    /// Each variant's precision, format, sizes and requirements, from the signed manifest.
    #[serde(default)]
    pub variant_details: Vec<VariantInfo>,
    /// Key ids of the release keys whose signatures the manifest carries.
    #[serde(default)]
    pub signed_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VariantInfo {
    pub id: VariantId,
    pub precision: String,
    pub format: String,
    /// The model file as loaded.
    pub size_bytes: u64,
    /// What devices download (zstd).
    pub download_bytes: u64,
    pub execution_providers: Vec<String>,
    pub arch: Vec<String>,
    pub soc: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateAssignment {
    pub model: ModelName,
    pub version: ReleaseVersion,
    #[serde(default)]
    pub selector: Selector,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Assignment {
    pub id: i64,
    pub model: ModelName,
    pub version: ReleaseVersion,
    pub selector: Selector,
    pub created_at: String,
    pub created_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub role: TokenRole,
    /// Lifetime in seconds; absent: until revoked.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    pub id: i64,
    pub name: String,
    pub role: TokenRole,
    /// Shown once; only its hash is stored.
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub role: TokenRole,
    pub created_at: String,
    pub revoked: bool,
    /// RFC 3339; absent: never.
    #[serde(default)]
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceSummary {
    pub id: DeviceId,
    pub labels: Labels,
    pub device_class: String,
    pub enrolled_at: String,
    pub last_seen: Option<String>,
    pub revoked: bool,
    /// Seen within the server's online window (three check-in intervals).
    #[serde(default)]
    pub online: bool,
    /// What its active slots serve, from its last report.
    #[serde(default)]
    pub running: Vec<Running>,
    /// The error its last report carried, if any.
    #[serde(default)]
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Running {
    pub model: ModelName,
    pub release: ReleaseVersion,
}

/// `GET /api/v1/whoami`: the calling token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WhoAmI {
    pub name: String,
    pub role: TokenRole,
}

/// `GET /api/v1/fleet`: the fleet in numbers, computed by the database (cheap at a million devices).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FleetOverview {
    /// Enrolled and not revoked.
    pub devices: u64,
    pub online: u64,
    /// Seen once, not within the online window.
    pub offline: u64,
    pub never_seen: u64,
    /// Whose last report carries an error.
    pub failing: u64,
    pub revoked: u64,
    /// A device is online when seen within this many seconds.
    pub online_window_secs: u64,
    pub by_class: Vec<ClassCount>,
    /// Per model and release in the devices' active slots (revoked devices excluded).
    pub by_release: Vec<ReleaseCount>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClassCount {
    pub device_class: String,
    pub devices: u64,
    pub online: u64,
    pub never_seen: u64,
    pub failing: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseCount {
    pub model: ModelName,
    pub release: ReleaseVersion,
    pub devices: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub summary: DeviceSummary,
    pub hardware: HardwareProfile,
    pub report: Option<DeviceReport>,
    pub desired_sequence: Option<u64>,
    pub events: Vec<DeviceEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DevicePage {
    pub devices: Vec<DeviceSummary>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<DeviceId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetLabels {
    pub labels: Labels,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub source: String,
    pub detail: serde_json::Value,
}

/// `GET /api/v1/models/{model}/telemetry`: what each release did per device class and time window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelTelemetry {
    pub model: ModelName,
    pub window_secs: u64,
    pub windows: Vec<ReleaseWindow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseWindow {
    /// RFC 3339.
    pub window_start: String,
    pub release: ReleaseVersion,
    pub device_class: String,
    #[serde(flatten)]
    pub stats: WindowStats,
}

/// What devices reported over one window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Absent where no device has a power sensor: never a zero standing in for "unknown".
    pub joules_per_inference: Option<f64>,
    /// Average power while serving, in watts: the energy measured over exports that had inferences, divided
    /// by the window's length; summed over the group's devices (one device: its own). Absent without a sensor.
    pub watts: Option<f64>,
    pub installs: u64,
    pub install_failures: u64,
    /// Language models only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmWindowStats>,
    /// Language models under a routing policy only: who answered and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteWindowStats>,
}

/// How a language model's requests were routed in a window: by tier and reason, and what the cloud calls cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteWindowStats {
    pub requests: u64,
    pub local: u64,
    pub cloud: u64,
    /// `cloud ÷ requests`.
    pub cloud_share: f64,
    /// Requests per routing reason (`rules`, `low_confidence`, `battery`, `cloud_failed`, …), reasons seen only.
    pub by_reason: std::collections::BTreeMap<String, u64>,
    /// Cloud calls that failed (the local model answered instead, or a `cloud_only` request failed).
    pub cloud_errors: u64,
    pub cloud_bytes_sent: u64,
    pub cloud_p50_ms: Option<f64>,
    pub cloud_p95_ms: Option<f64>,
}

/// A language model's numbers in a window: time to first token, decoding speed, tokens, energy per token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LlmWindowStats {
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p95_ms: Option<f64>,
    pub tpot_p95_ms: Option<f64>,
    /// One stream's decoding speed: 1 / the median time per output token.
    pub tokens_per_second: Option<f64>,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// Absent where no device has a power sensor.
    pub joules_per_token: Option<f64>,
}

/// `GET /api/v1/devices/{id}/telemetry`: one device's windows per model and release.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceTelemetry {
    pub device_id: DeviceId,
    pub window_secs: u64,
    pub windows: Vec<DeviceWindow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceWindow {
    /// RFC 3339.
    pub window_start: String,
    pub model: ModelName,
    pub release: ReleaseVersion,
    #[serde(flatten)]
    pub stats: WindowStats,
}

/// The header a check-in answer carries to hint the next interval, in seconds.
pub const CHECKIN_INTERVAL_HEADER: &str = "x-edgefleet-checkin-interval";
/// On every check-in answer: the server's latest trust-root version. A device behind it walks the chain
/// (`GET /api/v1/trust/roots/{n}`), so a rotation reaches running devices without a restart.
pub const ROOT_VERSION_HEADER: &str = "x-edgefleet-root-version";
