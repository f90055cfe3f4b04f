//! `edgefleet release optimize`: variants of a model made here, each checked against the reference on the
//! release's sample inputs and measured, before any is written.
//!
//! ONNX models go through `edgefleet-optimizer` (pure graph rewrites); GGUF models through llama.cpp's quantize
//! (`optimize_llm.rs`). Everything is written into a hidden staging directory and renamed into place at the end:
//! bad input (a malformed model, an operator a rewrite cannot handle, samples that do not fit the model) leaves
//! nothing. A variant that misses its golden vectors is refused with the numbers and not written; the others are,
//! and the command then exits non-zero.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use edgefleet_optimizer::{Kind, ModelProto, Ranges, calibration_model};
use edgefleet_protocol::tensor::{Cases, ElementType, TensorSpec};
use edgefleet_runtime::{Model, Runtime};
use model_registry::Limits;
use model_registry::fsutil::{read_capped, write_file_atomic};
use model_registry::golden::{GoldenReport, GoldenVectors, read_samples};
use serde::Serialize;

use super::pack::{parse_tolerances, tolerances_for};
use crate::args::ReleaseOptimize;
use crate::output::Out;

/// One variant's line in the report.
#[derive(Debug, Serialize)]
pub(super) struct VariantReport {
    pub variant: String,
    pub precision: String,
    /// The file written, or none when the variant was refused.
    pub file: Option<String>,
    pub bytes: u64,
    pub zstd_bytes: u64,
    /// Per output (ONNX): max |Δ| and top-1 agreement against the reference; for GGUF the golden check's numbers.
    pub accuracy: serde_json::Value,
    /// Median time of one sample case (ONNX) on this machine, in milliseconds.
    pub latency_p50_ms: Option<f64>,
    pub passed: bool,
    /// Why it was refused, with the numbers.
    pub refused: Option<String>,
}

/// Where the variants go while they are made, and how the end is reached.
pub(super) struct Staging {
    pub dir: tempfile::TempDir,
    pub out: PathBuf,
}

impl Staging {
    pub fn new(out: &Path) -> anyhow::Result<Self> {
        if out.exists() {
            bail!("{}: already exists; refusing to overwrite", out.display());
        }
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let dir = tempfile::Builder::new().prefix(".optimize-").tempdir_in(parent)?;
        Ok(Self { dir, out: out.to_owned() })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `report.json`, renames the directory into place if any variant passed, prints the table, and fails
    /// when any variant was refused.
    pub fn finish(
        self,
        reference: VariantReport,
        reports: Vec<VariantReport>,
        compared: Vec<VariantReport>,
        out: &Out,
    ) -> anyhow::Result<()> {
        let passed = reports.iter().filter(|r| r.passed).count();
        let json = serde_json::json!({"reference": reference, "variants": reports, "compared": compared});
        let mut table = vec![format!(
            "{:14} {:9} {:>11} {:>8} {:>11} {:>9} {:>10} {:>9}  verdict",
            "variant", "precision", "bytes", "vs ref", "zstd bytes", "top-1", "max |Δ|", "p50 ms"
        )];
        for r in std::iter::once(&reference).chain(&reports).chain(&compared) {
            table.push(line(r, reference.bytes));
        }
        if passed > 0 {
            write_file_atomic(&self.path("report.json"), &serde_json::to_vec_pretty(&json)?)?;
            let dir = self.dir.keep();
            std::fs::rename(&dir, &self.out).with_context(|| format!("renaming into {}", self.out.display()))?;
            model_registry::fsutil::sync_dir(
                self.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")),
            )?;
        }
        out.emit(table.join("\n"), json);
        let refused: Vec<String> =
            reports.iter().filter_map(|r| r.refused.as_ref().map(|why| format!("{}: {why}", r.variant))).collect();
        ensure!(
            refused.is_empty(),
            "{} of {} variant(s) refused{}:\n{}",
            refused.len(),
            reports.len(),
            if passed > 0 {
                format!(" (the {passed} that passed are in {})", self.out.display())
            } else {
                String::new()
            },
            refused.join("\n")
        );
        Ok(())
    }
}

fn line(r: &VariantReport, reference_bytes: u64) -> String {
    let worst = |key: &str, min: bool| {
        let values = r.accuracy.as_array().into_iter().flatten().filter_map(|o| o.get(key)?.as_f64());
        if min { values.reduce(f64::min) } else { values.reduce(f64::max) }
    };
    let (top1, delta) = match r.accuracy.get("top1_agreement") {
        Some(t) => (t.as_f64(), r.accuracy.get("mean_logprob_error").and_then(|v| v.as_f64())),
        None => (worst("top1_agreement", true), worst("max_abs_error", false)),
    };
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2} %", v * 100.0));
    format!(
        "{:14} {:9} {:>11} {:>8} {:>11} {:>9} {:>10} {:>9}  {}",
        r.variant,
        r.precision,
        r.bytes,
        format!("{:.1} %", r.bytes as f64 * 100.0 / reference_bytes.max(1) as f64),
        r.zstd_bytes,
        pct(top1),
        delta.map_or("-".into(), |d| format!("{d:.4}")),
        r.latency_p50_ms.map_or("-".into(), |l| format!("{l:.3}")),
        match &r.refused {
            None if r.precision == "compared" =>
                format!("compared ({})", if r.passed { "within int8's tolerance" } else { "outside int8's tolerance" }),
            None => "ok".to_owned(),
            Some(why) => format!("REFUSED: {}", why.lines().next().unwrap_or_default()),
        }
    )
}

