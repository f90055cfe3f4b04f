//! `GET /metrics`: the fleet in Prometheus' text format, for an SRE's graphs. Labels are bounded: device class,
//! model, release, rollout, outcome, reason; never a device id. Inference and energy series count what the
//! OTLP receiver took in since this server started (Prometheus' `rate()` handles restarts); the latency and
//! energy-per-inference gauges cover the last five minutes.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use edgefleet_protocol::telemetry::{DURATION_BUCKETS, ROUTE_REASONS};

use super::{ApiResult, Principal};
use crate::state::{AppState, now_ms};
use crate::telemetry::FleetTotals;
use crate::telemetry::otlp::{NBUCKETS, Reason};
use crate::telemetry::quantile;

/// A label value in the exposition format: backslash, quote and newline escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn help(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
        let _ = if l.is_empty() {
            writeln!(self.0, "{name} {value}")
        } else {
            writeln!(self.0, "{name}{{{}}} {value}", l.join(","))
        };
    }

    /// A histogram on the duration buckets: its cumulative `_bucket` lines and `_count`.
    fn histogram(&mut self, name: &str, base: &[(&str, &str)], buckets: &[u64; NBUCKETS]) {
        let mut cumulative = 0;
        for (i, c) in buckets.iter().enumerate() {
            cumulative += c;
            let le = DURATION_BUCKETS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            let mut l = base.to_vec();
            l.push(("le", &le));
            self.line(&format!("{name}_bucket"), &l, cumulative as f64);
        }
        self.line(&format!("{name}_count"), base, cumulative as f64);
    }
}

