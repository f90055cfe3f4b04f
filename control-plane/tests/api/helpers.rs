//! `TestApp`: the real server, spawned per test on port 0 with its own fresh database (SQLite in a temporary
//! directory, or a PostgreSQL database created for the test and dropped after it), spoken to over real TLS.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{Duration, Utc};
use edgefleet_protocol::api::{EnrollResponse, HardwareProfile, Labels, TokenRole};
use edgefleet_server::config::Config;
use edgefleet_server::state::AppState;
use model_registry::manifest::ModelFormat;
use model_registry::root::DocType;
use model_registry::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn key(n: u8) -> KeyPair {
    KeyPair::from_seed(&[n; 32])
}

/// Root key 1; release keys 10 and 11 (threshold 2); fleet key 20.
pub fn root() -> Root {
    Root::new(
        Utc::now() + Duration::days(30),
        [
            (Role::Root, vec![key(1).public().clone()], 1),
            (Role::Release, vec![key(10).public().clone(), key(11).public().clone()], 2),
            (Role::Fleet, vec![key(20).public().clone()], 1),
        ],
    )
    .expect("root")
}

pub fn signed<T: serde::Serialize>(doc: &T, keys: &[KeyPair]) -> Vec<u8> {
    let mut env = Envelope::new(doc).expect("envelope");
    for k in keys {
        env.sign(k).expect("sign");
    }
    serde_json::to_vec(&env).expect("json")
}

#[allow(dead_code)] // `state`, `dir` and `backend` are for tests that reach past the API.
pub struct TestApp {
    pub url: String,
    pub state: AppState,
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub backend: Backend,
    pub server_cert: CertificateDer<'static>,
    shutdown: Option<oneshot::Sender<()>>,
    pg_db: Option<String>,
    pub config: Config,
    background: Vec<tokio::task::JoinHandle<()>>,
}

