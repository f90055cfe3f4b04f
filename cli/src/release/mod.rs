//! `edgefleet release`: pack, sign, verify and golden-check releases.
//!
//! A packed release is a directory: `manifest.json` (the signed envelope) and `blobs/<sha256>` holding each
//! variant's zstd model and golden vectors, named by digest, ready to push.

use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::Utc;
use edgefleet_protocol::llm_golden::LlmGolden;
use model_registry::artifact::{ArtifactRef, decompress_verified, verify_stream};
use model_registry::golden::GoldenVectors;
use model_registry::manifest::ModelFormat;
use model_registry::verify::self_signed_root;
use model_registry::{
    Defence, Envelope, KeyPair, LastSeen, Limits, ModelName, Refusal, ReleaseManifest, ReleaseVersion, Root, Verifier,
};

use crate::args::ReleaseCmd;
use crate::docs;
use crate::output::Out;
use edgefleet_runtime::Runtime;

mod optimize;
mod optimize_llm;
mod pack;
mod pack_llm;

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn scopeguard(path: &Path) -> RemoveOnDrop {
    RemoveOnDrop(path.to_owned())
}

/// A verification that refused: exit code 3, with the defence that fired.
#[derive(Debug)]
pub struct Refused {
    pub what: String,
    pub defence: Defence,
    pub refusal: Refusal,
}

impl Refused {
    pub fn new(what: String, refusal: Refusal) -> Self {
        Self { what, defence: refusal.defence(), refusal }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "REFUSED ({}): {}: {}", self.defence, self.what, self.refusal)
    }
}

impl std::error::Error for Refused {}

pub fn run(cmd: ReleaseCmd, out: &Out) -> anyhow::Result<()> {
    match cmd {
        ReleaseCmd::Pack(a) => pack::pack(a, out),
        ReleaseCmd::Optimize(a) => optimize::optimize(a, out),
        ReleaseCmd::Sign { release, key } => sign(&release, &key, out),
        ReleaseCmd::Verify { release, root, chain, floor } => verify(&release, &root, &chain, floor, out),
        ReleaseCmd::Golden { release, variant, ort } => golden(&release, &variant, ort.lib.as_deref(), out),
        ReleaseCmd::Push { release } => crate::remote_cmd::push(&release, out),
    }
}

/// A release directory and its manifest file.
pub(crate) struct ReleaseDir {
    pub dir: PathBuf,
    pub manifest: PathBuf,
}

impl ReleaseDir {
    pub fn locate(path: &Path) -> Self {
        if path.is_dir() {
            Self { dir: path.to_owned(), manifest: path.join("manifest.json") }
        } else {
            let dir = path.parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("."));
            Self { dir, manifest: path.to_owned() }
        }
    }

    pub fn blob(&self, r: &ArtifactRef) -> PathBuf {
        self.dir.join("blobs").join(r.sha256.to_hex())
    }

    fn open_blob(&self, r: &ArtifactRef, what: &str) -> anyhow::Result<BufReader<File>> {
        let path = self.blob(r);
        let file =
            File::open(&path).with_context(|| format!("{what}: blob {} is missing ({})", r.sha256, path.display()))?;
        Ok(BufReader::with_capacity(256 << 10, file))
    }

    pub fn envelope(&self) -> anyhow::Result<Envelope> {
        let env = docs::read_envelope(&self.manifest, Limits::default().max_manifest_bytes)?;
        anyhow::ensure!(
            env.doc_type() == Some("release"),
            "{}: not a release manifest (`_type` is {:?})",
            self.manifest.display(),
            env.doc_type()
        );
        Ok(env)
    }
}

fn sign(release: &Path, keys: &[PathBuf], out: &Out) -> anyhow::Result<()> {
    anyhow::ensure!(!keys.is_empty(), "give at least one --key");
    let rd = ReleaseDir::locate(release);
    let mut env = rd.envelope()?;
    // Refuse to sign what is not a well-formed manifest: a signature is a statement about its content.
    let manifest: ReleaseManifest =
        env.typed().with_context(|| format!("{}: not a valid release manifest", rd.manifest.display()))?;
    manifest.validate()?;
    let mut ids = Vec::new();
    for k in keys {
        let pair = KeyPair::read_private(k)?;
        env.sign(&pair)?;
        ids.push(pair.key_id());
    }
    docs::replace(&rd.manifest, &env)?;
    out.emit(
        format!(
            "signed {} {} with {} ({} signature(s) now)",
            manifest.model,
            manifest.version,
            ids.iter().map(|k| k.short()).collect::<Vec<_>>().join(", "),
            env.signatures.len()
        ),
        serde_json::json!({"model": manifest.model, "version": manifest.version, "signed_by": ids, "signatures": env.signatures.len()}),
    );
    Ok(())
}

/// Reads the trusted root and walks the chain of newer roots from it.
fn trusted_root(root: &Path, chain: &[PathBuf], limits: &Limits) -> anyhow::Result<Root> {
    let read = |p: &Path| {
        model_registry::fsutil::read_capped(p, limits.max_root_bytes)
            .with_context(|| format!("reading {}", p.display()))
    };
    let mut current =
        self_signed_root(&read(root)?, limits).map_err(|r| Refused::new(root.display().to_string(), r))?;
    for p in chain {
        current = model_registry::update_root(&current, &read(p)?, limits)
            .map_err(|r| Refused::new(p.display().to_string(), r))?;
    }
    Ok(current)
}

