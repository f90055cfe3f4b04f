//! `edgefleet release pack` for language models: GGUF files in, a release out. Each variant's facts (context,
//! parameters, memory at the release's context, chat template digest) are read from the file by llama.cpp; the
//! reference variant answers the golden prompts, and every variant must reproduce those answers within its
//! tolerance here before it is packed.

use std::path::{Path, PathBuf};

use anyhow::{Context, ensure};
use edgefleet_protocol::llm_golden::{LlmGolden, LlmTolerance};
use edgefleet_runtime::llm::{ChatMessage, Engine, EngineConfig, LlmModel, LlmOptions, golden};
use model_registry::fsutil::read_capped;
use model_registry::manifest::{LlmSpec, ModelFormat};
use model_registry::{Limits, Sha256Digest, Variant};
use serde::Deserialize;

use super::pack::{Finish, Head, VariantSpec, compress_model, finish, write_bytes_blob};
use crate::args::ReleasePack;
use crate::output::Out;

/// At most this many golden prompts: each costs every device a pass at install.
const MAX_PROMPTS: usize = 32;

#[derive(Deserialize)]
#[serde(untagged)]
enum PromptEntry {
    Text(String),
    Chat {
        #[serde(default)]
        name: Option<String>,
        messages: Vec<Message>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    content: String,
}

/// Reads a golden-prompts file: a JSON array of user messages, or of named chats.
pub(super) fn read_prompts(path: &Path) -> anyhow::Result<Vec<(String, Vec<ChatMessage>)>> {
    let bytes = read_capped(path, 1 << 20).with_context(|| format!("reading {}", path.display()))?;
    let entries: Vec<PromptEntry> = serde_json::from_slice(&bytes).with_context(|| {
        format!("{}: golden prompts are a JSON array of strings or of {{\"messages\": [...]}}", path.display())
    })?;
    ensure!(!entries.is_empty(), "{}: no golden prompts", path.display());
    ensure!(
        entries.len() <= MAX_PROMPTS,
        "{}: {} golden prompts, at most {MAX_PROMPTS}",
        path.display(),
        entries.len()
    );
    Ok(entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| match e {
            PromptEntry::Text(t) => (format!("p{i}"), vec![ChatMessage { role: "user".into(), content: t }]),
            PromptEntry::Chat { name, messages } => (
                name.unwrap_or_else(|| format!("p{i}")),
                messages.into_iter().map(|m| ChatMessage { role: m.role, content: m.content }).collect(),
            ),
        })
        .collect())
}

pub(super) fn start(path: &Path, context_length: u32, template: Option<&str>) -> anyhow::Result<(Engine, u32)> {
    let mut model = LlmModel::load(path, &LlmOptions::default())?;
    if let Some(t) = template {
        model = model.with_chat_template(t).with_context(|| format!("{}: chat-template={t}", path.display()))?;
    }
    ensure!(
        context_length <= model.facts.trained_context,
        "{}: --context-length {context_length} is beyond the {} tokens the model was trained with",
        path.display(),
        model.facts.trained_context
    );
    let config = EngineConfig { context_length, sequences: 1, queue: 1, ..EngineConfig::default() };
    Ok((Engine::start(model.into(), config)?, context_length))
}

