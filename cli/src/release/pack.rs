//! `edgefleet release pack`: ONNX files in, a release directory out (unsigned manifest + blobs).
//!
//! Everything is written into a hidden staging directory beside the target and renamed into place at the
//! end, so an interrupted or failed pack leaves nothing behind.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use chrono::{DurationRound, Utc};
use model_registry::artifact::ArtifactRef;
use model_registry::fsutil::{read_capped, sync_dir, write_atomic};
use model_registry::golden::{GoldenVectors, Tolerance, read_samples};
use model_registry::manifest::ModelFormat;
use model_registry::root::DocType;
use model_registry::routing::RoutingPolicy;
use model_registry::{
    Envelope, Limits, ModelName, Precision, ReleaseManifest, ReleaseVersion, Requirements, Sha256Digest, Variant,
    VariantId,
};

use crate::args::ReleasePack;
use crate::output::Out;
use edgefleet_protocol::tensor::TensorSpec;
use edgefleet_runtime::Runtime;

/// One `--variant` as given on the command line.
#[derive(Debug)]
pub(super) struct VariantSpec {
    pub id: VariantId,
    pub file: PathBuf,
    pub precision: Precision,
    pub requirements: Requirements,
    /// GGUF only: the chat template to use instead of the file's own.
    pub chat_template: Option<String>,
}

fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let (num, mult) = match s {
        _ if s.ends_with("GiB") => (&s[..s.len() - 3], 1u64 << 30),
        _ if s.ends_with("MiB") => (&s[..s.len() - 3], 1 << 20),
        _ if s.ends_with("KiB") => (&s[..s.len() - 3], 1 << 10),
        _ => (s, 1),
    };
    Ok(num.trim().parse::<u64>().with_context(|| format!("{s:?} is not a size such as 512MiB"))? * mult)
}

fn parse_variant(s: &str) -> anyhow::Result<VariantSpec> {
    let ctx = || format!("--variant {s:?}");
    let mut fields = BTreeMap::new();
    for part in s.split(',') {
        let (k, v) = part.split_once('=').with_context(|| format!("{}: {part:?} is not key=value", ctx()))?;
        ensure!(fields.insert(k.trim(), v.trim()).is_none(), "{}: {k} given twice", ctx());
    }
    let take = |k: &str| fields.get(k).copied();
    let list = |k: &str| take(k).map(|v| v.split('+').map(str::to_owned).collect()).unwrap_or_default();
    for k in fields.keys() {
        ensure!(
            ["id", "file", "precision", "providers", "arch", "soc", "min-memory", "chat-template"].contains(k),
            "{}: unknown key {k:?} (known: id, file, precision, providers, arch, soc, min-memory, chat-template)",
            ctx()
        );
    }
    Ok(VariantSpec {
        id: take("id").with_context(|| format!("{}: id= is required", ctx()))?.parse().with_context(ctx)?,
        file: PathBuf::from(take("file").with_context(|| format!("{}: file= is required", ctx()))?),
        precision: take("precision")
            .with_context(|| format!("{}: precision= is required", ctx()))?
            .parse()
            .map_err(anyhow::Error::msg)
            .with_context(ctx)?,
        requirements: Requirements {
            execution_providers: list("providers"),
            arch: list("arch"),
            soc: list("soc"),
            min_memory_bytes: take("min-memory").map(parse_bytes).transpose().with_context(ctx)?,
        },
        chat_template: take("chat-template").map(str::to_owned),
    })
}

/// One `--tolerance`: for a precision (or all), an output's limits, or `None` to leave it unchecked.
pub(super) type ToleranceOverride = (Option<Precision>, String, Option<(f64, Option<f64>)>);