fn verify(release: &Path, root: &Path, chain: &[PathBuf], floor: Option<u64>, out: &Out) -> anyhow::Result<()> {
    let limits = Limits::default();
    let rd = ReleaseDir::locate(release);
    let root = trusted_root(root, chain, &limits)?;
    let bytes = model_registry::fsutil::read_capped(&rd.manifest, limits.max_manifest_bytes)
        .with_context(|| format!("reading {}", rd.manifest.display()))?;
    let mut last = LastSeen::default();
    if let Some(floor) = floor {
        // The floor applies to this release's model; read its name (verification re-checks everything).
        let env = rd.envelope()?;
        if let Some(model) = env.signed.get("model").and_then(|m| m.as_str()).and_then(|m| m.parse::<ModelName>().ok())
        {
            last.floors.insert(model, ReleaseVersion::new(floor)?);
        }
    }
    let verified = Verifier::new(&root, &last, Utc::now(), &limits)
        .release(&bytes)
        .map_err(|r| Refused::new(rd.manifest.display().to_string(), r))?;
    let m = &verified.manifest;
    let mut variants = Vec::new();
    for v in &m.variants {
        let bar = out.bytes_bar(v.zstd.size, &format!("verifying {}", v.id));
        let reader = bar.wrap_read(rd.open_blob(&v.zstd, &format!("variant {}", v.id))?);
        decompress_verified(reader, std::io::sink(), &v.zstd, &v.raw)
            .map_err(|e| Refused::new(format!("variant {} model", v.id), e.into()))?;
        bar.finish_and_clear();
        verify_stream(
            "golden vectors",
            rd.open_blob(&v.golden, &format!("variant {} golden vectors", v.id))?,
            &v.golden,
        )
        .map_err(|e| Refused::new(format!("variant {} golden vectors", v.id), e.into()))?;
        let golden_bytes = std::fs::read(rd.blob(&v.golden))?;
        match v.format {
            ModelFormat::Onnx => GoldenVectors::from_bytes(&golden_bytes).map(drop).map_err(anyhow::Error::from),
            ModelFormat::Gguf => LlmGolden::from_bytes(&golden_bytes).map(drop).map_err(anyhow::Error::from),
        }
        .with_context(|| format!("variant {}: golden vectors", v.id))?;
        variants.push(serde_json::json!({"id": v.id, "precision": v.precision, "raw_bytes": v.raw.size, "zstd_bytes": v.zstd.size}));
    }
    let signers = verified.signed_by.iter().map(|k| k.short()).collect::<Vec<_>>().join(", ");
    out.emit(
        format!(
            "verified: {} release {} (floor {}), signed by {} of {} release key(s) needed [{}]; {} variant(s), every blob matches its signed digest",
            m.model,
            m.version,
            m.security_floor,
            verified.signed_by.len(),
            root.roles.release.threshold,
            signers,
            m.variants.len()
        ),
        serde_json::json!({
            "verified": true, "model": m.model, "version": m.version, "security_floor": m.security_floor,
            "signed_by": verified.signed_by, "root_version": root.version, "variants": variants,
        }),
    );
    Ok(())
}

fn golden(release: &Path, variant: &str, ort_lib: Option<&Path>, out: &Out) -> anyhow::Result<()> {
    let rd = ReleaseDir::locate(release);
    let manifest: ReleaseManifest = rd.envelope()?.typed().context("release manifest")?;
    let id = variant.parse()?;
    let v = manifest.variant(&id).with_context(|| format!("release has no variant {variant}"))?;
    // The model goes through the same verified decompression as on a device, into a temporary file.
    let tmp = tempfile::NamedTempFile::new_in(&rd.dir)?;
    decompress_verified(rd.open_blob(&v.zstd, "model")?, tmp.as_file(), &v.zstd, &v.raw)
        .map_err(|e| Refused::new(format!("variant {} model", v.id), e.into()))?;
    verify_stream("golden vectors", rd.open_blob(&v.golden, "golden vectors")?, &v.golden)
        .map_err(|e| Refused::new(format!("variant {} golden vectors", v.id), e.into()))?;
    let golden_bytes = std::fs::read(rd.blob(&v.golden))?;
    if v.format == ModelFormat::Gguf {
        let golden = LlmGolden::from_bytes(&golden_bytes)?;
        let gguf = tmp.path().with_extension("gguf");
        std::fs::rename(tmp.path(), &gguf)?;
        let _remove = scopeguard(&gguf);
        let report = pack_llm::golden_report(&gguf, v, &golden)?;
        out.emit(
            format!("{} {} variant {}:\n{report}", manifest.model, manifest.version, v.id),
            serde_json::json!({"variant": v.id, "passed": report.passed(), "report": report.to_string()}),
        );
        anyhow::ensure!(report.passed(), "variant {} is outside its golden tolerances", v.id);
        return Ok(());
    }
    let golden = GoldenVectors::from_bytes(&golden_bytes)?;
    let rt = Runtime::load(ort_lib)?;
    let mut model = rt.open(tmp.path())?;
    let report = golden.check(&model.run_cases(&golden.inputs)?);
    out.emit(
        format!("{} {} variant {}:\n{report}", manifest.model, manifest.version, v.id),
        serde_json::json!({"variant": v.id, "passed": report.passed(), "report": report}),
    );
    anyhow::ensure!(report.passed(), "variant {} is outside its golden-vector tolerances", v.id);
    Ok(())
}
