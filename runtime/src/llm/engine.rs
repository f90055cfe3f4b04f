//! The engine: one llama.cpp context per model, on a thread of its own, decoding every running sequence in one
//! batch per step (continuous batching: a request joins at the next step, a finished one leaves at once).
//!
//! Each step takes the next token of every generating sequence and, in the budget that remains, a chunk of the
//! prompt of every sequence still reading its prompt; one `decode`; then every sequence whose logits came out
//! samples its next token, which goes to its caller at once. A caller that goes away (the receiver dropped: a
//! client disconnected, a stop string matched) frees its sequence and its KV cache before the next step.
//!
//! Requests beyond the context's sequences wait in a bounded queue; past it, [`Engine::submit`] says busy
//! rather than queueing without bound.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc as tmpsc, oneshot};

use super::{LlmError, LlmModel, argmax, backend, log_prob};

/// How an engine runs its model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens one sequence may hold, prompt and completion together.
    pub context_length: u32,
    /// Sequences decoded together.
    pub sequences: u32,
    /// Requests that may wait for a sequence; one more is refused.
    pub queue: usize,
    /// Tokens one step may decode (prompt chunks and generated tokens together).
    pub batch: u32,
    /// CPU threads for decoding; `None` for every core.
    pub threads: Option<i32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { context_length: 2048, sequences: 4, queue: 16, batch: 256, threads: None }
    }
}

/// How to choose tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 for greedy (always the most likely token).
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_p: 1.0, seed: 0 };

    fn sampler(self) -> LlamaSampler {
        if self.temperature <= 0.0 {
            return LlamaSampler::greedy();
        }
        let mut chain = Vec::new();
        if self.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(self.top_p, 1));
        }
        chain.push(LlamaSampler::temp(self.temperature));
        chain.push(LlamaSampler::dist(self.seed));
        LlamaSampler::chain_simple(chain)
    }
}

/// One generation.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub prompt: Vec<i32>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// Send each token's log-probability (costs a pass over the vocabulary per token).
    pub logprobs: bool,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its answer.
    Stop,
    /// `max_tokens`, or the sequence's context is full.
    Length,
}

/// What a caller hears back, in order: tokens, then `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// The request has a sequence: its prompt is being read.
    Started,
    Token {
        id: i32,
        bytes: Vec<u8>,
        logprob: Option<f32>,
    },
    Done {
        finish: Finish,
        prompt_tokens: u32,
        completion_tokens: u32,
    },
    Failed(String),
}

/// Teacher-forced scoring of one position: what the model would have said next, and how likely it found the
/// token that actually came.
#[derive(Debug, Clone, PartialEq)]
pub struct StepScore {
    pub argmax: i32,
    /// The log-probability of `argmax`.
    pub top_logprob: f32,
    /// The log-probability of the token that came.
    pub logprob: f32,
}

/// A request accepted by the engine: its events, and its place in the line.
#[derive(Debug)]
pub struct Submitted {
    pub events: tmpsc::UnboundedReceiver<GenEvent>,
}

enum Command {
    Generate(Pending),
    /// Teacher-forced log-probabilities of `tokens[from..]`; runs when no sequence is generating.
    Score {
        tokens: Vec<i32>,
        from: usize,
        reply: oneshot::Sender<Result<Vec<StepScore>, String>>,
    },
}

/// A request waiting for, or holding, a sequence; counted in `inflight` until dropped. The count drops first
/// (fields drop in order), so a caller that saw its channel close sees the engine's count without it.
struct Pending {
    _slot: InflightGuard,
    request: GenRequest,
    events: tmpsc::UnboundedSender<GenEvent>,
}

struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A model being served: submit generations, score token sequences. Dropping it stops the thread once the
/// sequences it is running are done (their callers hold their receivers).
#[derive(Debug)]
pub struct Engine {
    pub model: Arc<LlmModel>,
    pub config: EngineConfig,
    commands: mpsc::Sender<Command>,
    inflight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Generate(_) => "Generate",
            Command::Score { .. } => "Score",
        })
    }
}

