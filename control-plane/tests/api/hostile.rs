//! Unauthenticated clients that hold connections without using them (slowloris): a connection that never
//! completes its handshake, or trickles a request's headers, is closed after the header timeout; the
//! connection cap makes further clients wait rather than cost the server descriptors; a long-poll in flight
//! is not idle and is answered in full.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn addr(app: &TestApp) -> String {
    app.url.trim_start_matches("https://").to_owned()
}

/// Waits (at most `within`) for the server to close `read`'s connection: true when it did.
async fn closed_within<R: tokio::io::AsyncRead + Unpin>(read: &mut R, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline.into(), read.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn slow_clients_are_cut_off_and_long_polls_are_not(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.header_timeout_secs = 1.0;
        c.idle_timeout_secs = 1.0;
        c.max_connections = 3;
    })
    .await;
    // A TCP connection that never starts TLS.
    let mut silent = TcpStream::connect(addr(&app)).await.expect("connect");
    // A TLS connection that trickles its request's headers, a byte every 100 ms, never finishing them.
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_config(&app.server_cert, None)));
    let tcp = TcpStream::connect(addr(&app)).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let trickle = tls.connect(name, tcp).await.expect("handshake");
    let (mut reader, mut writer) = tokio::io::split(trickle);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nx-slow: ".iter().chain(b"a".repeat(200).iter()) {
            if writer.write_all(&[*b]).await.is_err() || writer.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Both hold a slot, and one of the three is left: a real client is served meanwhile.
    let ok = app.client().get(format!("{}/healthz", app.url)).send().await.expect("healthz");
    assert_eq!(ok.status(), 200);
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await, "the silent connection was not closed");
    assert!(closed_within(&mut reader, Duration::from_secs(10)).await, "the trickling client was not cut off");
    assert!(started.elapsed() < Duration::from_secs(10), "cut off long before its 21 s of trickle");
    writer.abort();

    // The cap: three idle connections fill every slot; a fourth client waits until the server drops them.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(addr(&app)).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waited = Instant::now();
    let r = app.client().get(format!("{}/healthz", app.url)).send().await.expect("served once a slot frees");
    assert_eq!(r.status(), 200);
    assert!(waited.elapsed() >= Duration::from_millis(500), "served at once past the cap: {:?}", waited.elapsed());
    for mut c in idle {
        assert!(closed_within(&mut c, Duration::from_secs(10)).await);
    }

    // A long-poll check-in of 3 s, well past the 1 s idle timeout, is answered, not cut.
    let dev = app.enroll("dev-poll", &[("region", "eu")], hardware("x86-server", &["CPUExecutionProvider"])).await;
    let first = dev.client.post(app.url("/device/checkin")).json(&serde_json::json!({})).send().await.expect("checkin");
    let etag = first.headers().get("etag").expect("etag").clone();
    let polled = Instant::now();
    let r = dev
        .client
        .post(app.url("/device/checkin?wait=3"))
        .header("if-none-match", etag)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("a long-poll is answered");
    assert_eq!(r.status(), 304);
    assert!(polled.elapsed() >= Duration::from_millis(2500), "it did wait: {:?}", polled.elapsed());
}

crate::both_backends!(slow_clients_are_cut_off_and_long_polls_are_not);

/// A database restored from an older backup remembers a lower desired-state sequence than its devices accepted:
/// the device's report says what it accepted, and the server continues above it instead of sending documents the
/// device refuses as replays.
async fn the_sequence_continues_above_what_the_device_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let dev = app.enroll("dev-seq", &[("region", "eu")], hardware("x86-server", &["CPUExecutionProvider"])).await;
    let sequence = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 200);
        let env: model_registry::Envelope = r.json().await.expect("document");
        env.typed::<model_registry::DesiredState>().expect("desired state").sequence
    };
    let checkin = |body: serde_json::Value| dev.client.post(app.url("/device/checkin")).json(&body).send();
    let first = sequence(checkin(serde_json::json!({})).await.expect("checkin")).await;
    assert_eq!(first, 1);
    let next = sequence(checkin(serde_json::json!({"desired_sequence": 5000})).await.expect("checkin")).await;
    assert_eq!(next, 5001, "signed above what the device accepted");
}