pub async fn prometheus(State(state): State<AppState>, mut parts: axum::http::request::Parts) -> ApiResult<Response> {
    if !state.config.metrics_public {
        use axum::extract::FromRequestParts;
        Principal::from_request_parts(&mut parts, &state).await?.require(edgefleet_protocol::api::TokenRole::Viewer)?;
    }
    let now = now_ms();
    let mut o = Out(String::with_capacity(16 << 10));

    // Devices.
    let online_after = now - 3 * (state.config.checkin_interval_secs as i64) * 1000;
    o.help(
        "edgefleet_devices",
        "gauge",
        "Enrolled devices by class and status (online: checked in within three intervals)",
    );
    for (class, status, n) in state.store.device_counts(online_after).await? {
        o.line("edgefleet_devices", &[("device_class", &class), ("status", &status)], n as f64);
    }
    o.help(
        "edgefleet_devices_running",
        "gauge",
        "Devices by the release in their active slot and whether they report an error (from their last reports)",
    );
    for (m, v, failing, n) in state.store.running_counts().await? {
        let health = if failing { "error" } else { "ok" };
        o.line(
            "edgefleet_devices_running",
            &[("model", &m), ("release", &v.to_string()), ("health", health)],
            n as f64,
        );
    }
    o.help(
        "edgefleet_checkins_total",
        "counter",
        "Device check-ins answered, by result (changed: a new desired state; unchanged: 304)",
    );
    o.line("edgefleet_checkins_total", &[("result", "changed")], state.checkins_changed.load(Ordering::Relaxed) as f64);
    o.line(
        "edgefleet_checkins_total",
        &[("result", "unchanged")],
        state.checkins_unchanged.load(Ordering::Relaxed) as f64,
    );

    // Rollouts: active ones, and those that ended in the last day.
    o.help("edgefleet_rollout_state", "gauge", "1 for each rollout's current state");
    let mut shares = Vec::new();
    for row in state.store.rollouts().await? {
        if !row.state.is_active() && row.updated_at < now - 86_400_000 {
            continue;
        }
        let r = &row.rollout;
        let release = r.release.to_string();
        o.line(
            "edgefleet_rollout_state",
            &[("rollout", &r.id), ("model", r.model.as_str()), ("release", &release), ("state", row.state.name())],
            1.0,
        );
        shares.push((r.id.clone(), crate::rollout::share(r, &row.state)));
    }
    o.help("edgefleet_rollout_share_percent", "gauge", "Share of a rollout's devices meant to run its new release");
    for (id, share) in shares {
        o.line("edgefleet_rollout_share_percent", &[("rollout", &id)], share);
    }

    // Inference, latency, energy per (model, release, device class).
    let (totals, recent) = state.ingest.fleet(now);
    o.help("edgefleet_inference_requests_total", "counter", "Inference requests devices reported, by outcome");
    for ((m, v, class), t) in &totals {
        let v = v.to_string();
        for (outcome, n) in [("ok", t.ok), ("error", t.errors)] {
            o.line(
                "edgefleet_inference_requests_total",
                &[("model", m.as_str()), ("release", &v), ("device_class", class), ("outcome", outcome)],
                n as f64,
            );
        }
    }
    o.help("edgefleet_inference_duration_seconds", "histogram", "Time devices took to answer inference requests");
    for ((m, v, class), t) in &totals {
        let v = v.to_string();
        let base = [("model", m.as_str()), ("release", v.as_str()), ("device_class", class.as_str())];
        o.histogram("edgefleet_inference_duration_seconds", &base, &t.buckets);
        o.line("edgefleet_inference_duration_seconds_sum", &base, t.duration_sum);
    }
    o.help("edgefleet_inference_latency_seconds", "gauge", "Inference latency quantiles over the last five minutes");
    o.help(
        "edgefleet_energy_per_inference_joules",
        "gauge",
        "Energy per inference over the last five minutes, from devices with a power sensor only",
    );
    for ((m, v, class), t) in &recent {
        let v = v.to_string();
        for q in ["0.5", "0.95", "0.99"] {
            if let Some(s) = quantile(&t.buckets, q.parse().unwrap_or(0.5)) {
                o.line(
                    "edgefleet_inference_latency_seconds",
                    &[("model", m.as_str()), ("release", &v), ("device_class", class), ("quantile", q)],
                    s,
                );
            }
        }
        if t.energy_inferences > 0 {
            o.line(
                "edgefleet_energy_per_inference_joules",
                &[("model", m.as_str()), ("release", &v), ("device_class", class)],
                t.energy_j / t.energy_inferences as f64,
            );
        }
    }
    o.help(
        "edgefleet_energy_joules_total",
        "counter",
        "Energy attributed to inference, from devices with a power sensor",
    );
    o.help("edgefleet_energy_inferences_total", "counter", "Inferences measured with an energy counter beside them");
    o.help("edgefleet_installs_total", "counter", "Install attempts devices reported, by outcome");
    for ((m, v, class), t) in &totals {
        let v = v.to_string();
        let l = [("model", m.as_str()), ("release", v.as_str()), ("device_class", class.as_str())];
        if t.energy_inferences > 0 {
            o.line("edgefleet_energy_joules_total", &l, t.energy_j);
            o.line("edgefleet_energy_inferences_total", &l, t.energy_inferences as f64);
        }
        let mut with = l.to_vec();
        with.push(("outcome", "committed"));
        o.line("edgefleet_installs_total", &with, (t.installs - t.install_failures) as f64);
        with[3] = ("outcome", "failed");
        o.line("edgefleet_installs_total", &with, t.install_failures as f64);
    }

    // Language models per (model, release, device class): time to first token and per output token as
    // histograms, tokens, and over the last five minutes TTFT quantiles, decoding speed and energy per token.
    for (name, help, pick) in [
        (
            "edgefleet_llm_time_to_first_token_seconds",
            "Time from a request to its first generated token (language models)",
            (|t: &FleetTotals| t.ttft) as fn(&FleetTotals) -> [u64; NBUCKETS],
        ),
        ("edgefleet_llm_time_per_output_token_seconds", "Time per generated token after the first", |t| t.tpot),
    ] {
        o.help(name, "histogram", help);
        for ((m, v, class), t) in totals.iter().filter(|(_, t)| t.ttft.iter().any(|b| *b > 0)) {
            let v = v.to_string();
            let base = [("model", m.as_str()), ("release", v.as_str()), ("device_class", class.as_str())];
            o.histogram(name, &base, &pick(t));
        }
    }
    o.help("edgefleet_llm_tokens_total", "counter", "Tokens language models read (input) and wrote (output)");
    for ((m, v, class), t) in totals.iter().filter(|(_, t)| t.tokens_in + t.tokens_out > 0) {
        let v = v.to_string();
        for (kind, n) in [("input", t.tokens_in), ("output", t.tokens_out)] {
            o.line(
                "edgefleet_llm_tokens_total",
                &[("model", m.as_str()), ("release", &v), ("device_class", class), ("type", kind)],
                n as f64,
            );
        }
    }
    o.help("edgefleet_llm_time_to_first_token_quantile_seconds", "gauge", "TTFT quantiles over the last five minutes");
    o.help(
        "edgefleet_llm_tokens_per_second",
        "gauge",
        "One stream's decoding speed (1 / median time per token), last five minutes",
    );
    o.help(
        "edgefleet_llm_energy_per_token_joules",
        "gauge",
        "Energy per output token over the last five minutes, from devices with a power sensor only",
    );
    for ((m, v, class), t) in &recent {
        let v = v.to_string();
        let l = [("model", m.as_str()), ("release", v.as_str()), ("device_class", class.as_str())];
        for q in ["0.5", "0.95"] {
            if let Some(s) = quantile(&t.ttft, q.parse().unwrap_or(0.5)) {
                let mut with = l.to_vec();
                with.push(("quantile", q));
                o.line("edgefleet_llm_time_to_first_token_quantile_seconds", &with, s);
            }
        }
        if let Some(s) = quantile(&t.tpot, 0.5).filter(|s| *s > 0.0) {
            o.line("edgefleet_llm_tokens_per_second", &l, 1.0 / s);
        }
        if t.energy_tokens > 0 {
            o.line("edgefleet_llm_energy_per_token_joules", &l, t.energy_j / t.energy_tokens as f64);
        }
    }

    // Hybrid routing per (model, release, device class): requests by reason, those the cloud answered, and the
    // cloud calls' failures, bytes and latency.
    o.help("edgefleet_route_requests_total", "counter", "Routed language-model requests, by routing reason");
    o.help("edgefleet_route_cloud_requests_total", "counter", "Routed language-model requests the cloud answered");
    o.help("edgefleet_route_cloud_errors_total", "counter", "Cloud calls that failed (the local model answered)");
    o.help("edgefleet_route_cloud_bytes_total", "counter", "Request bytes devices sent to cloud tiers");
    o.help("edgefleet_route_cloud_duration_seconds", "histogram", "Time cloud tiers took to answer whole");
    for ((m, v, class), t) in totals.iter().filter(|(_, t)| t.route.iter().any(|n| *n > 0) || t.cloud_errors > 0) {
        let v = v.to_string();
        let base = [("model", m.as_str()), ("release", v.as_str()), ("device_class", class.as_str())];
        for (reason, n) in ROUTE_REASONS.iter().zip(t.route).filter(|(_, n)| *n > 0) {
            let mut l = base.to_vec();
            l.push(("reason", reason));
            o.line("edgefleet_route_requests_total", &l, n as f64);
        }
        o.line("edgefleet_route_cloud_requests_total", &base, t.route_cloud as f64);
        o.line("edgefleet_route_cloud_errors_total", &base, t.cloud_errors as f64);
        o.line("edgefleet_route_cloud_bytes_total", &base, t.cloud_bytes as f64);
        o.histogram("edgefleet_route_cloud_duration_seconds", &base, &t.cloud);
    }

    // The receiver itself.
    let c = &state.ingest.counters;
    o.help("edgefleet_otlp_exports_total", "counter", "OTLP exports received, by result");
    for (result, n) in
        [("accepted", &c.exports), ("malformed", &c.exports_malformed), ("rate_limited", &c.exports_rate_limited)]
    {
        o.line("edgefleet_otlp_exports_total", &[("result", result)], n.load(Ordering::Relaxed) as f64);
    }
    o.help(
        "edgefleet_otlp_points_total",
        "counter",
        "OTLP data points, by result (stale: duplicates and reordered exports)",
    );
    for (result, n) in [("accepted", &c.points_accepted), ("stale", &c.points_stale), ("ignored", &c.points_ignored)] {
        o.line("edgefleet_otlp_points_total", &[("result", result)], n.load(Ordering::Relaxed) as f64);
    }
    o.help("edgefleet_otlp_points_refused_total", "counter", "OTLP data points refused, by reason");
    for r in Reason::ALL {
        o.line("edgefleet_otlp_points_refused_total", &[("reason", r.as_str())], c.refused(r) as f64);
    }
    o.help("edgefleet_telemetry_flush_failures_total", "counter", "Rollup writes that failed and were retried");
    o.line("edgefleet_telemetry_flush_failures_total", &[], c.flushes_failed.load(Ordering::Relaxed) as f64);

    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], o.0).into_response())
}
