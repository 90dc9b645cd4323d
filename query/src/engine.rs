//! The shared model resources: one encoder worker that batches embedding work
//! from concurrent requests, and one generator worker that batches the
//! decode steps of concurrent generations. Both sit behind
//! bounded admission, so a flood of requests gets `Busy` (503) instead of
//! unbounded queues and memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device};
use eerag_core::artifacts::HostArtifacts;
use eerag_core::models::{
    Decoding, Encoder, GenerationOptions, Generator, GeneratorBackend, GeneratorOptions, Session,
    StopReason,
};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the {0} queue is full; retry later")]
    Busy(&'static str),
    #[error("the {0} worker has stopped")]
    Stopped(&'static str),
    #[error("model error: {0}")]
    Model(String),
}

/// Sizes of the queues and batches.
#[derive(Clone, Debug)]
pub struct EngineLimits {
    /// Sequences per encoder forward pass.
    pub embed_batch: usize,
    /// Requests waiting for or using the encoder before new ones get 503.
    pub embed_queue: usize,
    /// Generations waiting or running before new ones get 503.
    pub generate_queue: usize,
    /// Generations decoded together, one token each per step.
    pub generate_batch: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            embed_batch: 32,
            embed_queue: 64,
            generate_queue: 8,
            generate_batch: 8,
        }
    }
}

/// Where and how the models run.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The device of both models. The encoder computes in f32: candle
    /// 0.11's BERT gives NaN in f16/bf16 (its attention mask multiplies 0 by
    /// `f32::MIN`, which those types round to -inf).
    pub device: Device,
    /// A safetensors generator's compute dtype (`None`: the weights' own;
    /// GGUF generators keep their quantization).
    pub generator_dtype: Option<DType>,
    /// Which implementation runs the generator (`Auto`: llama.cpp for a
    /// GGUF on the CPU when the build has it, candle otherwise).
    pub generator_backend: GeneratorBackend,
}

impl Placement {
    /// Both models on the CPU in their own dtypes.
    pub fn cpu() -> Self {
        Self::on(Device::Cpu)
    }

    /// Both models on `device` in their own dtypes.
    pub fn on(device: Device) -> Self {
        Self {
            device,
            generator_dtype: None,
            generator_backend: GeneratorBackend::Auto,
        }
    }
}

/// Facts about the loaded models that request validation needs.
#[derive(Clone, Copy, Debug)]
pub struct ModelFacts {
    pub encoder_vocab: usize,
    pub encoder_max_tokens: usize,
    pub dim: usize,
    pub generator_vocab: usize,
    pub generator_context: usize,
}

struct EmbedJob {
    seqs: Vec<Vec<u32>>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EngineError>>,
}

/// One event of a running generation.
#[derive(Debug)]
pub enum GenerationEvent {
    /// The next id, in the transformed model's id space.
    Token(u32),
    /// The generation ended.
    Done(StopReason),
    /// The generation failed.
    Failed(String),
}

struct GenerateJob {
    prompt: Vec<u32>,
    options: GenerationOptions,
    events: mpsc::Sender<GenerationEvent>,
    _permit: OwnedSemaphorePermit,
}

/// The encoder and generator, each on its own worker thread.
pub struct Engine {
    facts: ModelFacts,
    limits: EngineLimits,
    embed_tx: mpsc::Sender<EmbedJob>,
    embed_admission: Arc<Semaphore>,
    generate_tx: mpsc::Sender<GenerateJob>,
    generate_admission: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    embed_waiting: Arc<AtomicUsize>,
}