crate::both_backends!(the_sequence_continues_above_what_the_device_accepted);

/// Device events and audit entries are kept for their configured lifetimes, not for ever: what is older is
/// deleted by time (the background task does this every ten minutes with `events_retention_days` and
/// `audit_retention_days`).
async fn events_and_audit_entries_past_their_retention_are_dropped(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let dev = app.enroll("dev-old", &[("region", "eu")], hardware("x86-server", &["CPUExecutionProvider"])).await;
    let event = serde_json::json!([{"id": "e1", "kind": "refused", "detail": "x", "at": "2026-11-29T00:00:00Z"}]);
    let r = dev.client.post(app.url("/device/events")).json(&event).send().await.expect("events");
    assert_eq!(r.status(), 200);
    let id: edgefleet_protocol::DeviceId = "dev-old".parse().expect("id");
    assert_eq!(app.state.store.events(&id, 10).await.expect("events").len(), 1);
    let now = edgefleet_server::state::now_ms();
    // Cut-offs in the past keep everything; cut-offs after now drop it all.
    assert_eq!(app.state.store.delete_history_before(now - 60_000, now - 60_000).await.expect("delete"), (0, 0));
    let (events, audit) = app.state.store.delete_history_before(now + 1, now + 1).await.expect("delete");
    assert_eq!(events, 1);
    assert!(audit >= 2, "the enrollment token and the enrollment: {audit}");
    assert!(app.state.store.events(&id, 10).await.expect("events").is_empty());
}

crate::both_backends!(events_and_audit_entries_past_their_retention_are_dropped);

/// One device checking in (or reporting events) far faster than a device does is answered 429 with
/// `Retry-After`, before its body is read; other devices are not affected.
async fn a_device_past_its_rate_is_answered_429(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        (c.checkins_per_sec, c.checkin_burst) = (0.1, 3.0);
        (c.events_per_sec, c.events_burst) = (0.1, 2.0);
    })
    .await;
    let noisy = app.enroll("dev-noisy", &[("region", "eu")], hardware("x86-server", &["CPUExecutionProvider"])).await;
    let calm = app.enroll("dev-calm", &[("region", "eu")], hardware("x86-server", &["CPUExecutionProvider"])).await;
    let checkin = |d: &Device| d.client.post(app.url("/device/checkin")).json(&serde_json::json!({})).send();
    for _ in 0..3 {
        assert_eq!(checkin(&noisy).await.expect("checkin").status(), 200);
    }
    let r = checkin(&noisy).await.expect("checkin");
    assert!(r.headers().get("retry-after").is_some_and(|v| v.to_str().unwrap_or("0").parse::<u64>().unwrap_or(0) >= 1));
    assert_error(r, 429, "rate_limited").await;
    assert_eq!(checkin(&calm).await.expect("checkin").status(), 200, "another device is not affected");
    let events = |d: &Device| d.client.post(app.url("/device/events")).json(&serde_json::json!([])).send();
    for _ in 0..2 {
        assert_eq!(events(&noisy).await.expect("events").status(), 200);
    }
    assert_error(events(&noisy).await.expect("events"), 429, "rate_limited").await;
}

crate::both_backends!(a_device_past_its_rate_is_answered_429);