/// `--tolerance [PRECISION:]OUTPUT=max_abs:X,top1:Y`, or `[PRECISION:]OUTPUT=skip` to leave an output out of
/// the check (a recurrent state, say, that diverges under quantization while the real output stays close).
pub(super) fn parse_tolerances(specs: &[String]) -> anyhow::Result<Vec<ToleranceOverride>> {
    let mut out = Vec::new();
    for s in specs {
        let (lhs, rhs) = s.split_once('=').with_context(|| format!("--tolerance {s:?}: expected OUTPUT=max_abs:X"))?;
        let (precision, output) = match lhs.split_once(':') {
            Some((p, o)) => (Some(p.parse::<Precision>().map_err(anyhow::Error::msg)?), o),
            None => (None, lhs),
        };
        if rhs == "skip" {
            out.push((precision, output.to_owned(), None));
            continue;
        }
        let (mut max_abs, mut top1) = (None, None);
        for part in rhs.split(',') {
            let (k, v) =
                part.split_once(':').with_context(|| format!("--tolerance {s:?}: {part:?} is not key:value"))?;
            let v: f64 = v.parse().with_context(|| format!("--tolerance {s:?}: {v:?} is not a number"))?;
            ensure!(v.is_finite() && v >= 0.0, "--tolerance {s:?}: {v} must be a finite non-negative number");
            match k {
                "max_abs" => max_abs = Some(v),
                "top1" => top1 = Some(v),
                _ => bail!("--tolerance {s:?}: unknown key {k:?} (known: max_abs, top1)"),
            }
        }
        let max_abs = max_abs.with_context(|| format!("--tolerance {s:?}: max_abs is required"))?;
        out.push((precision, output.to_owned(), Some((max_abs, top1))));
    }
    Ok(out)
}

/// Each output's tolerance for a variant of `precision`: the precision's default, or what `--tolerance` says;
/// outputs it skips are left out.
pub(super) fn tolerances_for(
    outputs: &[TensorSpec],
    precision: Precision,
    overrides: &[ToleranceOverride],
) -> BTreeMap<String, Tolerance> {
    let mut tolerances = BTreeMap::new();
    'outputs: for output in outputs {
        let mut t = Tolerance::default_for(precision);
        for (p, name, limits) in overrides {
            if name != &output.name || p.is_some_and(|p| p != precision) {
                continue;
            }
            let Some((max_abs, top1)) = limits else { continue 'outputs };
            t.max_abs_error = *max_abs;
            t.min_top1_agreement = top1.unwrap_or(t.min_top1_agreement);
        }
        tolerances.insert(output.name.clone(), t);
    }
    tolerances
}

/// Compresses a variant's model file into `blobs/`: its raw and its zstd reference.
pub(super) fn compress_model(
    blobs: &Path,
    spec: &VariantSpec,
    level: i32,
    limits: &Limits,
    out: &Out,
) -> anyhow::Result<(ArtifactRef, ArtifactRef)> {
    let file = File::open(&spec.file).with_context(|| format!("reading {}", spec.file.display()))?;
    let bar = out.bytes_bar(file.metadata()?.len(), &format!("compressing {}", spec.id));
    let mut raw_ref = None;
    let zstd_ref = write_blob(blobs, |f| {
        let (raw, z) = model_registry::compress(
            bar.wrap_read(BufReader::with_capacity(256 << 10, file)),
            f,
            level,
            limits.max_model_bytes,
        )?;
        raw_ref = Some(raw);
        Ok(z)
    })?;
    bar.finish_and_clear();
    Ok((raw_ref.context("compression produced no digest")?, zstd_ref))
}

/// Writes `bytes` into `blobs/` under their digest.
pub(super) fn write_bytes_blob(blobs: &Path, bytes: &[u8]) -> anyhow::Result<ArtifactRef> {
    write_blob(blobs, |f| {
        std::io::Write::write_all(f, bytes)?;
        Ok(ArtifactRef { sha256: Sha256Digest::of(bytes), size: bytes.len() as u64 })
    })
}

/// Writes a blob into `blobs/` under its digest, through `fill`, atomically.
fn write_blob(
    blobs: &Path,
    fill: impl FnOnce(&mut File) -> anyhow::Result<ArtifactRef>,
) -> anyhow::Result<ArtifactRef> {
    let staging = blobs.join(".incoming");
    let mut made = None;
    write_atomic(&staging, |f| -> anyhow::Result<()> {
        made = Some(fill(f)?);
        Ok(())
    })?;
    let r = made.context("blob writer produced nothing")?;
    std::fs::rename(&staging, blobs.join(r.sha256.to_hex()))?;
    Ok(r)
}

