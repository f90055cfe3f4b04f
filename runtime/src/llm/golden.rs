//! Golden checks on an engine: the reference answers at pack time, a device's measurements before a swap. The
//! file format and the verdict are `edgefleet_protocol::llm_golden`'s.

use edgefleet_protocol::llm_golden::{LlmCase, LlmCaseResult, LlmGolden, LlmStep, LlmTolerance};

use super::{ChatMessage, Engine, GenRequest, LlmError, Sampling};

/// Tokens of a golden case's text, as a chat request's are: with the start-of-text token where the model wants
/// one (llama.cpp's chat templates leave it to the tokenizer).
fn prompt_tokens(engine: &Engine, text: &str) -> Vec<i32> {
    engine.model.tokenize(text, true)
}

/// The reference's answers to `prompts` (greedy, up to `max_tokens` each) and its log-probability of every
/// token of them.
pub async fn reference(
    engine: &Engine,
    prompts: &[(String, Vec<ChatMessage>)],
    max_tokens: u32,
    tolerance: LlmTolerance,
) -> Result<LlmGolden, LlmError> {
    let mut cases = Vec::new();
    for (name, messages) in prompts {
        let text = engine.model.apply_chat(messages)?;
        let prompt = prompt_tokens(engine, &text);
        let request = GenRequest { prompt: prompt.clone(), max_tokens, sampling: Sampling::GREEDY, logprobs: true };
        let (continuation, _) = engine.generate(request).await?;
        if continuation.is_empty() {
            return Err(LlmError::Decode(format!("golden prompt {name}: the reference answered nothing")));
        }
        let scores = engine.score([prompt.as_slice(), &continuation].concat(), prompt.len()).await?;
        cases.push(LlmCase {
            name: name.clone(),
            text,
            prompt_tokens: prompt,
            continuation,
            logprobs: scores.iter().map(|s| s.logprob).collect(),
        });
    }
    Ok(LlmGolden { version: 1, tolerance, cases })
}

/// What this engine makes of every golden case, for `LlmGolden::check`.
pub async fn measure(engine: &Engine, golden: &LlmGolden) -> Result<Vec<LlmCaseResult>, LlmError> {
    let mut out = Vec::new();
    for case in &golden.cases {
        let prompt = prompt_tokens(engine, &case.text);
        let steps = if prompt == case.prompt_tokens {
            let tokens = [case.prompt_tokens.as_slice(), &case.continuation].concat();
            engine
                .score(tokens, case.prompt_tokens.len())
                .await?
                .into_iter()
                .map(|s| LlmStep { argmax: s.argmax, top_logprob: s.top_logprob, logprob: s.logprob })
                .collect()
        } else {
            Vec::new() // another vocabulary: `check` says so
        };
        out.push(LlmCaseResult { prompt_tokens: prompt, steps });
    }
    Ok(out)
}
