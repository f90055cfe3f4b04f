//! `edgefleet release optimize` for GGUF: requantized by llama.cpp's own quantize API, each variant scored against
//! the source on the golden prompts by teacher forcing (next-token agreement, log-probability error: the check
//! `release pack` and devices run) and timed generating the reference's answers.

use std::time::Instant;

use anyhow::{Context, ensure};
use edgefleet_protocol::llm_golden::{LlmGolden, LlmGoldenReport, LlmTolerance};
use edgefleet_runtime::llm::{Engine, GenRequest, Sampling, golden, quantize, quantize_types};

use super::optimize::{Staging, VariantReport, zstd_len};
use super::pack_llm::{read_prompts, start};
use crate::args::ReleaseOptimize;
use crate::output::Out;

/// The context the engines run the golden prompts in (they are short).
const CONTEXT: u32 = 1024;

pub(super) fn optimize(a: ReleaseOptimize, out: &Out) -> anyhow::Result<()> {
    ensure!(a.tolerances.is_empty(), "--tolerance is for ONNX outputs; GGUF variants are held to the golden check");
    ensure!(a.compare.is_empty() && a.calibration.is_none(), "--compare and --calibration are for ONNX models");
    ensure!((1..=256).contains(&a.golden_tokens), "--golden-tokens must be 1 to 256");
    let known: Vec<&str> = quantize_types().collect();
    for (i, t) in a.to.iter().enumerate() {
        ensure!(
            known.contains(&t.as_str()),
            "--to {t:?}: not a llama.cpp type the optimizer writes ({})",
            known.join(", ")
        );
        ensure!(!a.to[..i].contains(t), "--to names {t} twice");
    }
    let prompts = read_prompts(&a.samples)?;
    let staging = Staging::new(&a.out)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let source = std::fs::read(&a.model).with_context(|| format!("reading {}", a.model.display()))?;

    let template = a.chat_template.as_deref();
    let (reference, _) = start(&a.model, CONTEXT, template)?;
    let bar = out.spinner(&format!("answering {} golden prompts with {}", prompts.len(), a.model.display()));
    let golden = rt
        .block_on(golden::reference(&reference, &prompts, a.golden_tokens, LlmTolerance::OTHER_QUANTIZATION))
        .with_context(|| format!("the reference {} on the golden prompts", a.model.display()))?;
    let reference_ms = ms_per_token(&rt, &reference, &golden)?;
    bar.finish_and_clear();
    drop(reference);
    let reference_report = VariantReport {
        variant: "reference".into(),
        precision: "source".into(),
        file: None,
        bytes: source.len() as u64,
        zstd_bytes: zstd_len(&source, a.level)?,
        accuracy: serde_json::Value::Null,
        latency_p50_ms: Some(reference_ms),
        passed: true,
        refused: None,
    };
    drop(source);

    let stem = a.model.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_owned();
    let mut reports = Vec::new();
    let bar = out.steps_bar(a.to.len() as u64, "requantizing");
    for to in &a.to {
        bar.set_message(format!("requantizing to {to} and scoring"));
        let file = format!("{stem}-{to}.gguf");
        let path = staging.path(&file);
        quantize(&a.model, &path, to, 0)?;
        let bytes = std::fs::read(&path)?;
        let (report, ms) = {
            let (engine, _) = start(&path, CONTEXT, template)?;
            let r = golden.check(&rt.block_on(golden::measure(&engine, &golden))?);
            (r, ms_per_token(&rt, &engine, &golden)?)
        };
        let passed = report.passed();
        if !passed {
            std::fs::remove_file(&path)?;
        }
        reports.push(VariantReport {
            variant: to.clone(),
            precision: to.clone(),
            file: passed.then_some(file),
            bytes: bytes.len() as u64,
            zstd_bytes: zstd_len(&bytes, a.level)?,
            accuracy: accuracy_json(&report),
            latency_p50_ms: Some(ms),
            passed,
            refused: (!passed).then(|| format!("misses the reference's golden answers:\n{report}")),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    staging.finish(reference_report, reports, Vec::new(), out)
}

fn accuracy_json(r: &LlmGoldenReport) -> serde_json::Value {
    serde_json::json!({
        "steps": r.steps,
        "top1_agreement": r.top1_agreement,
        "mean_logprob_error": r.mean_logprob_error,
        "max_logprob_error": r.max_logprob_error,
        "failures": r.failures,
    })
}

/// The median over the golden prompts of the time per generated token (prefill included), in milliseconds.
fn ms_per_token(rt: &tokio::runtime::Runtime, engine: &Engine, golden: &LlmGolden) -> anyhow::Result<f64> {
    let mut per_token = Vec::new();
    for case in &golden.cases {
        let request = GenRequest {
            prompt: case.prompt_tokens.clone(),
            max_tokens: case.continuation.len() as u32,
            sampling: Sampling::GREEDY,
            logprobs: false,
        };
        let t = Instant::now();
        let (tokens, _) = rt.block_on(engine.generate(request))?;
        per_token.push(t.elapsed().as_secs_f64() * 1e3 / tokens.len().max(1) as f64);
    }
    per_token.sort_by(f64::total_cmp);
    Ok(per_token[per_token.len() / 2])
}