pub fn pack(a: ReleasePack, out: &Out) -> anyhow::Result<()> {
    let model: ModelName = a.model.parse().context("--model")?;
    let version = ReleaseVersion::new(a.version).context("--version")?;
    let floor = ReleaseVersion::new(a.security_floor).context("--security-floor")?;
    ensure!(floor <= version, "--security-floor {floor} is above --version {version}");
    ensure!((1..=19).contains(&a.level), "--level {} is outside zstd's 1 to 19", a.level);
    let specs = a.variants.iter().map(|s| parse_variant(s)).collect::<anyhow::Result<Vec<_>>>()?;
    for (i, s) in specs.iter().enumerate() {
        ensure!(!specs[..i].iter().any(|o| o.id == s.id), "variant id {} is given twice", s.id);
        ensure!(s.file.is_file(), "variant {}: {} is not a file", s.id, s.file.display());
    }
    if a.out.exists() {
        bail!("{}: already exists; refusing to overwrite", a.out.display());
    }
    let routing = routing(&a)?;
    let is_gguf = |s: &VariantSpec| s.file.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if specs.iter().any(is_gguf) {
        ensure!(specs.iter().all(is_gguf), "a release is all ONNX or all GGUF variants, not both");
        let head = Head { model, version, floor, routing };
        return super::pack_llm::pack(a, head, specs, out);
    }
    ensure!(routing.is_none(), "--routing is for language-model (GGUF) releases");
    ensure!(specs.iter().all(|s| s.chat_template.is_none()), "chat-template= is for GGUF variants");
    let overrides = parse_tolerances(&a.tolerances)?;
    let limits = Limits::default();
    let samples_bytes =
        read_capped(&a.samples, limits.max_golden_bytes).with_context(|| format!("reading {}", a.samples.display()))?;
    let samples = read_samples(&samples_bytes).with_context(|| format!("{}", a.samples.display()))?;

    let rt = Runtime::load(a.ort.lib.as_deref())?;
    let reference_path = match &a.reference {
        Some(p) => p.clone(),
        None => specs
            .iter()
            .find(|s| s.precision == Precision::Fp32)
            .map(|s| s.file.clone())
            .context("no fp32 variant to take reference outputs from: give --reference MODEL.onnx")?,
    };
    let mut reference = rt.open(&reference_path)?;
    let reference_outputs = reference
        .run_cases(&samples)
        .with_context(|| format!("running the reference model {}", reference_path.display()))?;

    let parent = a.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new().prefix(".pack-").tempdir_in(parent)?;
    let blobs = staging.path().join("blobs");
    std::fs::create_dir(&blobs)?;

    let mut variants = Vec::new();
    let mut summary = Vec::new();
    for spec in specs {
        let mut m = rt.open(&spec.file)?;
        for input in &reference.inputs {
            let theirs = m.inputs.iter().find(|i| i.name == input.name);
            ensure!(
                theirs.is_some_and(|t| t.dtype == input.dtype),
                "variant {}: input {:?} ({:?}) of the reference model is missing or of another type",
                spec.id,
                input.name,
                input.dtype
            );
        }
        let tolerances = tolerances_for(&reference.outputs, spec.precision, &overrides);
        ensure!(!tolerances.is_empty(), "variant {}: every output is skipped; nothing would be checked", spec.id);
        let golden = GoldenVectors { inputs: samples.clone(), outputs: reference_outputs.clone(), tolerances };
        // A variant that cannot reproduce its own golden vectors here would be refused by every device.
        let report = golden.check(&m.run_cases(&samples).with_context(|| format!("running variant {}", spec.id))?);
        ensure!(report.passed(), "variant {} fails its golden vectors against the reference:\n{report}", spec.id);

        let golden_bytes = golden.to_bytes()?;
        let golden_ref = write_bytes_blob(&blobs, &golden_bytes)?;
        let (raw, zstd_ref) = compress_model(&blobs, &spec, a.level, &limits, out)?;
        summary.push(format!(
            "  {:16} {:5} raw {:>10} B  zstd {:>10} B  golden {}",
            spec.id.as_str(),
            spec.precision.to_string(),
            raw.size,
            zstd_ref.size,
            report
                .outputs
                .iter()
                .map(|o| format!("{} max|Δ| {:.2e}", o.output, o.max_abs_error))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        variants.push(Variant {
            id: spec.id,
            requirements: spec.requirements,
            precision: spec.precision,
            format: ModelFormat::Onnx,
            raw,
            zstd: zstd_ref,
            golden: golden_ref,
            inputs: m.inputs.clone(),
            outputs: m.outputs.clone(),
            llm: None,
        });
    }

    finish(
        Finish { model, version, floor, description: a.description, routing: None, out: &a.out, staging, parent },
        variants,
        &summary,
        out,
    )
}

/// The routing policy `--routing` names, parsed and checked (unknown fields and values out of range refused).
fn routing(a: &ReleasePack) -> anyhow::Result<Option<RoutingPolicy>> {
    let Some(path) = &a.routing else { return Ok(None) };
    let text = read_capped(path, 64 << 10).with_context(|| format!("reading {}", path.display()))?;
    let policy: RoutingPolicy =
        serde_json::from_slice(&text).with_context(|| format!("{}: not a routing policy", path.display()))?;
    policy.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Some(policy))
}

/// What every release says of itself, whatever its variants.
pub(super) struct Head {
    pub model: ModelName,
    pub version: ReleaseVersion,
    pub floor: ReleaseVersion,
    pub routing: Option<RoutingPolicy>,
}

/// What a pack has made so far, to be written out.
pub(super) struct Finish<'a> {
    pub model: ModelName,
    pub version: ReleaseVersion,
    pub floor: ReleaseVersion,
    pub description: String,
    pub routing: Option<RoutingPolicy>,
    pub out: &'a Path,
    pub staging: tempfile::TempDir,
    pub parent: &'a Path,
}