impl Engine {
    /// Creates the context (on the engine's own thread) and starts serving.
    pub fn start(model: Arc<LlmModel>, config: EngineConfig) -> Result<Self, LlmError> {
        let (commands, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let inflight = Arc::new(AtomicUsize::new(0));
        let (m, c) = (model.clone(), config.clone());
        std::thread::Builder::new()
            .name("llm-engine".into())
            .spawn(move || run(&m, &c, &rx, &ready_tx))
            .map_err(|e| LlmError::Context(e.to_string()))?;
        ready_rx.recv().map_err(|_| LlmError::Stopped)??;
        Ok(Self { model, config, commands, inflight })
    }

    /// Requests submitted and not finished (generating or waiting).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Starts a generation, or answers `None` when every sequence is busy and the queue is full.
    pub fn submit(&self, request: GenRequest) -> Result<Option<Submitted>, LlmError> {
        let capacity = self.config.sequences as usize + self.config.queue;
        if self.inflight.fetch_add(1, Ordering::AcqRel) >= capacity {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return Ok(None);
        }
        let guard = InflightGuard(self.inflight.clone());
        let (tx, rx) = tmpsc::unbounded_channel();
        self.commands
            .send(Command::Generate(Pending { _slot: guard, request, events: tx }))
            .map_err(|_| LlmError::Stopped)?;
        Ok(Some(Submitted { events: rx }))
    }

    /// Teacher-forced scores of `tokens[from..]` (each position given every token before it).
    pub async fn score(&self, tokens: Vec<i32>, from: usize) -> Result<Vec<StepScore>, LlmError> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Score { tokens, from, reply }).map_err(|_| LlmError::Stopped)?;
        rx.await.map_err(|_| LlmError::Stopped)?.map_err(LlmError::Decode)
    }

    /// Generates to the end and answers the tokens (no streaming): for golden prompts and tests.
    pub async fn generate(&self, request: GenRequest) -> Result<(Vec<i32>, Finish), LlmError> {
        let mut sub = self.submit(request)?.ok_or_else(|| LlmError::Decode("the engine is busy".into()))?;
        let mut tokens = Vec::new();
        while let Some(event) = sub.events.recv().await {
            match event {
                GenEvent::Started => {}
                GenEvent::Token { id, .. } => tokens.push(id),
                GenEvent::Done { finish, .. } => return Ok((tokens, finish)),
                GenEvent::Failed(why) => return Err(LlmError::Decode(why)),
            }
        }
        Err(LlmError::Stopped)
    }
}

/// A sequence of the context, in use.
struct Active {
    seq: i32,
    pending: Pending,
    sampler: LlamaSampler,
    /// Prompt tokens already in the KV cache.
    fed: usize,
    /// The next token to feed (the last one sampled), once the prompt is in.
    next: Option<i32>,
    /// Position of the next token fed.
    pos: i32,
    generated: u32,
    /// This step's batch index of the sequence's logits, if any come out.
    logits_at: Option<i32>,
}

