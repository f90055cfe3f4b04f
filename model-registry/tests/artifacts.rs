//! Streaming compression and verified decompression, canonical JSON, golden-vector files and blob stores.

use std::collections::BTreeMap;

use model_registry::artifact::{ArtifactError, ArtifactRef, compress, decompress_verified, measure_stream};
use model_registry::blob::{BlobError, BlobStore, ByteRange, FsBlobStore, MemBlobStore};
use model_registry::canonical::to_canonical;
use model_registry::golden::{Cases, GoldenVectors, HostTensor, Tolerance};
use model_registry::{Defence, Precision, Refusal, Sha256Digest};
use proptest::prelude::*;

fn packed(raw: &[u8], level: i32) -> (Vec<u8>, ArtifactRef, ArtifactRef) {
    let mut out = Vec::new();
    let (r, z) = compress(raw, &mut out, level, u64::MAX).expect("compress");
    (out, r, z)
}

fn weights(n: usize) -> Vec<u8> {
    // Deterministic float-like data: compresses somewhat, as real weights do.
    let mut x = 0x9e3779b97f4a7c15u64;
    (0..n / 4)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1).to_le_bytes()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn compress_then_decompress_gives_back_the_bytes_and_digests(raw in proptest::collection::vec(any::<u8>(), 0..200_000), level in 1i32..10) {
        let (z, raw_ref, zstd_ref) = packed(&raw, level);
        prop_assert_eq!(raw_ref, ArtifactRef { sha256: Sha256Digest::of(&raw), size: raw.len() as u64 });
        prop_assert_eq!(zstd_ref, ArtifactRef { sha256: Sha256Digest::of(&z), size: z.len() as u64 });
        let mut back = Vec::new();
        decompress_verified(z.as_slice(), &mut back, &zstd_ref, &raw_ref).expect("verified");
        prop_assert_eq!(back, raw);
    }

    /// The wire form (ordinary JSON, pretty or not) round-trips to the same canonical bytes, so a signature
    /// made before sending still verifies after receiving. Any string, control characters included.
    #[test]
    fn canonical_bytes_survive_the_wire(v in json_value(".*")) {
        let c = to_canonical(&v).expect("no floats");
        let wire = serde_json::to_vec_pretty(&v).expect("json");
        let received: serde_json::Value = serde_json::from_slice(&wire).expect("wire form parses");
        prop_assert_eq!(to_canonical(&received).expect("again"), c);
    }

    /// Canonical JSON is itself JSON that parses back to the value. (OLPC canonical JSON writes control
    /// characters unescaped, which strict JSON parsers refuse; canonical bytes are only ever signed and hashed,
    /// never parsed, so that is harmless. olpc-cjson also NFC-normalises strings, so a string that is not in
    /// NFC changes; this property is stated for printable ASCII and NFC-stable non-ASCII text.)
    #[test]
    fn canonical_json_round_trips(v in json_value("[ -~é漢字ß€😀]*")) {
        let c = to_canonical(&v).expect("no floats");
        let parsed: serde_json::Value = serde_json::from_slice(&c).expect("canonical JSON is JSON");
        prop_assert_eq!(&parsed, &v);
        prop_assert_eq!(to_canonical(&parsed).expect("again"), c);
    }
}