pub(super) fn zstd_len(bytes: &[u8], level: i32) -> anyhow::Result<u64> {
    Ok(zstd::bulk::compress(bytes, level).context("zstd")?.len() as u64)
}

pub fn optimize(a: ReleaseOptimize, out: &Out) -> anyhow::Result<()> {
    ensure!((1..=19).contains(&a.level), "--level {} is outside zstd's 1 to 19", a.level);
    ensure!((1..=1000).contains(&a.runs), "--runs must be 1 to 1000");
    if a.model.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return super::optimize_llm::optimize(a, out);
    }
    ensure!(a.chat_template.is_none(), "--chat-template is for GGUF models");
    let mut compare = Vec::new();
    for c in &a.compare {
        let (name, file) = c.split_once('=').with_context(|| format!("--compare {c:?}: expected NAME=FILE.onnx"))?;
        ensure!(Path::new(file).is_file(), "--compare {c:?}: {file} is not a file");
        compare.push((name.to_owned(), PathBuf::from(file)));
    }
    let mut kinds = Vec::new();
    for k in &a.to {
        let kind: Kind = k.parse().map_err(anyhow::Error::msg).context("--to")?;
        ensure!(!kinds.contains(&kind), "--to names {kind} twice");
        kinds.push(kind);
    }
    let limits = Limits::default();
    let bytes =
        read_capped(&a.model, limits.max_model_bytes).with_context(|| format!("reading {}", a.model.display()))?;
    let model = edgefleet_optimizer::decode(&bytes).with_context(|| format!("{}", a.model.display()))?;
    let overrides = parse_tolerances(&a.tolerances)?;
    let samples_bytes =
        read_capped(&a.samples, limits.max_golden_bytes).with_context(|| format!("reading {}", a.samples.display()))?;
    let samples = read_samples(&samples_bytes).with_context(|| format!("{}", a.samples.display()))?;
    let calibration = match &a.calibration {
        Some(path) => {
            let bytes =
                read_capped(path, limits.max_golden_bytes).with_context(|| format!("reading {}", path.display()))?;
            read_samples(&bytes).with_context(|| format!("{}", path.display()))?
        }
        None => samples.clone(),
    };
    let staging = Staging::new(&a.out)?;

    let rt = Runtime::load(a.ort.lib.as_deref())?;
    let mut reference = rt.open(&a.model)?;
    check_samples(&reference.inputs, &samples).with_context(|| format!("{}", a.samples.display()))?;
    if let Some(path) = &a.calibration {
        check_samples(&reference.inputs, &calibration).with_context(|| format!("{}", path.display()))?;
    }
    let reference_outputs =
        reference.run_cases(&samples).with_context(|| format!("running the reference {}", a.model.display()))?;
    let stem = a.model.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_owned();
    let reference_report = VariantReport {
        variant: "reference".into(),
        precision: "fp32".into(),
        file: None,
        bytes: bytes.len() as u64,
        zstd_bytes: zstd_len(&bytes, a.level)?,
        accuracy: serde_json::Value::Null,
        latency_p50_ms: Some(latency(&mut reference, &samples, a.runs)?),
        passed: true,
        refused: None,
    };
    let output_specs = reference.outputs.clone();
    drop(reference);

    // Every rewrite first: one that cannot be made fails the command before anything is measured or kept.
    let mut made = Vec::new();
    let bar = out.steps_bar(kinds.len() as u64, "rewriting");
    for &kind in &kinds {
        bar.set_message(format!("rewriting: {kind}"));
        let ranges = if kind == Kind::QdqInt8 { Some(calibrate(&model, &rt, &calibration, &staging)?) } else { None };
        let variant =
            edgefleet_optimizer::optimize(&model, kind, ranges.as_ref()).with_context(|| format!("{kind}"))?;
        made.push((kind, variant));
        bar.inc(1);
    }
    bar.finish_and_clear();

    let (mut reports, mut compared) = (Vec::new(), Vec::new());
    let bar = out.steps_bar(made.len() as u64, "checking");
    for (kind, variant) in made {
        bar.set_message(format!("checking and timing: {kind}"));
        let file = format!("{stem}-{kind}.onnx");
        let path = staging.path(&file);
        let encoded = edgefleet_optimizer::encode(&variant);
        write_file_atomic(&path, &encoded)?;
        let golden = GoldenVectors {
            inputs: samples.clone(),
            outputs: reference_outputs.clone(),
            tolerances: tolerances_for(
                &output_specs,
                kind.tolerance_precision().parse().map_err(anyhow::Error::msg)?,
                &overrides,
            ),
        };
        let mut report =
            measure(&rt, (kind.name(), kind.precision().into()), &path, &encoded, a.level, &golden, a.runs)?;
        if report.passed {
            report.file = Some(file);
        } else {
            std::fs::remove_file(&path)?;
        }
        reports.push(report);
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Other tools' variants, held to int8's tolerances for the verdict column; reported, not written.
    for (name, file) in compare {
        let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let golden = GoldenVectors {
            inputs: samples.clone(),
            outputs: reference_outputs.clone(),
            tolerances: tolerances_for(&output_specs, model_registry::Precision::Int8, &overrides),
        };
        let mut report = measure(&rt, (name, "compared".into()), &file, &bytes, a.level, &golden, a.runs)?;
        if !report.accuracy.is_null() {
            report.refused = None; // another tool's variant that ran is reported, never refused
        }
        compared.push(report);
    }
    staging.finish(reference_report, reports, compared, out)
}

