//! What the web dashboard reads: `/whoami`, `/fleet`, the device list's search and filters with each device's
//! state, a device's telemetry, release details, the audit log by target, and the page itself with its
//! Content-Security-Policy. Counting and filtering are the database's work, so both backends run it.

use edgefleet_protocol::api::{DevicePage, DeviceTelemetry, FleetOverview, ReleaseSummary, TokenRole, WhoAmI};

use crate::helpers::{Backend, TestApp, get, hardware};
use crate::telemetry::{Served, accepted, magika_release_1, now_ns, report_running};

async fn the_dashboard_endpoints(backend: Backend) {
    let app = TestApp::spawn_with(backend, |c| {
        c.telemetry_flush_ms = 3_600_000; // flushed by the test
        c.telemetry_window_secs = 60;
    })
    .await;
    let viewer = app.token(TokenRole::Viewer).await;
    let me: WhoAmI = get(&app, &viewer, "/whoami").await;
    assert_eq!(me.role, TokenRole::Viewer);

    // A token with a lifetime works until it ends, then is refused saying so.
    let r = app
        .client()
        .post(app.url("/tokens"))
        .bearer_auth(&app.admin)
        .json(&serde_json::json!({"name": "shift", "role": "viewer", "expires_in_secs": 1}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let shift = r.json::<serde_json::Value>().await.expect("json")["token"].as_str().expect("token").to_owned();
    let refusal = async {
        for _ in 0..100 {
            let r = app.client().get(app.url("/whoami")).bearer_auth(&shift).send().await.expect("whoami");
            if r.status() == 401 {
                return r.text().await.expect("body");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("a token that expired after 1 s was still accepted 5 s later");
    };
    assert!(refusal.await.contains("expired at"));
    let r = app
        .client()
        .post(app.url("/tokens"))
        .bearer_auth(&app.admin)
        .json(&serde_json::json!({"name": "x", "role": "viewer", "expires_in_secs": 0}))
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 400);

    // An empty fleet is all zeros, not an error.
    let f: FleetOverview = get(&app, &viewer, "/fleet").await;
    assert_eq!((f.devices, f.online, f.by_class.len(), f.by_release.len()), (0, 0, 0, 0));

    magika_release_1(&app).await;
    let a = app.enroll("dash-a", &[("site", "lab")], hardware("x86-server", &["CPUExecutionProvider"])).await;
    let b = app.enroll("dash-b", &[("site", "lab")], hardware("nvidia-jetson", &["CPUExecutionProvider"])).await;
    let _never = app.enroll("other-c", &[("site", "depot")], hardware("x86-server", &["CPUExecutionProvider"])).await;
    let gone = app.enroll("dash-gone", &[], hardware("x86-server", &["CPUExecutionProvider"])).await;
    report_running(&app, &a).await;
    let failing = serde_json::json!({"models": [], "last_error": "golden vectors failed: <b>bad</b>"});
    assert_eq!(b.client.post(app.url("/device/checkin")).json(&failing).send().await.expect("checkin").status(), 200);
    let r = app.client().post(app.url("/devices/dash-gone/revoke")).bearer_auth(&app.admin).send().await;
    assert_eq!(r.expect("revoke").status(), 204);
    drop(gone);
    // last_seen is written in batches: wait (bounded) until both check-ins are counted.
    let mut f = FleetOverview::default();
    for _ in 0..100 {
        f = get(&app, &viewer, "/fleet").await;
        if f.online == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!((f.devices, f.online, f.offline, f.never_seen, f.failing, f.revoked), (3, 2, 0, 1, 1, 1), "{f:?}");
    let x86 = f.by_class.iter().find(|c| c.device_class == "x86-server").expect("x86 counted");
    assert_eq!((x86.devices, x86.online, x86.never_seen, x86.failing), (2, 1, 1, 0));
    let jetson = f.by_class.iter().find(|c| c.device_class == "nvidia-jetson").expect("jetson counted");
    assert_eq!((jetson.devices, jetson.failing), (1, 1));
    assert_eq!(f.by_release.len(), 1, "{f:?}");
    assert_eq!(
        (f.by_release[0].model.as_str(), f.by_release[0].release.get(), f.by_release[0].devices),
        ("magika", 1, 1)
    );

    // Search by id prefix, filter by class and labels; each row says what runs and what failed.
    let ids = |p: &DevicePage| p.devices.iter().map(|d| d.id.to_string()).collect::<Vec<_>>();
    let p: DevicePage = get(&app, &viewer, "/devices?q=dash-").await;
    assert_eq!(ids(&p), ["dash-a", "dash-b", "dash-gone"]);
    let p: DevicePage = get(&app, &viewer, "/devices?q=dash-&class=nvidia-jetson").await;
    assert_eq!(ids(&p), ["dash-b"]);
    assert_eq!(p.devices[0].last_error.as_deref(), Some("golden vectors failed: <b>bad</b>"));
    let p: DevicePage = get(&app, &viewer, "/devices?selector=site%3Dlab&class=x86-server").await;
    assert_eq!(ids(&p), ["dash-a"]);
    assert!(p.devices[0].online);
    assert_eq!(p.devices[0].running.len(), 1);
    assert_eq!(p.devices[0].running[0].release.get(), 1);
    let p: DevicePage = get(&app, &viewer, "/devices?q=dash-&limit=2").await;
    assert_eq!(
        (ids(&p), p.next.as_ref().map(|n| n.to_string())),
        (vec!["dash-a".into(), "dash-b".into()], Some("dash-b".into()))
    );
    let p: DevicePage = get(&app, &viewer, "/devices?q=dash-&limit=2&after=dash-b").await;
    assert_eq!(ids(&p), ["dash-gone"]);
    assert!(p.devices[0].revoked && !p.devices[0].online);
    let p: DevicePage = get(&app, &viewer, "/devices?q=nobody").await;
    assert!(p.devices.is_empty() && p.next.is_none());

    // A device's windows: latency from its histogram; power and energy only where a sensor reported.
    let s = now_ns() - 30_000_000_000;
    let served = Served {
        device: "dash-a",
        model: "magika",
        release: 1,
        bucket: 6,
        start: s,
        time: s + 1,
        ok: 0,
        err: 0,
        joules: 0.0,
    };
    accepted(&app, &a.client, &served.export()).await;
    accepted(&app, &a.client, &Served { time: s + 20_000_000_000, ok: 30, err: 2, joules: 12.0, ..served }.export())
        .await;
    assert!(edgefleet_server::telemetry::flush(&app.state).await, "rollups written");
    let t: DeviceTelemetry = get(&app, &viewer, "/devices/dash-a/telemetry?since=0").await;
    let requests: u64 = t.windows.iter().map(|w| w.stats.requests).sum();
    assert_eq!(requests, 32, "{t:?}");
    let w = t.windows.iter().find(|w| w.stats.requests > 0).expect("a window");
    assert_eq!((w.model.as_str(), w.release.get()), ("magika", 1));
    assert!(w.stats.p95_ms.is_some_and(|p| (5.0..=10.0).contains(&p)), "{w:?}");
    let energy: f64 = t.windows.iter().filter_map(|w| w.stats.watts).map(|watts| watts * t.window_secs as f64).sum();
    assert!((energy - 12.0).abs() < 1e-6, "12 J over the windows, as watts x window: {t:?}");
    let quiet: DeviceTelemetry = get(&app, &viewer, "/devices/dash-b/telemetry?since=0").await;
    assert!(quiet.windows.is_empty());

    // Releases carry their variants' precision and sizes and the keys that signed them.
    let rs: Vec<ReleaseSummary> = get(&app, &viewer, "/models/magika/releases").await;
    let v = &rs[0].variant_details;
    assert!(
        !v.is_empty() && v.iter().all(|v| !v.precision.is_empty() && v.size_bytes > 0 && v.download_bytes > 0),
        "{v:?}"
    );
    assert_eq!(rs[0].signed_by.len(), 2, "signed with two release keys");

    // The audit log by target.
    let audit: Vec<serde_json::Value> = get(&app, &viewer, "/audit?target=dash-gone").await;
    assert!(!audit.is_empty() && audit.iter().all(|e| e["target"] == "dash-gone"), "{audit:?}");
    assert!(audit.iter().any(|e| e["action"] == "device.revoke"));
}

/// The dashboard's page and assets, embedded in the binary, with a policy that lets no other origin's script
/// or inline script run (setup builds the dashboard; this fails if the server was built without it).
async fn the_dashboard_is_served_with_a_strict_policy(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app.client().get(format!("{}/", app.url)).send().await.expect("page");
    assert_eq!(r.status(), 200, "the dashboard was built into the server (scripts/setup.sh builds it)");
    let csp = r.headers()["content-security-policy"].to_str().expect("csp").to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-eval") && !csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    let html = r.text().await.expect("html");
    let script = html.split("src=\"").nth(1).and_then(|s| s.split('"').next()).expect("a script").to_owned();
    assert!(script.starts_with("/assets/"), "{script}");
    let js = app.client().get(format!("{}{script}", app.url)).send().await.expect("asset");
    assert_eq!(js.status(), 200);
    assert!(js.headers()["cache-control"].to_str().expect("cc").contains("immutable"));
    assert!(js.headers()["content-type"].to_str().expect("ct").starts_with("text/javascript"));
    let missing = app.client().get(format!("{}/assets/nope.js", app.url)).send().await.expect("404");
    assert_eq!(missing.status(), 404);
}

crate::both_backends!(the_dashboard_endpoints, the_dashboard_is_served_with_a_strict_policy);
