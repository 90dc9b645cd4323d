//! Tokenizers. Client-side only: the host receives ids, never text, and its
//! artifacts carry no tokenizer.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer, TruncationParams};

use eerag_core::error::{EeError, Result};
use eerag_core::gguf;

/// sentence-transformers runs all-MiniLM-L6-v2 with a 256-token window; the
/// shipped tokenizer.json says 128, so the window is always set explicitly.
pub const DEFAULT_ENCODER_MAX_TOKENS: usize = 256;

fn tok_err(e: impl std::fmt::Display) -> EeError {
    EeError::Tokenizer(e.to_string())
}

/// The encoder's WordPiece tokenizer (from the model's `tokenizer.json`).
pub struct EncoderTokenizer {
    inner: Tokenizer,
    untruncated: Tokenizer,
    max_tokens: usize,
}

impl EncoderTokenizer {
    /// Loads `tokenizer.json`, truncating to `max_tokens` (special tokens
    /// included) and leaving padding to the encoder.
    pub fn from_file(path: &Path, max_tokens: usize) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path).map_err(tok_err)?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(tok_err)?;
        inner.with_padding(None);
        let mut untruncated = inner.clone();
        untruncated.with_truncation(None).map_err(tok_err)?;
        Ok(Self {
            inner,
            untruncated,
            max_tokens,
        })
    }

    /// Loads the tokenizer of an encoder model directory.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        Self::from_file(&dir.join("tokenizer.json"), DEFAULT_ENCODER_MAX_TOKENS)
    }

    /// `[CLS] text [SEP]` as ids, truncated to the window.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, true)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Ids without `[CLS]`/`[SEP]` and without truncation: for chunking a
    /// document by encoder tokens before each chunk is wrapped.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .untruncated
            .encode_fast(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Byte ranges in `text` of its tokens (no `[CLS]`/`[SEP]`, no
    /// truncation): where a chunker may cut a document.
    pub fn token_offsets(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        Ok(self
            .untruncated
            .encode(text, false)
            .map_err(tok_err)?
            .get_offsets()
            .to_vec())
    }

    /// Ids back to text (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(tok_err)
    }

    /// Size of the vocabulary, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The truncation window in tokens.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

/// The generator's byte-level BPE, rebuilt from the GGUF's own metadata so the
/// client needs nothing but the public model file.
pub struct GeneratorTokenizer {
    /// Control-token strings in input are plain text.
    text: Tokenizer,
    /// Control-token strings in input become their single ids.
    template: Tokenizer,
    special: HashMap<String, u32>,
    eos: Option<u32>,
    chat_template: Option<String>,
}

/// GGUF token type of control tokens such as `<|im_start|>`.
const GGUF_TOKEN_TYPE_CONTROL: i32 = 3;

impl GeneratorTokenizer {
    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let (content, _) = gguf::read(path)?;
        Self::from_gguf_metadata(&content.metadata)
    }

    /// Builds the tokenizer from already-read GGUF metadata.
    pub fn from_gguf_metadata(md: &HashMap<String, gguf_file::Value>) -> Result<Self> {
        let get = |k: &str| {
            md.get(k)
                .ok_or_else(|| EeError::Tokenizer(format!("GGUF has no {k}")))
        };
        let model = get("tokenizer.ggml.model")?.to_string().map_err(tok_err)?;
        if model != "gpt2" {
            return Err(EeError::Tokenizer(format!(
                "unsupported GGUF tokenizer model {model:?} (byte-level BPE 'gpt2' is supported)"
            )));
        }
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
            .to_vec()
            .map_err(tok_err)?
            .iter()
            .map(|v| v.to_string().cloned().map_err(tok_err))
            .collect::<Result<_>>()?;
        let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")?
            .to_vec()
            .map_err(tok_err)?
            .iter()
            .map(|v| {
                let m = v.to_string().map_err(tok_err)?;
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| EeError::Tokenizer(format!("bad merge {m:?}")))
            })
            .collect::<Result<_>>()?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(tok_err)?
                .iter()
                .map(|t| t.to_i32().map_err(tok_err))
                .collect::<Result<_>>()?,
            None => vec![1; tokens.len()],
        };
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut inner = Tokenizer::new(bpe);
        // The SmolLM2 / GPT-2 family pre-tokenizer: single digits, then the
        // byte-level regex split without a prefix space.
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let special: HashMap<String, u32> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, &ty))| ty == GGUF_TOKEN_TYPE_CONTROL)
            .map(|(i, (t, _))| (t.clone(), i as u32))
            .collect();
        let added: Vec<AddedToken> = special
            .keys()
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        inner.add_special_tokens(&added);
        let template = inner.clone();
        let mut text = inner;
        text.set_encode_special_tokens(true);
        let eos = md
            .get("tokenizer.ggml.eos_token_id")
            .and_then(|v| v.to_u32().ok());
        let chat_template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned());
        Ok(Self {
            text,
            template,
            special,
            eos,
            chat_template,
        })
    }

    /// Text to ids. Control-token strings inside `text` (e.g. a user typing
    /// `<|im_start|>`) stay plain text, so user input cannot forge the chat
    /// template; template pieces use [`special_id`](Self::special_id).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .text
            .encode_fast(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Text to ids with control-token strings turned into their single ids:
    /// for trusted template text such as `<|im_start|>system\n`.
    pub fn encode_template(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .template
            .encode_fast(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Ids to text, exactly: control tokens are kept as their strings.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.template.decode(ids, false).map_err(tok_err)
    }

    /// Id of a control token such as `<|im_end|>`.
    pub fn special_id(&self, token: &str) -> Option<u32> {
        self.special.get(token).copied()
    }

    /// End-of-sequence id from the GGUF metadata.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The Jinja chat template shipped in the GGUF, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Vocabulary size, control tokens included.
    pub fn vocab_size(&self) -> usize {
        self.template.get_vocab_size(true)
    }
}

/// A ChatML conversation prompt (the SmolLM2 instruct format):
/// `<|im_start|>system\n…<|im_end|>\n<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n`.
/// The markers are single control ids; the texts never become control ids.
pub fn chatml_prompt(tok: &GeneratorTokenizer, system: &str, user: &str) -> Result<Vec<u32>> {
    let mut ids = tok.encode_template("<|im_start|>system\n")?;
    ids.extend(tok.encode(system)?);
    ids.extend(tok.encode_template("<|im_end|>\n<|im_start|>user\n")?);
    ids.extend(tok.encode(user)?);
    ids.extend(tok.encode_template("<|im_end|>\n<|im_start|>assistant\n")?);
    Ok(ids)
}