fn run(
    model: &LlmModel,
    config: &EngineConfig,
    commands: &mpsc::Receiver<Command>,
    ready: &mpsc::Sender<Result<(), LlmError>>,
) {
    let sequences = config.sequences.max(1);
    let context_length = config.context_length.max(8);
    let batch_size = config.batch.max(sequences + 1);
    let mut params = LlamaContextParams::default()
        .with_n_ctx(std::num::NonZeroU32::new(context_length * sequences))
        .with_n_seq_max(sequences)
        .with_kv_unified(false)
        .with_n_batch(batch_size)
        .with_n_ubatch(batch_size);
    if let Some(t) = config.threads {
        params = params.with_n_threads(t).with_n_threads_batch(t);
    } else {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as i32);
        params = params.with_n_threads(cores).with_n_threads_batch(cores);
    }
    let ctx = backend().and_then(|b| {
        model.inner().new_context(b, params).map_err(|e| LlmError::Context(format!("{e} (out of memory?)")))
    });
    let mut ctx = match ctx {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut batch = LlamaBatch::new(batch_size as usize, sequences as i32);
    let mut free: Vec<i32> = (0..sequences as i32).rev().collect();
    let mut active: Vec<Active> = Vec::new();
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut scores: VecDeque<Command> = VecDeque::new();
    let mut open = true;
    loop {
        // Take in what arrived; block only when there is nothing to do.
        let idle = active.is_empty() && waiting.is_empty() && scores.is_empty();
        let first = if idle && open { commands.recv().ok() } else { None };
        if idle && first.is_none() {
            return; // the engine was dropped and nothing is left to finish
        }
        let mut take = |command| match command {
            Command::Generate(p) => waiting.push_back(p),
            score @ Command::Score { .. } => scores.push_back(score),
        };
        first.into_iter().for_each(&mut take);
        loop {
            match commands.try_recv() {
                Ok(c) => take(c),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        // Callers that went away free their sequence before anything else is decoded for them.
        active.retain(|a| {
            let gone = a.pending.events.is_closed();
            if gone {
                release(&mut ctx, a.seq);
                free.push(a.seq);
            }
            !gone
        });
        waiting.retain(|p| !p.events.is_closed());
        // Scoring (golden checks) runs alone, between generations.
        if active.is_empty()
            && let Some(Command::Score { tokens, from, reply }) = scores.pop_front()
        {
            let _ = reply.send(score(&mut ctx, &mut batch, batch_size as usize, context_length, &tokens, from));
            continue;
        }
        while scores.is_empty()
            && let Some(seq) = free.pop()
        {
            let Some(p) = waiting.pop_front() else {
                free.push(seq);
                break;
            };
            if p.request.prompt.is_empty() || p.request.prompt.len() >= context_length as usize {
                let _ = p.events.send(GenEvent::Failed(format!(
                    "a prompt of {} tokens does not fit a context of {context_length}",
                    p.request.prompt.len()
                )));
                free.push(seq);
                continue;
            }
            let _ = p.events.send(GenEvent::Started);
            let sampler = p.request.sampling.sampler();
            active.push(Active { seq, pending: p, sampler, fed: 0, next: None, pos: 0, generated: 0, logits_at: None });
        }
        if active.is_empty() {
            continue;
        }
        if let Err(e) = step(&mut ctx, &mut batch, batch_size as usize, &mut active) {
            for a in active.drain(..) {
                let _ = a.pending.events.send(GenEvent::Failed(e.clone()));
                release(&mut ctx, a.seq);
                free.push(a.seq);
            }
            continue;
        }
        // Sample for every sequence whose logits came out; finished ones leave.
        let started = Instant::now();
        let mut finished = Vec::new();
        for (i, a) in active.iter_mut().enumerate() {
            let Some(at) = a.logits_at.take() else { continue };
            let token = a.sampler.sample(&ctx, at).0;
            let prompt_tokens = a.pending.request.prompt.len() as u32;
            if model.is_end(token) {
                let _ = a.pending.events.send(GenEvent::Done {
                    finish: Finish::Stop,
                    prompt_tokens,
                    completion_tokens: a.generated,
                });
                finished.push(i);
                continue;
            }
            let logprob = a.pending.request.logprobs.then(|| log_prob(ctx.get_logits_ith(at), token as usize));
            let _ = a.pending.events.send(GenEvent::Token { id: token, bytes: model.piece(token), logprob });
            a.generated += 1;
            a.next = Some(token);
            if a.generated >= a.pending.request.max_tokens || a.pos + 1 >= context_length as i32 {
                let _ = a.pending.events.send(GenEvent::Done {
                    finish: Finish::Length,
                    prompt_tokens,
                    completion_tokens: a.generated,
                });
                finished.push(i);
            }
        }
        for i in finished.into_iter().rev() {
            let a = active.swap_remove(i);
            release(&mut ctx, a.seq);
            free.push(a.seq);
        }
        tracing::trace!(took_us = started.elapsed().as_micros() as u64, "sampled");
    }
}

/// Builds and decodes one step: a token for every generating sequence, then prompt chunks in what is left.
fn step(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch<'_>,
    budget: usize,
    active: &mut [Active],
) -> Result<(), String> {
    batch.clear();
    let mut n = 0;
    for a in active.iter_mut().filter(|a| a.next.is_some()) {
        let token = a.next.take().unwrap_or_default();
        batch.add(LlamaToken(token), a.pos, &[a.seq], true).map_err(|e| e.to_string())?;
        a.logits_at = Some(n as i32);
        a.pos += 1;
        n += 1;
    }
    for a in active.iter_mut().filter(|a| a.fed < a.pending.request.prompt.len()) {
        if n >= budget {
            break;
        }
        let prompt = &a.pending.request.prompt;
        let take = (prompt.len() - a.fed).min(budget - n);
        for (k, &t) in prompt[a.fed..a.fed + take].iter().enumerate() {
            let last = a.fed + k + 1 == prompt.len();
            batch.add(LlamaToken(t), a.pos, &[a.seq], last).map_err(|e| e.to_string())?;
            if last {
                a.logits_at = Some(n as i32);
            }
            a.pos += 1;
            n += 1;
        }
        a.fed += take;
    }
    ctx.decode(batch).map_err(|e| e.to_string())
}

fn release(ctx: &mut LlamaContext<'_>, seq: i32) {
    let _ = ctx.clear_kv_cache_seq(Some(seq as u32), None, None);
}

/// Teacher-forced scores of `tokens[from..]` on sequence 0 (every sequence is free when this runs).
fn score(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch<'_>,
    budget: usize,
    context_length: u32,
    tokens: &[i32],
    from: usize,
) -> Result<Vec<StepScore>, String> {
    if from == 0 || from > tokens.len() || tokens.len() > context_length as usize {
        return Err(format!("cannot score from {from} of {} tokens in a context of {context_length}", tokens.len()));
    }
    release(ctx, 0);
    let mut out = Vec::with_capacity(tokens.len() - from);
    let mut pos = 0;
    let result = (|| {
        while pos < tokens.len() {
            batch.clear();
            let end = (pos + budget).min(tokens.len());
            let mut wanted = Vec::new();
            for (i, &t) in tokens[pos..end].iter().enumerate() {
                let p = pos + i;
                // The logits at p predict token p + 1.
                let want = p + 1 >= from && p + 1 < tokens.len();
                batch.add(LlamaToken(t), p as i32, &[0], want).map_err(|e| e.to_string())?;
                if want {
                    wanted.push((i as i32, tokens[p + 1]));
                }
            }
            ctx.decode(batch).map_err(|e| e.to_string())?;
            for (i, next) in wanted {
                let logits = ctx.get_logits_ith(i);
                let top = argmax(logits);
                out.push(StepScore {
                    argmax: top as i32,
                    top_logprob: log_prob(logits, top),
                    logprob: log_prob(logits, next as usize),
                });
            }
            pos = end;
        }
        Ok(out)
    })();
    release(ctx, 0);
    result
}
