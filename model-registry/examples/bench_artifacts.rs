//! Benchmarks for BENCHMARKS.md: streaming verify + decompress of a 100 MiB artifact side by side with
//! `zstd -d` on the same file in the same run, and signature verifications per second.
//!
//!     cargo run --release -p model-registry --example bench_artifacts [-- MiB [rounds]]
//!
//! The artifact is synthetic fp32 weights (normally distributed, σ = 0.02, as trained weights roughly are),
//! compressed at level 9, the level `edgefleet release pack` uses by default. Times are best of `rounds`.

use std::io::{BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Duration as Days, Utc};
use model_registry::manifest::ModelFormat;
use model_registry::root::DocType;
use model_registry::*;

fn weights(bytes: usize) -> Vec<u8> {
    let mut x = 0x2545f4914f6cdd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut out = Vec::with_capacity(bytes);
    while out.len() < bytes {
        // Box-Muller.
        let (u, v) = (next().max(1e-12), next());
        let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
        out.extend_from_slice(&((z * 0.02) as f32).to_le_bytes());
    }
    out.truncate(bytes);
    out
}

fn best(rounds: usize, mut f: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(100);
    let rounds: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let dir = tempfile::tempdir()?;
    let raw_path = dir.path().join("model.bin");
    let zst_path = dir.path().join("model.bin.zst");
    let raw = weights(mib << 20);
    std::fs::write(&raw_path, &raw)?;
    drop(raw);
    let (raw_ref, zstd_ref) =
        compress(BufReader::new(std::fs::File::open(&raw_path)?), std::fs::File::create(&zst_path)?, 9, u64::MAX)?;
    println!(
        "artifact: {mib} MiB synthetic fp32 weights, zstd -9 -> {:.1} MiB ({:.1} %)",
        zstd_ref.size as f64 / (1 << 20) as f64,
        100.0 * zstd_ref.size as f64 / raw_ref.size as f64
    );

    // Warm the page cache for both readers.
    std::fs::read(&zst_path)?;
    let zstd_cli = best(rounds, || {
        let status = Command::new("zstd")
            .args(["-d", "-q", "-c"])
            .arg(&zst_path)
            .stdout(Stdio::null())
            .status()
            .expect("zstd is installed");
        assert!(status.success());
    });
    let ours = best(rounds, || {
        let f = std::fs::File::open(&zst_path).expect("open");
        decompress_verified(BufReader::with_capacity(256 << 10, f), std::io::sink(), &zstd_ref, &raw_ref)
            .expect("verified");
    });
    let to_file = best(rounds, || {
        let f = std::fs::File::open(&zst_path).expect("open");
        let mut out = std::fs::File::create(dir.path().join("out.bin")).expect("create");
        decompress_verified(BufReader::with_capacity(256 << 10, f), &mut out, &zstd_ref, &raw_ref).expect("verified");
        out.flush().expect("flush");
    });
    let (z, o, t) = (mib_s(raw_ref.size, zstd_cli), mib_s(raw_ref.size, ours), mib_s(raw_ref.size, to_file));
    println!("zstd -d -c > /dev/null                     {:>8.0} MiB/s (raw bytes out)", z);
    println!("decompress_verified -> sink (2x sha256)    {:>8.0} MiB/s  = {:.0} % of zstd -d", o, 100.0 * o / z);
    println!("decompress_verified -> file (page cache)   {:>8.0} MiB/s", t);

    // Signature verification: a release manifest with two release signatures, verified end to end
    // (parse, canonicalise, two ed25519 verifications, typed parse), and bare ed25519 verifications.
    let keys: Vec<KeyPair> = (1..=4u8).map(|i| KeyPair::from_seed(&[i; 32])).collect();
    let root = Root::new(
        Utc::now() + Days::days(30),
        [
            (Role::Root, vec![keys[0].public().clone()], 1),
            (Role::Release, vec![keys[1].public().clone(), keys[2].public().clone()], 2),
            (Role::Fleet, vec![keys[3].public().clone()], 1),
        ],
    )?;
    let art = ArtifactRef { sha256: Sha256Digest::of(b"x"), size: 1 };
    let manifest = ReleaseManifest {
        doc_type: DocType::Release,
        model: "magika".parse()?,
        version: ReleaseVersion::new(1)?,
        security_floor: ReleaseVersion::new(1)?,
        created: Utc::now(),
        description: String::new(),
        variants: ["cpu-fp32", "cpu-int8"]
            .iter()
            .map(|id| Variant {
                id: id.parse().expect("id"),
                requirements: Requirements::default(),
                precision: Precision::Fp32,
                format: ModelFormat::Onnx,
                raw: art,
                zstd: art,
                golden: art,
                inputs: vec![TensorSpec { name: "bytes".into(), dtype: ElementType::Int32, shape: vec![-1, 2048] }],
                outputs: vec![TensorSpec {
                    name: "target_label".into(),
                    dtype: ElementType::Float32,
                    shape: vec![-1, 214],
                }],
                llm: None,
            })
            .collect(),
        routing: None,
    };
    let mut env = Envelope::new(&manifest)?;
    env.sign(&keys[1])?;
    env.sign(&keys[2])?;
    let bytes = serde_json::to_vec(&env)?;
    let last = LastSeen::default();
    let limits = Limits::default();
    let n = 5000;
    let t = Instant::now();
    for _ in 0..n {
        Verifier::new(&root, &last, Utc::now(), &limits).release(&bytes).expect("verifies");
    }
    let per_manifest = t.elapsed();
    let msg = env.signed_bytes()?;
    let sig = keys[1].sign_hex(&msg);
    let t = Instant::now();
    for _ in 0..n {
        keys[1].public().verifies(&msg, &sig).expect("valid");
    }
    let per_sig = t.elapsed();
    println!(
        "release manifest verification ({} B, 2 signatures)  {:>8.0} manifests/s",
        bytes.len(),
        n as f64 / per_manifest.as_secs_f64()
    );
    println!(
        "ed25519 verify_strict                               {:>8.0} signatures/s",
        n as f64 / per_sig.as_secs_f64()
    );
    Ok(())
}