fn json_value(strings: &'static str) -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<u64>().prop_map(|n| serde_json::json!(n)),
        strings.prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(strings, inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn canonical_json_is_independent_of_key_order_and_refuses_floats() {
    let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"y":"\u00e9","x":[true,null]}}"#).expect("json");
    let b: serde_json::Value = serde_json::from_str(r#"{"a":{"x":[true,null],"y":"é"},"b":1}"#).expect("json");
    assert_eq!(to_canonical(&a).expect("a"), to_canonical(&b).expect("b"));
    assert_eq!(to_canonical(&a).expect("a"), r#"{"a":{"x":[true,null],"y":"é"},"b":1}"#.as_bytes().to_vec());
    assert!(to_canonical(&serde_json::json!({"f": 0.5})).is_err());
}

fn refusal(e: ArtifactError) -> (Defence, String) {
    let r = Refusal::from(e);
    (r.defence(), r.to_string())
}

#[test]
fn decompression_refuses_every_kind_of_bad_stream() {
    let raw = weights(1 << 20);
    let (z, raw_ref, zstd_ref) = packed(&raw, 3);
    let run = |bytes: &[u8], zr: &ArtifactRef, rr: &ArtifactRef| {
        let mut out = Vec::new();
        decompress_verified(bytes, &mut out, zr, rr).map(|()| out)
    };

    // Truncated download.
    let (d, why) = refusal(run(&z[..z.len() - 100], &zstd_ref, &raw_ref).expect_err("truncated"));
    assert_eq!(d, Defence::MixAndMatch, "{why}");
    assert!(why.contains("ended after"), "{why}");
    // One byte more than signed (a trailing byte after the frame).
    let mut longer = z.clone();
    longer.push(0);
    let (d, why) = refusal(run(&longer, &zstd_ref, &raw_ref).expect_err("longer"));
    assert_eq!(d, Defence::EndlessData, "{why}");
    // A flipped byte in the middle: named by the signed digest, not by what the decoder made of it.
    let mut flipped = z.clone();
    flipped[z.len() / 2] ^= 0x40;
    let (d, why) = refusal(run(&flipped, &zstd_ref, &raw_ref).expect_err("flipped"));
    assert_eq!(d, Defence::MixAndMatch, "{why}");
    assert!(why.contains("zstd artifact has sha256"), "{why}");
    // A stream that matches its signed digest but is not zstd at all (a bad pack) is malformed.
    let junk = b"definitely not a zstd frame".to_vec();
    let junk_ref = ArtifactRef { sha256: Sha256Digest::of(&junk), size: junk.len() as u64 };
    let (d, why) = refusal(run(&junk, &junk_ref, &raw_ref).expect_err("junk"));
    assert_eq!(d, Defence::Malformed, "{why}");
    // A decompression bomb: the signed raw size is smaller than what the stream expands to.
    let small_raw = ArtifactRef { size: 1000, ..raw_ref };
    let (d, why) = refusal(run(&z, &zstd_ref, &small_raw).expect_err("bomb"));
    assert_eq!(d, Defence::EndlessData, "{why}");
    assert!(why.contains("decompressed model"), "{why}");
    // Another release's artifact under this release's refs.
    let (z2, _, _) = packed(&weights(1 << 19), 3);
    assert!(run(&z2, &zstd_ref, &raw_ref).is_err());
    // Raw digest wrong although the compressed one is right: the signed raw digest is what counts.
    let wrong_raw = ArtifactRef { sha256: Sha256Digest::of(b"other"), ..raw_ref };
    let (d, why) = refusal(run(&z, &zstd_ref, &wrong_raw).expect_err("raw digest"));
    assert_eq!(d, Defence::MixAndMatch, "{why}");
    // And the honest stream passes.
    assert_eq!(run(&z, &zstd_ref, &raw_ref).expect("ok"), raw);
}

#[test]
fn measuring_respects_the_cap() {
    let e = measure_stream("upload", &[0u8; 1001][..], 1000).expect_err("over");
    assert!(e.to_string().contains("limit of 1000"), "{e}");
    assert_eq!(measure_stream("upload", &[0u8; 1000][..], 1000).expect("at").size, 1000);
}

#[test]
fn golden_vectors_round_trip_and_judge() {
    let mut inputs = Cases::new();
    let mut outputs = Cases::new();
    inputs.entry("a".into()).or_default().insert("x".into(), HostTensor::from_f32(vec![1, 2], &[1.0, 2.0]));
    outputs
        .entry("a".into())
        .or_default()
        .insert("y".into(), HostTensor::from_f32(vec![2, 3], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2]));
    let g = GoldenVectors {
        inputs,
        outputs: outputs.clone(),
        tolerances: BTreeMap::from([("y".to_owned(), Tolerance::default_for(Precision::Int8))]),
    };
    let bytes = g.to_bytes().expect("serialise");
    let back = GoldenVectors::from_bytes(&bytes).expect("parse");
    assert_eq!(back, g);

    assert!(g.check(&outputs).passed(), "the reference matches itself");
    let mut close = outputs.clone();
    close
        .get_mut("a")
        .and_then(|c| c.insert("y".into(), HostTensor::from_f32(vec![2, 3], &[0.12, 0.68, 0.2, 0.5, 0.31, 0.19])));
    let r = g.check(&close);
    assert!(r.passed(), "{r}");
    assert!((r.outputs[0].max_abs_error - 0.02).abs() < 1e-6);
    // The second row's arg-max flips: top-1 agreement 50 % < 80 %.
    let mut flipped = outputs.clone();
    flipped
        .get_mut("a")
        .and_then(|c| c.insert("y".into(), HostTensor::from_f32(vec![2, 3], &[0.1, 0.7, 0.2, 0.3, 0.35, 0.2])));
    let r = g.check(&flipped);
    assert!(!r.passed());
    assert_eq!(r.outputs[0].top1, Some(0.5));
    // NaN never passes; a missing output or wrong shape neither.
    let mut nan = outputs.clone();
    nan.get_mut("a")
        .and_then(|c| c.insert("y".into(), HostTensor::from_f32(vec![2, 3], &[f32::NAN, 0.7, 0.2, 0.5, 0.3, 0.2])));
    assert!(!g.check(&nan).passed());
    assert!(!g.check(&Cases::new()).passed());
    let mut shape = outputs;
    shape
        .get_mut("a")
        .and_then(|c| c.insert("y".into(), HostTensor::from_f32(vec![3, 2], &[0.1, 0.7, 0.2, 0.5, 0.3, 0.2])));
    assert!(g.check(&shape).to_string().contains("shape [3, 2]"));

    assert!(GoldenVectors::from_bytes(&bytes[..bytes.len() - 1]).is_err(), "truncated file");
    assert!(GoldenVectors::from_bytes(b"not safetensors").is_err());
}

// === blob stores: one suite, both stores ===

async fn blob_store_suite(store: &dyn BlobStore) {
    let data = weights(300_000);
    let good = ArtifactRef { sha256: Sha256Digest::of(&data), size: data.len() as u64 };
    let stored = store.put(Box::pin(std::io::Cursor::new(data.clone())), None, u64::MAX).await.expect("put");
    assert_eq!(stored, good);
    assert_eq!(store.has(&good.sha256).await.expect("has"), Some(good.size));

    // Ranges.
    let read = store.get_range(&good.sha256, Some(ByteRange { start: 1000, end: Some(1010) })).await.expect("range");
    assert_eq!((read.total, read.start, read.len), (good.size, 1000, 10));
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut { read.reader }, &mut got).await.expect("read");
    assert_eq!(got, data[1000..1010]);
    let tail = store.get_range(&good.sha256, Some(ByteRange { start: good.size - 5, end: None })).await.expect("tail");
    assert_eq!(tail.len, 5);
    assert!(matches!(
        store.get_range(&good.sha256, Some(ByteRange { start: 5, end: Some(good.size + 1) })).await,
        Err(BlobError::Range { .. })
    ));

    // A put whose bytes do not match the expected digest stores nothing.
    let liar = ArtifactRef { sha256: Sha256Digest::of(b"something else"), size: data.len() as u64 };
    let e = store.put(Box::pin(std::io::Cursor::new(data.clone())), Some(liar), u64::MAX).await.expect_err("digest");
    assert!(e.to_string().contains("not the signed"), "{e}");
    assert_eq!(store.has(&liar.sha256).await.expect("has"), None);
    // Over the cap: refused, nothing stored.
    let other = weights(5000);
    let e = store.put(Box::pin(std::io::Cursor::new(other.clone())), None, 4000).await.expect_err("cap");
    assert!(e.to_string().contains("limit of 4000"), "{e}");
    assert_eq!(store.has(&Sha256Digest::of(&other)).await.expect("has"), None);

    assert!(store.delete(&good.sha256).await.expect("delete"));
    assert!(!store.delete(&good.sha256).await.expect("delete again"));
    assert!(matches!(store.get_range(&good.sha256, None).await, Err(BlobError::NotFound(_))));
}

#[tokio::test]
async fn memory_blob_store() {
    blob_store_suite(&MemBlobStore::new()).await;
}

#[tokio::test]
async fn filesystem_blob_store_leaves_no_partial_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsBlobStore::open(dir.path()).await.expect("open");
    blob_store_suite(&store).await;
    let leftovers = std::fs::read_dir(dir.path().join("tmp")).expect("tmp dir").count();
    assert_eq!(leftovers, 0, "failed puts left temporary files");
    // A temporary file from a crashed put is cleaned on the next open.
    std::fs::write(dir.path().join("tmp").join("crashed"), b"half").expect("write");
    FsBlobStore::open(dir.path()).await.expect("reopen");
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("tmp dir").count(), 0);
}
