//! The device certificate over its life: due for renewal once a third of its lifetime is left; renewed against
//! a server of the test's own (plain HTTP on loopback, a CA of its own), the new pair written key first with
//! mode 0600 and renamed into place; a renewal a crash interrupted is finished (or dropped) at the next start.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use edgefleet_daemon::identity::{finish_renewal, renew, renewal_due};
use edgefleet_daemon::layout::Layout;

fn cert(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> String {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut p = rcgen::CertificateParams::new(vec!["edge-1".to_owned()]).expect("params");
    p.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
    p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    p.self_signed(&key).expect("cert").pem()
}

/// 2026-11-29T00:00:00Z.
const NOW: i64 = 1_795_910_400;

#[test]
fn renewal_is_due_with_a_third_of_the_lifetime_left() {
    // 90 days: issued 30 days ago, 60 left.
    assert!(!renewal_due(&cert((2026, 10, 30), (2027, 1, 28)), NOW, None).expect("readable"));
    // 90 days: issued 61 days ago, 29 left.
    assert!(renewal_due(&cert((2026, 9, 29), (2026, 12, 28)), NOW, None).expect("readable"));
    // Expired.
    assert!(renewal_due(&cert((2025, 1, 1), (2026, 1, 1)), NOW, None).expect("readable"));
    assert!(renewal_due("not a certificate", NOW, None).is_err());
    // An operator's threshold in days: 60 days left is within 90, not within 30.
    assert!(renewal_due(&cert((2026, 10, 30), (2027, 1, 28)), NOW, Some(90.0)).expect("readable"));
    assert!(!renewal_due(&cert((2026, 10, 30), (2027, 1, 28)), NOW, Some(30.0)).expect("readable"));
}

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

async fn sign(State(ca): State<Arc<Ca>>, Json(req): Json<serde_json::Value>) -> Json<serde_json::Value> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(req["csr_pem"].as_str().expect("csr")).expect("csr");
    let pem = csr.signed_by(&ca.cert, &ca.key).expect("sign").pem();
    Json(serde_json::json!({"certificate_pem": pem}))
}

#[tokio::test]
async fn renewal_replaces_the_pair_and_an_interrupted_one_is_finished() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout { root: dir.path().to_owned() };
    std::fs::create_dir_all(layout.key().parent().expect("dir")).expect("mkdir");
    std::fs::write(layout.key(), "old key").expect("key");
    std::fs::write(layout.cert(), "old cert").expect("cert");

    let key = rcgen::KeyPair::generate().expect("ca key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = Arc::new(Ca { cert: p.self_signed(&key).expect("ca"), key });
    let app = axum::Router::new().route("/api/v1/device/renew", axum::routing::post(sign)).with_state(ca);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

    renew(&layout, &server, &reqwest::Client::new()).await.expect("renewed");
    let new_key = std::fs::read_to_string(layout.key()).expect("key");
    let new_cert = std::fs::read_to_string(layout.cert()).expect("cert");
    assert!(new_key.contains("PRIVATE KEY") && new_cert.contains("CERTIFICATE"), "{new_cert}");
    assert_eq!(std::fs::metadata(layout.key()).expect("key").permissions().mode() & 0o777, 0o600);
    let left: Vec<_> = std::fs::read_dir(layout.key().parent().expect("dir")).expect("dir").flatten().collect();
    assert_eq!(left.len(), 2, "no pending files left: {left:?}");

    // A crash after the key was renamed, before the certificate was: the next start finishes the swap.
    let pending_cert = layout.cert().with_extension("crt.new");
    std::fs::write(&pending_cert, "cert 3").expect("pending");
    std::fs::write(layout.key(), "key 3").expect("key renamed already");
    finish_renewal(&layout).expect("finish");
    assert_eq!(std::fs::read_to_string(layout.cert()).expect("cert"), "cert 3");
    assert!(!pending_cert.exists());
    // A crash before the certificate was stored: the new key is dropped, the old pair stays.
    let pending_key = layout.key().with_extension("key.new");
    std::fs::write(&pending_key, "key 4").expect("pending");
    finish_renewal(&layout).expect("finish");
    assert!(!pending_key.exists());
    assert_eq!(std::fs::read_to_string(layout.key()).expect("key"), "key 3");
}