/// Enrollment, the one route a stranger can call: the token is checked before any CA work (a bad token with a
/// CSR is refused as a bad token, the CSR never parsed or signed), and one address gets `enrollment_burst`
/// attempts, then 429.
async fn enrollment_checks_the_token_first_and_is_rate_limited(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| (c.enrollments_per_sec, c.enrollment_burst) = (0.01, 3.0)).await;
    let stranger = app.client();
    let enroll = |token: &str| {
        let body = serde_json::json!({"token": token, "device_id": "dev-x", "csr_pem": "not a CSR",
            "hardware": hardware("x86-server", &["CPUExecutionProvider"])});
        stranger.post(app.url("/enroll")).json(&body).send()
    };
    for _ in 0..3 {
        assert_error(enroll("efe_guess").await.expect("enroll"), 401, "enrollment_token_invalid").await;
    }
    let r = enroll("efe_guess").await.expect("enroll");
    assert!(r.headers().get("retry-after").is_some());
    assert_error(r, 429, "rate_limited").await;
}

crate::both_backends!(enrollment_checks_the_token_first_and_is_rate_limited);

/// The server keeps the telemetry series of at most `device_cache_entries` devices in memory; one dropped from
/// memory that exports again is read back from the store, and its numbers stay exact (nothing counted twice).
async fn series_dropped_from_memory_come_back_exact(backend: Backend) {
    use crate::telemetry::{Served, accepted, magika_release_1, now_ns, report_running};
    let app = TestApp::spawn_with(backend, |c| {
        c.telemetry_flush_ms = 3_600_000;
        c.device_cache_entries = 0;
    })
    .await;
    let (model, v1) = magika_release_1(&app).await;
    let mut devices = Vec::new();
    for i in 0..3 {
        let d = app
            .enroll(&format!("dev-m{i}"), &[("region", "eu")], hardware("x86-server", &["CPUExecutionProvider"]))
            .await;
        report_running(&app, &d).await;
        devices.push(d);
    }
    let start = now_ns() - 60_000_000_000;
    async fn export(app: &TestApp, d: &Device, ok: u64, start: u64, time: u64) -> (i64, String) {
        let served =
            Served { device: &d.id, model: "magika", release: 1, bucket: 6, start, time, ok, err: 0, joules: 1.0 };
        accepted(app, &d.client, &served.export()).await
    }
    let t = now_ns();
    for d in &devices {
        assert_eq!(export(&app, d, 10, start, t - 2_000_000_000).await.0, 0);
    }
    assert!(edgefleet_server::telemetry::flush(&app.state).await);
    assert_eq!(app.state.ingest.devices_loaded(), 0, "every written series left memory");
    for d in &devices {
        assert_eq!(export(&app, d, 25, start, t).await.0, 0);
    }
    assert!(edgefleet_server::telemetry::flush(&app.state).await);
    let rows = app.state.store.release_stats(&model, [(v1, 0), (v1, 0)]).await.expect("stats");
    assert_eq!(rows.iter().map(|r| r.stats.requests).sum::<u64>(), 75, "3 devices × 25, each counted once");
}

crate::both_backends!(series_dropped_from_memory_come_back_exact);

/// A device sends numbers about a release its plan does not name (release 2, while it was told release 1): the
/// points are refused and counted; one device cannot put numbers under a release it does not run.
async fn points_about_a_release_the_device_was_not_told_are_refused(backend: Backend) {
    use crate::telemetry::{Served, accepted, magika_release_1, now_ns, report_running};
    let app = TestApp::spawn_with(backend, |c| c.telemetry_flush_ms = 3_600_000).await;
    magika_release_1(&app).await;
    let d = app.enroll("dev-liar", &[("region", "eu")], hardware("x86-server", &["CPUExecutionProvider"])).await;
    report_running(&app, &d).await;
    let t = now_ns();
    let about = |release| Served {
        device: &d.id,
        model: "magika",
        release,
        bucket: 6,
        start: t - 60_000_000_000,
        time: t,
        ok: 1000,
        err: 0,
        joules: 1.0,
    };
    let (refused, why) = accepted(&app, &d.client, &about(2).export()).await;
    assert!(refused > 0 && why.contains("not told to run release 2"), "{refused} {why}");
    assert_eq!(accepted(&app, &d.client, &about(1).export()).await.0, 0, "its own release is taken");
}

crate::both_backends!(points_about_a_release_the_device_was_not_told_are_refused);