async fn create_pg_database() -> String {
    use sqlx::Connection;
    let mut conn = match sqlx::PgConnection::connect(PG_ADMIN_URL).await {
        Ok(c) => c,
        Err(e) => panic!(
            "\n\n*** PostgreSQL is not reachable at 127.0.0.1:5432 ({e}).\n*** The Postgres half of the API tests \
             cannot run on this machine. CI has Postgres; start it locally to run them.\n\n"
        ),
    };
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random");
    let name = format!("edgefleet_test_{}", hex::encode(b));
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await.expect("create database");
    name
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
        if let Some(name) = self.pg_db.take() {
            // Drop is not async: drop the database from a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async {
                    use sqlx::Connection;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(PG_ADMIN_URL).await {
                        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut conn)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

pub fn client_config(
    server: &CertificateDer<'static>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.clone()).expect("server cert");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).expect("client cert"),
        None => builder.with_no_client_auth(),
    }
}

pub fn http(config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .expect("client")
}

/// An enrolled device: its id and a client that presents its certificate.
pub struct Device {
    pub id: String,
    pub client: reqwest::Client,
    pub enrolled: EnrollResponse,
    /// The device's private key, PEM.
    pub key_pem: String,
}

pub fn hardware(class: &str, eps: &[&str]) -> HardwareProfile {
    HardwareProfile {
        device_class: class.into(),
        arch: "x86_64".into(),
        execution_providers: eps.iter().map(|s| s.to_string()).collect(),
        llm_backends: vec!["CPU".into()],
        memory_bytes: 8 << 30,
        soc: vec![],
        power: "unavailable".into(),
    }
}

pub fn csr() -> (String, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr =
        rcgen::CertificateParams::new(Vec::<String>::new()).expect("params").serialize_request(&key).expect("csr");
    (csr.pem().expect("pem"), key)
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// A server whose configuration `tune` may change first.
    pub async fn spawn_with(backend: Backend, tune: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root_path = dir.path().join("root.json");
        std::fs::write(&root_path, signed(&root(), &[key(1)])).expect("root");
        let fleet_path = dir.path().join("fleet.key");
        key(20).write_private(&fleet_path).expect("fleet key");
        let pg_db = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(create_pg_database().await),
        };
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            data_dir: dir.path().join("data"),
            database_url: pg_db.as_ref().map(|n| format!("postgres://postgres@127.0.0.1:5432/{n}")),
            trust_root: Some(root_path),
            fleet_key: Some(fleet_path),
            flush_interval_ms: 50,
            ..Config::default()
        };
        tune(&mut config);
        let admin = edgefleet_server::api::new_token("eft").expect("token");
        let (url, state, server_cert, shutdown, background) = Self::start(&config).await;
        state
            .store
            .create_token("admin", TokenRole::Admin, &edgefleet_server::api::token_hash(&admin), "test", 0, None)
            .await
            .expect("admin token");
        Self { url, state, dir, admin, backend, server_cert, shutdown: Some(shutdown), pg_db, config, background }
    }

    #[allow(clippy::type_complexity)]
    async fn start(
        config: &Config,
    ) -> (String, AppState, CertificateDer<'static>, oneshot::Sender<()>, Vec<tokio::task::JoinHandle<()>>) {
        let built = edgefleet_server::app::build(config.clone()).await.expect("server builds");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let (tx, rx) = oneshot::channel::<()>();
        let router = edgefleet_server::api::router(built.state.clone());
        let limits = edgefleet_server::server::ConnLimits::from_config(&built.state.config);
        tokio::spawn(edgefleet_server::server::serve(listener, router, built.tls.clone(), limits, async {
            let _ = rx.await;
        }));
        let pem = std::fs::read(&built.cert_path).expect("server cert");
        let server_cert = rustls_pemfile::certs(&mut pem.as_slice()).next().expect("a cert").expect("pem");
        (url, built.state, server_cert, tx, built.background)
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for t in self.background.drain(..) {
            t.abort();
        }
    }

    /// Stops the server as a crash would (nothing pending is written) and starts another on the same data
    /// directory and database, at a new address.
    pub async fn restart(&mut self) {
        self.stop();
        let (url, state, server_cert, shutdown, background) = Self::start(&self.config).await;
        (self.url, self.state, self.server_cert, self.shutdown, self.background) =
            (url, state, server_cert, Some(shutdown), background);
    }

    pub fn client(&self) -> reqwest::Client {
        http(client_config(&self.server_cert, None))
    }

    pub fn server_cert(&self) -> &CertificateDer<'static> {
        &self.server_cert
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    /// A new API token of `role`, made by the admin through the API.
    pub async fn token(&self, role: TokenRole) -> String {
        let r = self
            .client()
            .post(self.url("/tokens"))
            .bearer_auth(&self.admin)
            .json(&serde_json::json!({"name": format!("{role}-token"), "role": role}))
            .send()
            .await
            .expect("create token");
        assert_eq!(r.status(), 201);
        r.json::<serde_json::Value>().await.expect("json")["token"].as_str().expect("token").to_owned()
    }

    pub async fn enroll_token(&self, labels: &Labels) -> String {
        let r = self
            .client()
            .post(self.url("/enrollment-tokens"))
            .bearer_auth(&self.admin)
            .json(&serde_json::json!({"labels": labels}))
            .send()
            .await
            .expect("enroll token");
        assert_eq!(r.status(), 201);
        r.json::<serde_json::Value>().await.expect("json")["token"].as_str().expect("token").to_owned()
    }

    pub async fn enroll(&self, id: &str, labels: &[(&str, &str)], hw: HardwareProfile) -> Device {
        let labels: Labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        let token = self.enroll_token(&labels).await;
        let (csr, key) = csr();
        let r = self
            .client()
            .post(self.url("/enroll"))
            .json(&serde_json::json!({"token": token, "device_id": id, "csr_pem": csr, "hardware": hw}))
            .send()
            .await
            .expect("enroll");
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
        let enrolled: EnrollResponse = r.json().await.expect("json");
        let chain = rustls_pemfile::certs(&mut enrolled.certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert pem");
        let key_pem = key.serialize_pem();
        let key = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let client = http(client_config(&self.server_cert, Some((chain, key))));
        Device { id: id.to_owned(), client, enrolled, key_pem }
    }
}

