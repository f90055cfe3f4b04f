//! `edgefleet-server`: the control plane an organisation runs. Registry of signed releases and their blobs,
//! device enrollment with a built-in CA, mutual-TLS check-in answering signed desired-state documents, device
//! inventory, API tokens with roles, an audit log, the OTLP metrics receiver with its rollups, Prometheus
//! `/metrics`, and rollouts in waves gated on what the fleet reports; over SQLite (embedded default) or
//! PostgreSQL.
//!
//! Invariant: nothing here loads or runs a model, and nothing here knows a device's file layout.

pub mod api;
pub mod app;
pub mod blobs;
pub mod changes;
pub mod config;
pub mod desired;
pub mod limiter;
pub mod rollout;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
