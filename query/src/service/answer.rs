//! Prompt assembly and generation: splice retrieved chunks into the
//! client's template and start the generator.

use eerag_core::models::{GenerationOptions, StopReason};
use eerag_core::wire::{AnswerRequest, FinishReason, UsedChunk};
use eerag_store::store::ChunkRecord;
use tokio::sync::mpsc;

use super::validate::{check_ids, invalid};
use super::{Service, ServiceError};
use crate::engine::GenerationEvent;

/// A generation under way, with what went into its prompt.
pub struct PreparedAnswer {
    /// Token and end events.
    pub events: mpsc::Receiver<GenerationEvent>,
    pub prompt_tokens: usize,
    pub chunks: Vec<UsedChunk>,
}

impl Service {
    /// Retrieves, splices the chunks into the client's template and starts
    /// the generation.
    pub async fn answer(
        &self,
        tenant: &str,
        name: &str,
        request: AnswerRequest,
    ) -> Result<PreparedAnswer, ServiceError> {
        let collection = self.open(tenant, name).await?;
        self.check_key(collection.as_ref(), request.key_id)?;
        let engine = &self.models_for(collection.meta())?.engine;
        let facts = engine.facts();
        let vocab = facts.generator_vocab;
        let window = facts.generator_context;
        let t = &request.template;
        for (what, ids) in [
            ("template.before_context", &t.before_context),
            ("template.between_chunks", &t.between_chunks),
            ("template.before_question", &t.before_question),
            ("template.after_question", &t.after_question),
            ("stop_ids", &request.stop_ids),
        ] {
            check_ids(what, ids, vocab, window, true)?;
        }
        check_ids(
            "question.generator_ids",
            &request.question.generator_ids,
            vocab,
            window,
            false,
        )?;
        if request.max_tokens == 0 || request.max_tokens > self.limits.max_new_tokens {
            return Err(invalid(
                "invalid_max_tokens",
                format!("max_tokens must be 1 to {}", self.limits.max_new_tokens),
            ));
        }
        if request.k > self.limits.max_answer_k {
            return Err(invalid(
                "invalid_k",
                format!("k must be 0 to {}", self.limits.max_answer_k),
            ));
        }
        request
            .sampling
            .validate()
            .map_err(|e| invalid("invalid_sampling", e.to_string()))?;

        let mut retrieved = if request.k > 0 {
            self.retrieve(
                &collection,
                request.question.encoder_ids.clone(),
                request.k,
                request.mode,
            )
            .await?
        } else {
            Vec::new()
        };
        // Fit the window: drop the lowest-ranked chunks until prompt and
        // answer fit.
        let fixed = t.before_context.len()
            + t.before_question.len()
            + request.question.generator_ids.len()
            + t.after_question.len();
        let prompt_len = |chunks: &[(ChunkRecord, f32)]| {
            fixed
                + chunks
                    .iter()
                    .map(|(c, _)| c.generator_ids.len())
                    .sum::<usize>()
                + t.between_chunks.len() * chunks.len().saturating_sub(1)
        };
        while !retrieved.is_empty() && prompt_len(&retrieved) + request.max_tokens > window {
            retrieved.pop();
        }
        let prompt_tokens = prompt_len(&retrieved);
        if prompt_tokens + request.max_tokens > window {
            return Err(invalid(
                "context_too_long",
                format!(
                    "a prompt of {prompt_tokens} tokens plus max_tokens {} exceeds the generator's context of {window}",
                    request.max_tokens
                ),
            ));
        }
        let mut prompt = Vec::with_capacity(prompt_tokens);
        prompt.extend_from_slice(&t.before_context);
        for (i, (chunk, _)) in retrieved.iter().enumerate() {
            if i > 0 {
                prompt.extend_from_slice(&t.between_chunks);
            }
            prompt.extend_from_slice(chunk.generator_ids.ids());
        }
        prompt.extend_from_slice(&t.before_question);
        prompt.extend_from_slice(&request.question.generator_ids);
        prompt.extend_from_slice(&t.after_question);

        let events = engine.generate(
            prompt,
            GenerationOptions {
                max_tokens: request.max_tokens,
                stop_ids: request.stop_ids,
                sampling: request.sampling,
            },
        )?;
        Ok(PreparedAnswer {
            events,
            prompt_tokens,
            chunks: retrieved
                .into_iter()
                .map(|(r, score)| UsedChunk {
                    chunk_id: r.chunk_id.to_string(),
                    doc_id: r.doc_id,
                    index: r.index,
                    score,
                    metadata: r.metadata,
                })
                .collect(),
        })
    }
}

/// Maps the generator's stop reason to the API's.
pub fn finish_reason(stop: StopReason) -> FinishReason {
    match stop {
        StopReason::StopToken => FinishReason::Stop,
        StopReason::MaxTokens | StopReason::Cancelled => FinishReason::Length,
        StopReason::ContextFull => FinishReason::ContextFull,
    }
}
