//! Golden checks: a freshly loaded release, not yet serving, answers its variant's golden file (tensors within
//! tolerance for an ONNX model; the reference's answers to the golden prompts for a language model).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use edgefleet_protocol::llm_golden::LlmGolden;
use model_registry::ModelFormat;
use model_registry::golden::GoldenVectors;

use crate::serving::Served;

/// A variant's golden file: tensors for an ONNX model, prompts and the reference's answers for a language model.
#[derive(Debug)]
pub enum Golden {
    Tensors(GoldenVectors),
    Llm(LlmGolden),
}

impl Golden {
    pub fn parse(format: ModelFormat, bytes: &[u8]) -> anyhow::Result<Self> {
        Ok(match format {
            ModelFormat::Onnx => Golden::Tensors(GoldenVectors::from_bytes(bytes)?),
            ModelFormat::Gguf => Golden::Llm(LlmGolden::from_bytes(bytes)?),
        })
    }

    /// Runs the golden check on a freshly loaded release; `Err` names what was out of tolerance.
    pub async fn check(&self, served: &Arc<Served>) -> anyhow::Result<()> {
        match self {
            Golden::Tensors(g) => golden_check(served, g).await,
            Golden::Llm(g) => {
                let engine = served.llm().context("a golden prompt file for a model that is not a language model")?;
                let report = g.check(&edgefleet_runtime::llm::golden::measure(engine, g).await?);
                if !report.passed() {
                    bail!("golden check failed: {report}");
                }
                tracing::info!(model = %served.model, release = %served.release, %report, "golden check passed");
                Ok(())
            }
        }
    }
}

/// Runs a variant's golden vectors on a freshly loaded session; `Err` names what was out of tolerance.
pub async fn golden_check(served: &Arc<Served>, golden: &GoldenVectors) -> anyhow::Result<()> {
    let mut actual = BTreeMap::new();
    for (case, inputs) in &golden.inputs {
        actual.insert(case.clone(), served.check(inputs.clone()).await.with_context(|| format!("golden case {case}"))?);
    }
    let report = golden.check(&actual);
    if !report.passed() {
        bail!("golden vectors failed:\n{report}");
    }
    Ok(())
}