impl Engine {
    /// Loads the host artifacts' encoder and generator as `placement` says
    /// and starts their workers.
    pub fn start(
        artifacts: &HostArtifacts,
        placement: &Placement,
        limits: EngineLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, EngineError> {
        let model = |e: eerag_core::EeError| EngineError::Model(e.to_string());
        let device = &placement.device;
        let encoder = Encoder::load(&artifacts.encoder_dir(), device).map_err(model)?;
        let generator = Generator::load_with(
            &artifacts.generator_path(),
            &GeneratorOptions {
                backend: placement.generator_backend,
                dtype: placement.generator_dtype,
                ..GeneratorOptions::on(device)
            },
        )
        .map_err(model)?;
        tracing::info!(backend = %generator.backend(), "generator loaded");
        let facts = ModelFacts {
            encoder_vocab: encoder.vocab_size(),
            encoder_max_tokens: encoder.max_tokens(),
            dim: encoder.dim(),
            generator_vocab: generator.vocab_size(),
            generator_context: generator.context_length(),
        };
        let (embed_tx, embed_rx) = mpsc::channel(limits.embed_queue.max(1) * 4);
        let embed_waiting = Arc::new(AtomicUsize::new(0));
        {
            let batch = limits.embed_batch.max(1);
            let metrics = metrics.clone();
            let waiting = embed_waiting.clone();
            std::thread::Builder::new()
                .name("eerag-encoder".into())
                .spawn(move || embed_worker(encoder, embed_rx, batch, metrics, waiting))
                .map_err(|e| EngineError::Model(format!("cannot start encoder thread: {e}")))?;
        }
        let (generate_tx, generate_rx) = mpsc::channel(limits.generate_queue.max(1));
        {
            let metrics = metrics.clone();
            let batch = limits.generate_batch.max(1);
            std::thread::Builder::new()
                .name("eerag-generator".into())
                .spawn(move || generate_worker(generator, generate_rx, batch, metrics))
                .map_err(|e| EngineError::Model(format!("cannot start generator thread: {e}")))?;
        }
        Ok(Self {
            facts,
            embed_admission: Arc::new(Semaphore::new(limits.embed_queue.max(1))),
            generate_admission: Arc::new(Semaphore::new(limits.generate_queue.max(1))),
            limits,
            embed_tx,
            generate_tx,
            metrics,
            embed_waiting,
        })
    }

    /// The loaded models' sizes.
    pub fn facts(&self) -> ModelFacts {
        self.facts
    }

    /// Embeds sequences with the (transformed) encoder. Sequences are sent to
    /// the worker in batches, where they may share a forward pass with other
    /// requests' sequences. Fails fast with `Busy` when the queue is full.
    pub async fn embed(&self, seqs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, EngineError> {
        let _permit = self
            .embed_admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                self.metrics.rejected("embed");
                EngineError::Busy("embedding")
            })?;
        let total = seqs.len();
        let mut replies = Vec::new();
        let mut seqs = seqs.into_iter().peekable();
        while seqs.peek().is_some() {
            let part: Vec<Vec<u32>> = seqs.by_ref().take(self.limits.embed_batch.max(1)).collect();
            let (reply, rx) = oneshot::channel();
            self.embed_waiting.fetch_add(part.len(), Ordering::Relaxed);
            self.metrics
                .set_queue_depth("embed", self.embed_waiting.load(Ordering::Relaxed));
            self.embed_tx
                .send(EmbedJob { seqs: part, reply })
                .await
                .map_err(|_| EngineError::Stopped("encoder"))?;
            replies.push(rx);
        }
        let mut out = Vec::with_capacity(total);
        for rx in replies {
            out.extend(rx.await.map_err(|_| EngineError::Stopped("encoder"))??);
        }
        Ok(out)
    }

    /// Queues a generation; its events arrive on the returned receiver.
    /// Dropping the receiver cancels the generation at the next token.
    pub fn generate(
        &self,
        prompt: Vec<u32>,
        options: GenerationOptions,
    ) -> Result<mpsc::Receiver<GenerationEvent>, EngineError> {
        let permit = self
            .generate_admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                self.metrics.rejected("generate");
                EngineError::Busy("generation")
            })?;
        // Room for every token plus the final event: a slow reader never
        // stalls the shared generator (tokio allocates the buffer lazily).
        let (events, rx) = mpsc::channel(options.max_tokens.saturating_add(2).max(2));
        self.generate_tx
            .try_send(GenerateJob {
                prompt,
                options,
                events,
                _permit: permit,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => EngineError::Busy("generation"),
                mpsc::error::TrySendError::Closed(_) => EngineError::Stopped("generator"),
            })?;
        self.metrics.set_queue_depth(
            "generate",
            self.limits.generate_queue - self.generate_admission.available_permits(),
        );
        Ok(rx)
    }

    /// Generations waiting or running.
    pub fn generations_in_flight(&self) -> usize {
        self.limits.generate_queue - self.generate_admission.available_permits()
    }
}