pub(super) fn pack(a: ReleasePack, head: Head, specs: Vec<VariantSpec>, out: &Out) -> anyhow::Result<()> {
    let Head { model, version, floor, routing } = head;
    for s in &specs {
        ensure!(
            !s.precision.is_onnx(),
            "variant {}: a GGUF variant's precision is its llama.cpp type (q4_k_m, q4_1, q8_0, …), not {}",
            s.id,
            s.precision
        );
    }
    ensure!(a.tolerances.is_empty(), "--tolerance is for ONNX outputs; GGUF tolerances follow the quantization");
    ensure!((1..=256).contains(&a.golden_tokens), "--golden-tokens must be 1 to 256");
    let prompts = read_prompts(&a.samples)?;
    let limits = Limits::default();
    let reference_path: PathBuf = a.reference.clone().unwrap_or_else(|| specs[0].file.clone());
    let reference_digest = file_digest(&reference_path)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let reference_template = specs.iter().find(|s| s.file == reference_path).and_then(|s| s.chat_template.clone());
    let (reference, context_length) = start(&reference_path, a.context_length, reference_template.as_deref())?;
    let bar = out.spinner(&format!("answering {} golden prompts with {}", prompts.len(), reference_path.display()));
    let reference_golden = rt
        .block_on(golden::reference(&reference, &prompts, a.golden_tokens, LlmTolerance::SAME_WEIGHTS))
        .with_context(|| format!("the reference {} on the golden prompts", reference_path.display()))?;
    bar.finish_and_clear();
    drop(reference);

    let parent = a.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = tempfile::Builder::new().prefix(".pack-").tempdir_in(parent)?;
    let blobs = staging.path().join("blobs");
    std::fs::create_dir(&blobs)?;
    let mut variants = Vec::new();
    let mut summary = Vec::new();
    for spec in specs {
        let (engine, _) = start(&spec.file, context_length, spec.chat_template.as_deref())?;
        let facts = engine.model.facts.clone();
        let same = file_digest(&spec.file)? == reference_digest;
        let tolerance = if same { LlmTolerance::SAME_WEIGHTS } else { LlmTolerance::OTHER_QUANTIZATION };
        let golden = LlmGolden { tolerance, ..reference_golden.clone() };
        let bar = out.spinner(&format!("checking variant {} against the reference", spec.id));
        let report = golden.check(&rt.block_on(golden::measure(&engine, &golden))?);
        bar.finish_and_clear();
        ensure!(report.passed(), "variant {} fails its golden check against the reference:\n{report}", spec.id);
        drop(engine);

        let golden_ref = write_bytes_blob(&blobs, &golden.to_bytes())?;
        let (raw, zstd_ref) = compress_model(&blobs, &spec, a.level, &limits, out)?;
        let llm = LlmSpec {
            architecture: facts.architecture.clone(),
            parameters: facts.parameters,
            context_length,
            vocab_size: facts.vocab_size,
            memory_bytes: facts.memory_bytes(context_length, 1),
            kv_cache_bytes: facts.kv_cache_bytes(context_length),
            chat_template: spec.chat_template.clone(),
            chat_template_sha256: facts.chat_template.as_deref().map(|t| Sha256Digest::of(t.as_bytes())),
        };
        let mut requirements = spec.requirements;
        requirements.min_memory_bytes.get_or_insert(llm.memory_bytes);
        summary.push(format!(
            "  {:16} {:7} {} {:.0}M params, ctx {context_length}, needs {} MiB  raw {:>10} B  zstd {:>10} B  golden {report}",
            spec.id.as_str(),
            spec.precision.to_string(),
            facts.architecture,
            facts.parameters as f64 / 1e6,
            llm.memory_bytes >> 20,
            raw.size,
            zstd_ref.size,
        ));
        variants.push(Variant {
            id: spec.id,
            requirements,
            precision: spec.precision,
            format: ModelFormat::Gguf,
            raw,
            zstd: zstd_ref,
            golden: golden_ref,
            inputs: Vec::new(),
            outputs: Vec::new(),
            llm: Some(llm),
        });
    }
    finish(
        Finish { model, version, floor, description: a.description, routing, out: &a.out, staging, parent },
        variants,
        &summary,
        out,
    )
}

fn file_digest(path: &Path) -> anyhow::Result<Sha256Digest> {
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(model_registry::artifact::measure_stream("model", std::io::BufReader::new(f), u64::MAX)?.sha256)
}

/// Runs a packed variant's golden check on this machine (`edgefleet release golden`).
pub(super) fn golden_report(
    gguf: &Path,
    variant: &Variant,
    golden: &LlmGolden,
) -> anyhow::Result<edgefleet_protocol::llm_golden::LlmGoldenReport> {
    let llm = variant.llm.as_ref().context("a GGUF variant without its language-model facts")?;
    let (engine, _) = start(gguf, llm.context_length, llm.chat_template.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(golden.check(&rt.block_on(golden::measure(&engine, golden))?))
}