/// Writes the unsigned manifest into the staging directory and renames it into place.
pub(super) fn finish(f: Finish<'_>, variants: Vec<Variant>, summary: &[String], out: &Out) -> anyhow::Result<()> {
    let Finish { model, version, floor, description, routing, out: dest, staging, parent } = f;
    let blobs = staging.path().join("blobs");
    let manifest = ReleaseManifest {
        doc_type: DocType::Release,
        model,
        version,
        security_floor: floor,
        created: Utc::now().duration_trunc(chrono::Duration::seconds(1))?,
        description,
        variants,
        routing,
    };
    manifest.validate()?;
    crate::docs::write_new(&staging.path().join("manifest.json"), &Envelope::new(&manifest)?)?;
    sync_dir(&blobs)?;
    let staged = staging.keep();
    std::fs::rename(&staged, dest).with_context(|| format!("moving the packed release to {}", dest.display()))?;
    sync_dir(parent)?;
    out.emit(
        format!(
            "packed {} release {} into {} (unsigned):\n{}\nsign it with `edgefleet release sign {} --key RELEASE.key`",
            manifest.model,
            manifest.version,
            dest.display(),
            summary.join("\n"),
            dest.display()
        ),
        serde_json::json!({"release": dest, "model": manifest.model, "version": manifest.version,
            "variants": manifest.variants.iter().map(|v| serde_json::json!({"id": v.id, "precision": v.precision, "format": v.format, "raw": v.raw, "zstd": v.zstd, "golden": v.golden, "llm": v.llm})).collect::<Vec<_>>()}),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_specs_parse_and_refuse_clearly() {
        let v = parse_variant("id=cpu-int8,file=m.onnx,precision=int8,providers=CPUExecutionProvider,arch=x86_64+aarch64,min-memory=64MiB")
            .expect("valid");
        assert_eq!(v.id.as_str(), "cpu-int8");
        assert_eq!(v.precision, Precision::Int8);
        assert_eq!(v.requirements.arch, vec!["x86_64", "aarch64"]);
        assert_eq!(v.requirements.min_memory_bytes, Some(64 << 20));
        for (bad, says) in [
            ("id=../x,file=m.onnx,precision=int8", "variant id"),
            ("id=a,file=m.onnx,precision=int7", "precision \"int7\""),
            ("id=a,precision=int8", "file= is required"),
            ("id=a,file=m,precision=int8,colour=red", "unknown key \"colour\""),
            ("id=a,file=m,precision=int8,min-memory=lots", "not a size"),
        ] {
            let e = format!("{:#}", parse_variant(bad).expect_err(bad));
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn tolerances_parse() {
        let t = parse_tolerances(&["int8:target=max_abs:0.2,top1:0.5".into(), "y=max_abs:1e-3".into()]).expect("ok");
        assert_eq!(t[0], (Some(Precision::Int8), "target".into(), Some((0.2, Some(0.5)))));
        assert_eq!(t[1], (None, "y".into(), Some((1e-3, None))));
        assert_eq!(parse_tolerances(&["int8:state=skip".into()]).expect("ok")[0].2, None);
        assert!(parse_tolerances(&["y=top1:0.5".into()]).is_err());
        assert!(parse_tolerances(&["y=max_abs:NaN".into()]).is_err());
    }
}