fn embed_worker(
    encoder: Encoder,
    mut rx: mpsc::Receiver<EmbedJob>,
    batch: usize,
    metrics: Arc<Metrics>,
    waiting: Arc<AtomicUsize>,
) {
    // A job that did not fit the previous batch starts the next one.
    let mut carried: Option<EmbedJob> = None;
    while let Some(first) = carried.take().or_else(|| rx.blocking_recv()) {
        // Take whatever else is already waiting, up to one batch of sequences.
        let mut jobs = vec![first];
        let mut size = jobs[0].seqs.len();
        while size < batch {
            match rx.try_recv() {
                Ok(job) if size + job.seqs.len() > batch => {
                    carried = Some(job);
                    break;
                }
                Ok(job) => {
                    size += job.seqs.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let seqs: Vec<&[u32]> = jobs
            .iter()
            .flat_map(|j| j.seqs.iter().map(Vec::as_slice))
            .collect();
        let started = std::time::Instant::now();
        let result = encoder
            .embed(&seqs, seqs.len().max(1))
            .map_err(|e| EngineError::Model(e.to_string()));
        metrics.observe_embed(seqs.len(), started.elapsed());
        let left = waiting
            .fetch_sub(size, Ordering::Relaxed)
            .saturating_sub(size);
        metrics.set_queue_depth("embed", left);
        match result {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for job in jobs {
                    let part: Vec<Vec<f32>> = vectors.by_ref().take(job.seqs.len()).collect();
                    let _ = job.reply.send(Ok(part));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(EngineError::Model(e.to_string())));
                }
            }
        }
    }
}

/// One generation in the batch: its session, token choice and listener.
struct Running {
    job: GenerateJob,
    session: Session,
    decoding: Decoding,
    /// The token chosen last, fed at the next step.
    next: u32,
}

/// Continuous batching: new generations run their prompt and join the batch;
/// every step feeds each running generation its last token in one pass over
/// the weights, so a step for `b` generations costs about one for one while
/// decoding is bound by reading the weights (the GPU case). Ended or
/// cancelled generations leave at once.
fn generate_worker(
    generator: Generator,
    mut rx: mpsc::Receiver<GenerateJob>,
    batch: usize,
    metrics: Arc<Metrics>,
) {
    let mut running: Vec<Running> = Vec::new();
    loop {
        // Admit new generations: wait for one when idle, else take what is
        // already queued, up to the batch size.
        while running.len() < batch {
            let job = if running.is_empty() {
                match rx.blocking_recv() {
                    Some(job) => job,
                    None => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            };
            if let Some(r) = start_generation(&generator, job, &metrics) {
                running.push(r);
            }
        }
        if running.is_empty() {
            continue;
        }
        let ids: Vec<u32> = running.iter().map(|r| r.next).collect();
        let result = {
            let mut sessions: Vec<&mut Session> =
                running.iter_mut().map(|r| &mut r.session).collect();
            generator.step(&mut sessions, &ids)
        };
        metrics.observe_decode_step();
        match result {
            Ok(logits) => {
                let mut still = Vec::with_capacity(running.len());
                for (mut r, logits) in running.drain(..).zip(logits) {
                    if advance(&mut r, &logits, &metrics) {
                        still.push(r);
                    }
                }
                running = still;
            }
            Err(e) => {
                // A failed step fails every generation in it (their caches may
                // be half updated); the worker goes on with new ones.
                for r in running.drain(..) {
                    fail(&r.job.events, &e);
                }
            }
        }
    }
}

/// Runs a new generation's prompt and chooses its first token; `None` when it
/// has already ended (or failed), its final event sent.
fn start_generation(generator: &Generator, job: GenerateJob, metrics: &Metrics) -> Option<Running> {
    metrics.add_prompt_tokens(job.prompt.len());
    let decoding = match Decoding::new(&job.options) {
        Ok(d) => d,
        Err(e) => {
            fail(&job.events, &e);
            return None;
        }
    };
    if job.options.max_tokens == 0 {
        let _ = job
            .events
            .blocking_send(GenerationEvent::Done(StopReason::MaxTokens));
        return None;
    }
    let mut session = generator.session();
    let logits = match session.feed(&job.prompt) {
        Ok(logits) => logits,
        Err(e) => {
            fail(&job.events, &e);
            return None;
        }
    };
    let mut r = Running {
        job,
        session,
        decoding,
        next: 0,
    };
    advance(&mut r, &logits, metrics).then_some(r)
}

/// Sends a generation its final `Failed` event (a listener that went away
/// has nothing left to hear).
fn fail(events: &mpsc::Sender<GenerationEvent>, e: &dyn std::fmt::Display) {
    let _ = events.blocking_send(GenerationEvent::Failed(e.to_string()));
}

/// Chooses `r`'s next token from `logits` and sends it; false when the
/// generation has ended (its final event sent) or its listener went away.
fn advance(r: &mut Running, logits: &[f32], metrics: &Metrics) -> bool {
    let (next, stop) = match r.decoding.choose(logits, &r.session) {
        Ok(choice) => choice,
        Err(e) => {
            fail(&r.job.events, &e);
            return false;
        }
    };
    metrics.add_generated_tokens(1);
    // A closed channel means the client went away: stop generating.
    if r.job
        .events
        .blocking_send(GenerationEvent::Token(next))
        .is_err()
    {
        return false;
    }
    if let Some(stop) = stop {
        let _ = r.job.events.blocking_send(GenerationEvent::Done(stop));
        return false;
    }
    r.next = next;
    true
}