/// A variant's report: its sizes, its golden check and its latency on this machine; one outside its
/// tolerances, or that ONNX Runtime cannot load or run, is refused with why.
fn measure(
    rt: &Runtime,
    (variant, precision): (String, String),
    path: &Path,
    bytes: &[u8],
    level: i32,
    golden: &GoldenVectors,
    runs: u32,
) -> anyhow::Result<VariantReport> {
    let mut report = VariantReport {
        variant,
        precision,
        file: None,
        bytes: bytes.len() as u64,
        zstd_bytes: zstd_len(bytes, level)?,
        accuracy: serde_json::Value::Null,
        latency_p50_ms: None,
        passed: false,
        refused: None,
    };
    match check(rt, path, golden, runs) {
        Ok((g, p50)) => {
            (report.accuracy, report.latency_p50_ms, report.passed) = (accuracy_json(&g), Some(p50), g.passed());
            if !report.passed {
                report.refused = Some(format!("misses the reference's golden vectors:\n{g}"));
            }
        }
        Err(e) => report.refused = Some(format!("{e:#}")),
    }
    Ok(report)
}

/// Loads a written variant, runs the golden vectors, and times it.
fn check(rt: &Runtime, path: &Path, golden: &GoldenVectors, runs: u32) -> anyhow::Result<(GoldenReport, f64)> {
    let mut m = rt.open(path).context("ONNX Runtime cannot load it")?;
    let actual = m.run_cases(&golden.inputs).context("ONNX Runtime cannot run it")?;
    Ok((golden.check(&actual), latency(&mut m, &golden.inputs, runs)?))
}

