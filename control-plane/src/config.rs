//! Server configuration: a TOML file, overridden by `EDGEFLEET_*` environment variables, overridden by flags
//! (the last two through clap, in `main.rs`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on (TLS). Default `127.0.0.1:8443`.
    pub listen: String,
    /// Where the database (SQLite default), blobs, TLS material and the device CA live.
    pub data_dir: PathBuf,
    /// `sqlite:///path/db.sqlite` or `postgres://...`; default: SQLite `edgefleet.db` in the data directory.
    pub database_url: Option<String>,
    /// The server's certificate chain and key (PEM). Without both, a self-signed pair is made in the data dir.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// The signed `root.json` to trust, imported at start if the database has no root yet (later versions are
    /// added through the API).
    pub trust_root: Option<PathBuf>,
    /// The fleet role's private key (signs desired-state documents). Must be a `fleet` key of the root.
    pub fleet_key: Option<PathBuf>,
    /// Where blobs live: `s3://bucket[/prefix]` for an S3-compatible store (credentials from the usual
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` variables), or a directory; default `<data_dir>/blobs`.
    pub blobs: Option<String>,
    /// The S3 endpoint (another provider, MinIO, a gateway) and region; default AWS's, or `AWS_ENDPOINT_URL`
    /// and `AWS_REGION`.
    pub blob_endpoint: Option<String>,
    pub blob_region: Option<String>,
    /// Allow a plain-HTTP endpoint (default false).
    pub blob_allow_http: bool,
    /// How devices get blobs from an S3 store: `proxy` (through the server, the default) or `redirect` (a 307
    /// to a presigned URL valid for `blob_redirect_secs`, default 300).
    pub blob_downloads: crate::blobs::Downloads,
    pub blob_redirect_secs: u64,
    /// The device CA's certificate and key (PEM), shared by every replica. Without them, the CA lives in the
    /// data directory (SQLite) or in the database (PostgreSQL), made once for the fleet.
    pub device_ca_cert: Option<PathBuf>,
    pub device_ca_key: Option<PathBuf>,
    /// Largest blob accepted, in bytes (default 8 GiB).
    pub max_blob_bytes: u64,
    /// Largest JSON request body, in bytes (default 1 MiB; releases may be as large as the manifest limit).
    pub max_json_bytes: usize,
    /// Lifetime of desired-state documents, in seconds (default 1 hour). Re-issued at half-life.
    pub desired_ttl_secs: u64,
    /// Check-in interval suggested to devices, in seconds (default 60).
    pub checkin_interval_secs: u64,
    /// Longest long-poll a device may ask for, in seconds (default 60).
    pub max_wait_secs: u64,
    /// How often batched `last_seen` writes are flushed, in milliseconds (default 1000).
    pub flush_interval_ms: u64,
    /// Lifetime of device client certificates, in days (default 365).
    pub device_cert_days: i64,
    /// Telemetry rollup window, in seconds (default 60).
    pub telemetry_window_secs: u64,
    /// How often telemetry rollups are written, in milliseconds (default 1000).
    pub telemetry_flush_ms: u64,
    /// How long rollups are kept, in hours (default 720, 30 days).
    pub telemetry_retention_hours: u64,
    /// Largest OTLP export accepted, in bytes (default 4 MiB).
    pub telemetry_max_export_bytes: usize,
    /// OTLP exports per second one device may send (default 1), and the burst it may save up (default 20).
    pub telemetry_exports_per_sec: f64,
    pub telemetry_burst: f64,
    /// Seconds between rollout evaluations (default 10).
    pub rollout_eval_secs: f64,
    /// How far before a rollout started the baseline's numbers are taken from, in seconds (default 3600).
    pub rollout_baseline_lookback_secs: u64,
    /// Serve `/metrics` without a token (default false: a viewer token is needed, as Prometheus'
    /// `authorization` scrape setting sends).
    pub metrics_public: bool,
    /// Check-ins one device may make per second (default 5), and the burst it may save up (default 60): a
    /// device checks in every minute or long-polls, and at once after each change; far more is a broken or
    /// hostile device, answered 429 with `Retry-After` before its body is read. Event reports likewise.
    pub checkins_per_sec: f64,
    pub checkin_burst: f64,
    pub events_per_sec: f64,
    pub events_burst: f64,
    /// Enrollments per second from one source address (default 20, bursts of 200: a provisioning station
    /// enrolls in batches; a stranger guessing tokens does not get far).
    pub enrollments_per_sec: f64,
    pub enrollment_burst: f64,
    /// Devices each per-device cache of the server holds (documents, reports, certificate serials, telemetry
    /// series; default 250,000): the least recently active beyond it are read back from the database when they
    /// return.
    pub device_cache_entries: u64,
    /// How long device events are kept, in days (default 90), and audit entries (default 400).
    pub events_retention_days: u64,
    pub audit_retention_days: u64,
    /// PostgreSQL replicas: a server that has not read the change log for this many seconds (its database
    /// connection is gone) answers check-ins 503 and is not ready, rather than serve what it cannot vouch for
    /// (default 5).
    pub replica_stale_secs: f64,
    /// Connections served at once (default 10,000); more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Seconds a client has for its TLS handshake, and for each request's headers (default 10).
    pub header_timeout_secs: f64,
    /// Seconds a connection may sit with no request in flight and nothing moving before it is closed
    /// (default 120: longer than a device's check-in interval would be wasteful, shorter than a long-poll
    /// does not matter — a long-poll in flight is not idle).
    pub idle_timeout_secs: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            data_dir: PathBuf::from("edgefleet-data"),
            database_url: None,
            tls_cert: None,
            tls_key: None,
            trust_root: None,
            fleet_key: None,
            blobs: None,
            blob_endpoint: None,
            blob_region: None,
            blob_allow_http: false,
            blob_downloads: crate::blobs::Downloads::Proxy,
            blob_redirect_secs: 300,
            device_ca_cert: None,
            device_ca_key: None,
            max_blob_bytes: 8 << 30,
            max_json_bytes: 1 << 20,
            desired_ttl_secs: 3600,
            checkin_interval_secs: 60,
            max_wait_secs: 60,
            flush_interval_ms: 1000,
            device_cert_days: 365,
            telemetry_window_secs: 60,
            telemetry_flush_ms: 1000,
            telemetry_retention_hours: 720,
            telemetry_max_export_bytes: 4 << 20,
            telemetry_exports_per_sec: 1.0,
            telemetry_burst: 20.0,
            rollout_eval_secs: 10.0,
            rollout_baseline_lookback_secs: 3600,
            metrics_public: false,
            checkins_per_sec: 5.0,
            checkin_burst: 60.0,
            events_per_sec: 5.0,
            events_burst: 60.0,
            enrollments_per_sec: 20.0,
            enrollment_burst: 200.0,
            device_cache_entries: 250_000,
            events_retention_days: 90,
            audit_retention_days: 400,
            replica_stale_secs: 5.0,
            max_connections: 10_000,
            header_timeout_secs: 10.0,
            idle_timeout_secs: 120.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }

    /// The database URL, defaulting to SQLite in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.data_dir.join("edgefleet.db").display()))
    }
}
