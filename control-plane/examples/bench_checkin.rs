//! Check-in throughput and latency over TLS with keep-alive, for BENCHMARKS.md.
//!
//!     cargo run --release -p edgefleet-server --example bench_checkin -- [DEVICES] [CONNECTIONS] [SECONDS] [DATABASE_URL]
//!     REPLICAS=2 cargo run ... -- 100000 64 20 postgres://...   # two replicas over one PostgreSQL database
//!
//! Defaults: 100,000 enrolled devices in the database, 64 concurrent devices (each its own client certificate
//! and keep-alive connection), 20 seconds on the 304 path, SQLite in a temporary directory. The server runs
//! in this process on its own 2-thread runtime; the load runs on another: both share the machine's cores, so
//! the numbers are a floor for a server with the machine to itself. With `REPLICAS=N` (PostgreSQL only), N
//! servers share the database and the same two threads (each its own runtime of 2/N threads, at least one),
//! the devices split between them, and a last phase times how long a change made on one replica takes to
//! reach the other (`LISTEN/NOTIFY` and the change log).
//!
//! Phases: (1) the 304 path: every check-in names the device's current ETag; (2) the changed path: the
//! assignment flips between two releases, and every device's next check-in gets a freshly planned and signed
//! document (a database write per device).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use edgefleet_server::config::Config;
use model_registry::manifest::ModelFormat;
use model_registry::root::DocType;
use model_registry::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn key(n: u8) -> KeyPair {
    KeyPair::from_seed(&[n; 32])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut lat: Vec<Duration>, elapsed: Duration, errors: usize) {
    lat.sort();
    println!(
        "{name:34} {:>8} requests {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  errors {errors}",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn manifest(version: u64) -> ReleaseManifest {
    let art = ArtifactRef { sha256: Sha256Digest::of(&version.to_le_bytes()), size: 8 };
    ReleaseManifest {
        doc_type: DocType::Release,
        model: "magika".parse().expect("model"),
        version: ReleaseVersion::new(version).expect("version"),
        security_floor: ReleaseVersion::new(1).expect("floor"),
        created: Utc::now(),
        description: String::new(),
        variants: vec![Variant {
            id: "cpu-fp32".parse().expect("variant"),
            requirements: Requirements::default(),
            precision: Precision::Fp32,
            format: ModelFormat::Onnx,
            raw: art,
            zstd: art,
            golden: art,
            inputs: vec![],
            outputs: vec![],
            llm: None,
        }],
        routing: None,
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let devices: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let conns: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let db_url = args.get(3).cloned();
    let replicas: usize = std::env::var("REPLICAS").ok().map(|s| s.parse()).transpose()?.unwrap_or(1).max(1);
    anyhow::ensure!(
        replicas == 1 || db_url.as_deref().is_some_and(|u| u.starts_with("postgres")),
        "REPLICAS > 1 needs a PostgreSQL DATABASE_URL"
    );

    let dir = tempfile::tempdir()?;
    let root = Root::new(
        Utc::now() + chrono::Duration::days(30),
        [
            (Role::Root, vec![key(1).public().clone()], 1),
            (Role::Release, vec![key(10).public().clone()], 1),
            (Role::Fleet, vec![key(20).public().clone()], 1),
        ],
    )?;
    let mut env = Envelope::new(&root)?;
    env.sign(&key(1))?;
    std::fs::write(dir.path().join("root.json"), serde_json::to_vec(&env)?)?;
    key(20).write_private(&dir.path().join("fleet.key"))?;
    let config = Config {
        data_dir: dir.path().join("data"),
        database_url: db_url.clone(),
        trust_root: Some(dir.path().join("root.json")),
        fleet_key: Some(dir.path().join("fleet.key")),
        // 64 devices stand for a fleet here, each checking in hundreds of times a second: no per-device limit.
        checkins_per_sec: 1e9,
        checkin_burst: 1e9,
        ..Config::default()
    };

    // The servers: one, or `replicas` over the same database, sharing two worker threads.
    let mut servers = Vec::new();
    for i in 0..replicas {
        let rt =
            tokio::runtime::Builder::new_multi_thread().worker_threads((2 / replicas).max(1)).enable_all().build()?;
        let config = Config { data_dir: dir.path().join(format!("data-{i}")), ..config.clone() };
        let built = rt.block_on(edgefleet_server::app::build(config))?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("https://127.0.0.1:{}/api/v1/device/checkin", listener.local_addr()?.port());
        let router = edgefleet_server::api::router(built.state.clone());
        let limits = edgefleet_server::server::ConnLimits::from_config(&built.state.config);
        rt.spawn(edgefleet_server::server::serve(listener, router, built.tls.clone(), limits, std::future::pending()));
        servers.push((rt, built, url));
    }
    let (server_rt, built, _) = &servers[0];
    let state = built.state.clone();
    let urls: Vec<String> = servers.iter().map(|(_, _, u)| u.clone()).collect();

    // Enrolled devices, written straight into the database in batches (enrolling 100,000 through the API
    // would benchmark the CA, not check-in).
    let t = Instant::now();
    let pool_url = state.config.database_url();
    server_rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&pool_url).await?;
        let hw = serde_json::json!({"device_class": "x86-server", "arch": "x86_64", "execution_providers": ["CPUExecutionProvider"], "memory_bytes": 8u64 << 30, "soc": [], "power": "unavailable"}).to_string();
        for chunk in (0..devices).collect::<Vec<_>>().chunks(1000) {
            let mut tx = pool.begin().await?;
            for i in chunk {
                sqlx::query("INSERT INTO devices (id, labels, device_class, hardware, cert_serial, enrolled_at) VALUES ($1, $2, $3, $4, $5, $6)")
                    .bind(format!("dev-{i:07}"))
                    .bind("{\"region\":\"eu\"}")
                    .bind("x86-server")
                    .bind(&hw)
                    .bind("00")
                    .bind(0i64)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO device_labels (device_id, key, value) VALUES ($1, 'region', 'eu')")
                    .bind(format!("dev-{i:07}"))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        for v in [1u64, 2] {
            let mut env = Envelope::new(&manifest(v))?;
            env.sign(&key(10))?;
            state
                .store
                .publish_release(&edgefleet_server::store::ReleaseRow {
                    model: "magika".parse()?,
                    version: ReleaseVersion::new(v)?,
                    security_floor: ReleaseVersion::new(1)?,
                    description: String::new(),
                    variants: vec!["cpu-fp32".into()],
                    manifest: serde_json::to_string(&env)?,
                    published_at: 0,
                    published_by: "bench".into(),
                })
                .await?;
        }
        anyhow::Ok(())
    })?;
    println!(
        "database: {} with {devices} enrolled devices (inserted in {:.1} s); {replicas} replica(s)",
        pool_url.split('?').next().unwrap_or(""),
        t.elapsed().as_secs_f64()
    );

    // Client certificates for the devices that will check in.
    let server_pem = std::fs::read(&built.cert_path)?;
    let server_cert: CertificateDer<'static> =
        rustls_pemfile::certs(&mut server_pem.as_slice()).next().ok_or_else(|| anyhow::anyhow!("no cert"))??;
    let mut clients = Vec::new();
    for i in 0..conns {
        let k = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&k)?.pem()?;
        let id: DeviceId = format!("dev-{:07}", i * (devices / conns).max(1)).parse()?;
        let (pem, serial) = state.ca.issue(&csr, &id, 30)?;
        // Only the certificate last issued to a device is accepted: record it as enrollment would.
        server_rt.block_on(state.store.set_cert_serial(&id, &serial))?;
        let chain = rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_cert.clone())?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, PrivateKeyDer::try_from(k.serialize_der()).map_err(anyhow::Error::msg)?)?;
        clients.push(
            reqwest::Client::builder().use_preconfigured_tls(tls).http1_only().pool_max_idle_per_host(1).build()?,
        );
    }

    let load_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let body = "{\"models\":[]}";
    // Warm up: every device's first check-in (plans and signs its first document), and learn its ETag.
    // Device i checks in with replica i mod N, over its own keep-alive connection.
    let url_of = |i: usize| urls[i % urls.len()].clone();
    let etags: Vec<String> = load_rt.block_on(async {
        let mut out = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let r = c.post(url_of(i)).header("content-type", "application/json").body(body).send().await?;
            out.push(r.headers()["etag"].to_str()?.to_owned());
        }
        anyhow::Ok(out)
    })?;

    // Phase 1: the 304 path.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let results = load_rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, (c, etag)) in clients.iter().cloned().zip(etags.clone()).enumerate() {
            let url = url_of(i);
            tasks.push(tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let r = c
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("if-none-match", &etag)
                        .body(body)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 304 => lat.push(t.elapsed()),
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            }));
        }
        let mut all = (Vec::new(), 0);
        for t in tasks {
            if let Ok((l, e)) = t.await {
                all.0.extend(l);
                all.1 += e;
            }
        }
        all
    });
    report("check-in, 304 (unchanged)", results.0, started.elapsed(), results.1);

    // Phase 2: the changed path, round after round.
    let rounds = 20;
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut busy = Duration::ZERO;
    for round in 0..rounds {
        let version = ReleaseVersion::new(1 + (round % 2) as u64)?;
        server_rt.block_on(state.store.add_assignment(&"magika".parse()?, version, &"".parse()?, "bench", 0))?;
        // Made on replica 0; the round starts once every replica has taken it in.
        let before: Vec<u64> = servers.iter().map(|(_, b, _)| *b.state.generation.borrow()).collect();
        server_rt.block_on(state.changed(edgefleet_server::changes::Scope::All))?;
        while servers.iter().zip(&before).any(|((_, b, _), g)| *b.state.generation.borrow() == *g) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t0 = Instant::now();
        let (l, e) = load_rt.block_on(async {
            let mut tasks = Vec::new();
            for (i, (c, etag)) in clients.iter().cloned().zip(etags.clone()).enumerate() {
                let url = url_of(i);
                tasks.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let r = c
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("if-none-match", &etag)
                        .body(body)
                        .send()
                        .await;
                    match r {
                        Ok(r) if r.status() == 200 => r.bytes().await.map(|_| t.elapsed()).map_err(|_| ()),
                        _ => Err(()),
                    }
                }));
            }
            let (mut l, mut e) = (Vec::new(), 0);
            for t in tasks {
                match t.await {
                    Ok(Ok(d)) => l.push(d),
                    _ => e += 1,
                }
            }
            (l, e)
        });
        busy += t0.elapsed();
        lat.extend(l);
        errors += e;
    }
    report("check-in, changed (plan + sign + write)", lat, busy, errors);

    // A change on replica 0, seen by replica 1: from the write to replica 1's caches dropping it.
    if let Some((rt1, b1, _)) = servers.get(1) {
        let mut seen = Vec::new();
        for round in 0..50u64 {
            let mut changes = b1.state.generation.subscribe();
            changes.borrow_and_update();
            let version = ReleaseVersion::new(1 + round % 2)?;
            let t = Instant::now();
            server_rt.block_on(async {
                state.store.add_assignment(&"magika".parse()?, version, &"".parse()?, "bench", 0).await?;
                state.changed(edgefleet_server::changes::Scope::All).await?;
                anyhow::Ok(())
            })?;
            rt1.block_on(async { tokio::time::timeout(Duration::from_secs(5), changes.changed()).await })??;
            seen.push(t.elapsed());
            std::thread::sleep(Duration::from_millis(20));
        }
        seen.sort();
        println!(
            "change on replica 0 seen by replica 1: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms over {} changes",
            percentile(&seen, 0.5).as_secs_f64() * 1e3,
            percentile(&seen, 0.99).as_secs_f64() * 1e3,
            seen.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            seen.len()
        );
    }
    Ok(())
}