fn accuracy_json(g: &GoldenReport) -> serde_json::Value {
    serde_json::Value::Array(
        g.outputs
            .iter()
            .map(|o| {
                serde_json::json!({
                    "output": o.output,
                    "max_abs_error": o.max_abs_error,
                    "top1_agreement": o.top1,
                    "tolerance": {"max_abs_error": o.tolerance.max_abs_error, "min_top1_agreement": o.tolerance.min_top1_agreement},
                    "passed": o.passed(),
                })
            })
            .collect(),
    )
}

/// Median time of one case over `runs` passes (after one pass of warm-up), in milliseconds.
fn latency(m: &mut Model, samples: &Cases, runs: u32) -> anyhow::Result<f64> {
    m.run_cases(samples)?;
    let mut times = Vec::new();
    for _ in 0..runs {
        for inputs in samples.values() {
            let t = Instant::now();
            m.run(inputs)?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Every case gives every input of the model, of its element type and rank, with its fixed dimensions.
fn check_samples(inputs: &[TensorSpec], samples: &Cases) -> anyhow::Result<()> {
    ensure!(!samples.is_empty(), "no sample cases");
    for (case, tensors) in samples {
        for spec in inputs {
            let t = tensors.get(&spec.name).with_context(|| {
                format!("case {case}: the samples do not match the model: input {:?} is missing", spec.name)
            })?;
            let dims_fit = t.shape.len() == spec.shape.len()
                && t.shape.iter().zip(&spec.shape).all(|(&have, &want)| want <= 0 || have as i64 == want);
            ensure!(
                t.dtype == spec.dtype && dims_fit,
                "case {case}: the samples do not match the model: input {:?} is {:?} {:?} in the model, {:?} {:?} in \
                 the samples",
                spec.name,
                spec.dtype,
                spec.shape,
                t.dtype,
                t.shape
            );
        }
        if let Some(extra) = tensors.keys().find(|k| !inputs.iter().any(|s| &&s.name == k)) {
            bail!("case {case}: the samples do not match the model: {extra:?} is not an input of it");
        }
    }
    Ok(())
}

/// The activations' ranges over every sample, from the model with them exposed as outputs.
fn calibrate(model: &ModelProto, rt: &Runtime, samples: &Cases, staging: &Staging) -> anyhow::Result<Ranges> {
    let (exposed, names) = calibration_model(model)?;
    let path = staging.path(".calibration.onnx");
    let bytes = edgefleet_optimizer::encode(&exposed);
    write_file_atomic(&path, &bytes)?;
    let mut m =
        rt.open(&path).context("calibration: ONNX Runtime cannot load the model with its activations exposed")?;
    let mut ranges = Ranges::default();
    for (case, inputs) in samples {
        let outputs = m.run(inputs).with_context(|| format!("calibration: case {case}"))?;
        for name in &names {
            let t = outputs
                .get(name)
                .or_else(|| inputs.get(name))
                .with_context(|| format!("calibration: activation {name:?} was not produced"))?;
            ensure!(t.dtype == ElementType::Float32, "calibration: activation {name:?} is {:?}, not float32", t.dtype);
            ranges.observe(name, &t.to_f64().iter().map(|&v| v as f32).collect::<Vec<_>>());
        }
    }
    drop(m);
    std::fs::remove_file(&path)?;
    Ok(ranges)
}
