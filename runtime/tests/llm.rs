//! The llama.cpp engine on a real model (SmolLM2-135M-Instruct Q4_1, fetched by scripts/setup.sh): batching
//! gives every sequence the answer it would get alone, a caller that leaves frees its sequence, a full queue
//! says busy, and the golden check passes the model against itself and refuses another model.

use std::path::PathBuf;
use std::sync::Arc;

use edgefleet_protocol::llm_golden::LlmTolerance;
use edgefleet_runtime::llm::{
    ChatMessage, Engine, EngineConfig, Finish, GenEvent, GenRequest, LlmModel, LlmOptions, Sampling, golden,
};

fn model_path(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models/llm").join(name);
    assert!(p.is_file(), "{} is missing: run scripts/setup.sh", p.display());
    p
}

fn smollm() -> Arc<LlmModel> {
    Arc::new(LlmModel::load(&model_path("smollm2-135m-instruct-q4_1.gguf"), &LlmOptions::default()).unwrap())
}

fn chat(engine: &Engine, text: &str) -> Vec<i32> {
    let prompt = engine.model.apply_chat(&[ChatMessage { role: "user".into(), content: text.into() }]).unwrap();
    engine.model.tokenize(&prompt, true)
}

fn greedy(prompt: Vec<i32>, max_tokens: u32) -> GenRequest {
    GenRequest { prompt, max_tokens, sampling: Sampling::GREEDY, logprobs: false }
}

fn config(sequences: u32, queue: usize) -> EngineConfig {
    EngineConfig { context_length: 512, sequences, queue, batch: 128, threads: Some(2) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_backend_and_template_come_from_the_gguf() {
    let m = LlmModel::load(
        &model_path("smollm2-135m-instruct-q4_1.gguf"),
        &LlmOptions { backends: vec!["CUDA".into(), "Vulkan".into(), "CPU".into()] },
    )
    .unwrap();
    assert_eq!(m.facts.architecture, "llama");
    assert!((130_000_000..140_000_000).contains(&m.facts.parameters), "{}", m.facts.parameters);
    assert_eq!(m.facts.vocab_size, 49152);
    assert!(m.facts.kv_bytes_per_token > 0);
    assert!(m.facts.chat_template.as_deref().unwrap_or("").contains("im_start"));
    assert_eq!(m.backend, "CPU");
    assert_eq!(m.fallbacks.len(), 2, "{:?}", m.fallbacks);
    assert!(m.fallbacks[0].starts_with("CUDA: not compiled"), "{:?}", m.fallbacks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_sequence_as_it_would_alone() {
    let engine = Engine::start(smollm(), config(4, 4)).unwrap();
    let prompts: Vec<_> = ["What is the capital of France?", "Name three colours.", "Count to five.", "Say hello."]
        .iter()
        .map(|p| chat(&engine, p))
        .collect();
    let mut alone = Vec::new();
    for p in &prompts {
        alone.push(engine.generate(greedy(p.clone(), 16)).await.unwrap());
    }
    let together = futures_util::future::join_all(prompts.iter().map(|p| engine.generate(greedy(p.clone(), 16)))).await;
    for (a, t) in alone.iter().zip(&together) {
        assert_eq!(a, t.as_ref().unwrap(), "batched greedy decoding differs from decoding alone");
    }
    assert!(alone.iter().all(|(tokens, _)| !tokens.is_empty()));
    let text = String::from_utf8_lossy(&alone[0].0.iter().flat_map(|&t| engine.model.piece(t)).collect::<Vec<_>>())
        .into_owned();
    assert!(text.contains("Paris"), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_leaves_frees_its_sequence_and_a_full_queue_is_busy() {
    let engine = Engine::start(smollm(), config(1, 1)).unwrap();
    let prompt = chat(&engine, "Write a long story about a dragon.");
    let mut first = engine.submit(greedy(prompt.clone(), 400)).unwrap().expect("a free sequence");
    let second = engine.submit(greedy(prompt.clone(), 4)).unwrap().expect("a place in the queue");
    assert!(engine.submit(greedy(prompt.clone(), 4)).unwrap().is_none(), "one sequence + one queued: full");
    // The first streams; it leaves after two tokens.
    let mut tokens = 0;
    while let Some(e) = first.events.recv().await {
        if matches!(e, GenEvent::Token { .. }) {
            tokens += 1;
            if tokens == 2 {
                break;
            }
        }
    }
    drop(first);
    // The queued one gets the sequence and finishes its four tokens long before 400 would have been decoded.
    let mut second = second;
    let mut got = Vec::new();
    while let Some(e) = second.events.recv().await {
        got.push(e);
    }
    assert!(matches!(got.last(), Some(GenEvent::Done { finish: Finish::Length, completion_tokens: 4, .. })), "{got:?}");
    assert_eq!(engine.inflight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_the_context_fails_cleanly() {
    let engine = Engine::start(smollm(), config(1, 1)).unwrap();
    let err = engine.generate(greedy(vec![1; 600], 4)).await.unwrap_err();
    assert!(err.to_string().contains("does not fit a context of 512"), "{err}");
    // The engine still serves.
    assert!(!engine.generate(greedy(chat(&engine, "Hi"), 3)).await.unwrap().0.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_check_passes_the_reference_and_refuses_another_model() {
    let engine = Engine::start(smollm(), config(2, 2)).unwrap();
    let prompts: Vec<_> = ["What is 2+2?", "Name a fruit."]
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("p{i}"), vec![ChatMessage { role: "user".into(), content: (*p).into() }]))
        .collect();
    let g = golden::reference(&engine, &prompts, 12, LlmTolerance::SAME_WEIGHTS).await.unwrap();
    let report = g.check(&golden::measure(&engine, &g).await.unwrap());
    assert!(report.passed(), "{report}");
    assert_eq!(report.top1_agreement, 1.0, "{report}");

    let gemma = Arc::new(LlmModel::load(&model_path("gemma-3-270m-q4_k_m.gguf"), &LlmOptions::default()).unwrap());
    let other = Engine::start(gemma, config(1, 1)).unwrap();
    let report = g.check(&golden::measure(&other, &g).await.unwrap());
    assert!(!report.passed(), "{report}");
    assert!(report.failures.iter().any(|f| f.contains("another vocabulary")), "{report}");
}

#[test]
fn a_file_that_is_not_gguf_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(model_path("smollm2-135m-instruct-q4_1.gguf")).unwrap();
    let cut = dir.path().join("truncated.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = LlmModel::load(&cut, &LlmOptions::default()).unwrap_err();
    assert!(err.to_string().contains("could not load"), "{err}");
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model at all").unwrap();
    assert!(LlmModel::load(&junk, &LlmOptions::default()).is_err());
}