/// Uploads every blob and answers a release manifest with two variants: `npu-int8` (needs the QNN provider)
/// and `cpu-fp32` (any device). Blob contents are derived from `version` so releases differ.
pub async fn upload_release(app: &TestApp, token: &str, model: &str, version: u64) -> ReleaseManifest {
    let client = app.client();
    let mut variants = Vec::new();
    for (id, eps) in [("npu-int8", vec!["QNNExecutionProvider".to_owned()]), ("cpu-fp32", vec![])] {
        let raw: Vec<u8> =
            (0..20_000u32).map(|i| (i.wrapping_mul(31) ^ version as u32 ^ id.len() as u32) as u8).collect();
        let mut z = Vec::new();
        let (raw_ref, zstd_ref) = compress(raw.as_slice(), &mut z, 3, u64::MAX).expect("compress");
        let golden = GoldenVectors {
            inputs: [("0".to_owned(), [("x".to_owned(), HostTensor::from_f32(vec![1], &[version as f32]))].into())]
                .into(),
            outputs: [("0".to_owned(), [("y".to_owned(), HostTensor::from_f32(vec![1], &[1.0]))].into())].into(),
            tolerances: [("y".to_owned(), Tolerance::default_for(Precision::Fp32))].into(),
        }
        .to_bytes()
        .expect("golden");
        let golden_ref = ArtifactRef { sha256: Sha256Digest::of(&golden), size: golden.len() as u64 };
        for (bytes, r) in [(z, zstd_ref), (golden, golden_ref)] {
            let resp = client
                .put(app.url(&format!("/blobs/{}", r.sha256)))
                .bearer_auth(token)
                .body(bytes)
                .send()
                .await
                .expect("upload");
            assert!(resp.status().is_success(), "upload: {}", resp.text().await.unwrap_or_default());
        }
        variants.push(Variant {
            id: id.parse().expect("variant"),
            // The CPU variant is built for the two common architectures: a RISC-V board runs neither variant.
            requirements: Requirements {
                arch: if eps.is_empty() { vec!["x86_64".into(), "aarch64".into()] } else { vec![] },
                execution_providers: eps,
                ..Requirements::default()
            },
            precision: Precision::Fp32,
            format: ModelFormat::Onnx,
            raw: raw_ref,
            zstd: zstd_ref,
            golden: golden_ref,
            inputs: vec![],
            outputs: vec![],
            llm: None,
        });
    }
    ReleaseManifest {
        doc_type: DocType::Release,
        model: model.parse().expect("model"),
        version: ReleaseVersion::new(version).expect("version"),
        security_floor: ReleaseVersion::new(1).expect("floor"),
        created: Utc::now(),
        description: format!("{model} {version}"),
        variants,
        routing: None,
    }
}

pub async fn publish(app: &TestApp, token: &str, body: Vec<u8>) -> reqwest::Response {
    app.client().post(app.url("/releases")).bearer_auth(token).body(body).send().await.expect("publish")
}

/// Asserts an error answer: status, and the API's JSON error shape with `code`.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    let got = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "body: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(v["error"]["code"], code, "body: {body}");
    v["error"]["message"].as_str().unwrap_or_default().to_owned()
}

/// `GET /api/v1{path}` with `token`, which must answer 200 with JSON of type `T`.
pub async fn get<T: serde::de::DeserializeOwned>(app: &TestApp, token: &str, path: &str) -> T {
    let r = app.client().get(app.url(path)).bearer_auth(token).send().await.expect("get");
    assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap_or_default());
    r.json().await.expect("json")
}

/// Runs a test body on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )*};
}
