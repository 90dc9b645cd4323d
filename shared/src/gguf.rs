//! GGUF reading and the exact row permutation of quantized tensors.
//!
//! A quantized row is a whole number of blocks, so permuting rows is moving
//! byte ranges: the permuted model is bitwise the original up to row order,
//! with no dequantize/requantize round trip.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use crate::error::{EeError, Result};
use crate::permutation::Permutation;

/// The token-embedding tensor of llama-family GGUF files.
pub const TOKEN_EMBEDDING: &str = "token_embd.weight";
/// The output head, absent when it is tied to the token embedding.
pub const OUTPUT_HEAD: &str = "output.weight";
/// The metadata key naming the model family.
const ARCHITECTURE_KEY: &str = "general.architecture";
/// The metadata key naming the tokenizer model ("none" in host artifacts).
pub const TOKENIZER_MODEL_KEY: &str = "tokenizer.ggml.model";

/// Reads a GGUF file's header (metadata and tensor table).
pub fn read(path: &Path) -> Result<(gguf_file::Content, BufReader<File>)> {
    let file = File::open(path).map_err(|e| EeError::io(path, e))?;
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader).map_err(|e| {
        EeError::Model(format!("{}: not a readable GGUF file: {e}", path.display()))
    })?;
    Ok((content, reader))
}

/// Bytes of one row (the last dimension) of a tensor of type `dtype`.
fn row_bytes(dtype: GgmlDType, row_len: usize) -> Result<usize> {
    if !row_len.is_multiple_of(dtype.block_size()) {
        return Err(EeError::Model(format!(
            "row of {row_len} values is not a whole number of {dtype:?} blocks"
        )));
    }
    Ok(row_len / dtype.block_size() * dtype.type_size())
}

fn raw_tensor<R: Read + Seek>(
    reader: &mut R,
    content: &gguf_file::Content,
    info: &gguf_file::TensorInfo,
) -> Result<Vec<u8>> {
    let dims = info.shape.dims();
    let row_len = *dims.last().unwrap_or(&0);
    let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let size = rows
        .checked_mul(row_bytes(info.ggml_dtype, row_len)?)
        .ok_or_else(|| EeError::Model("tensor size overflows".into()))?;
    let file_len = reader
        .seek(SeekFrom::End(0))
        .map_err(|e| EeError::Model(format!("reading tensor data: {e}")))?;
    let start = content.tensor_data_offset.saturating_add(info.offset);
    if start.saturating_add(size as u64) > file_len {
        return Err(EeError::Model(
            "tensor data runs past the end of the file".into(),
        ));
    }
    let mut raw = vec![0u8; size];
    reader
        .seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
        .and_then(|_| reader.read_exact(&mut raw))
        .map_err(|e| EeError::Model(format!("reading tensor data: {e}")))?;
    Ok(raw)
}

/// Moves row `t` of a `[vocab, …]` tensor to row `π[t]`, as raw bytes.
pub fn permute_rows(raw: &[u8], row_bytes: usize, perm: &Permutation) -> Result<Vec<u8>> {
    if raw.len() != row_bytes * perm.len() {
        return Err(EeError::VocabMismatch {
            vocab: "generator",
            expected: perm.len(),
            found: raw.len() / row_bytes.max(1),
        });
    }
    let mut out = vec![0u8; raw.len()];
    for (t, &c) in perm.forward_table().iter().enumerate() {
        let (src, dst) = (t * row_bytes, c as usize * row_bytes);
        out[dst..dst + row_bytes].copy_from_slice(&raw[src..src + row_bytes]);
    }
    Ok(out)
}

/// Vocabulary size of a llama-family GGUF: rows of its token embedding.
pub fn vocab_size(content: &gguf_file::Content) -> Result<usize> {
    let info = content
        .tensor_infos
        .get(TOKEN_EMBEDDING)
        .ok_or_else(|| EeError::Model(format!("GGUF has no {TOKEN_EMBEDDING}")))?;
    info.shape
        .dims()
        .first()
        .copied()
        .ok_or_else(|| EeError::Model(format!("{TOKEN_EMBEDDING} is a scalar")))
}

/// Writes `out`: the model of `input` with the token-embedding rows (and the
/// output-head rows, when the model has its own) permuted by `perm`, and with
/// the tokenizer metadata replaced by an opaque vocabulary of the same size
/// (host artifacts carry no tokenizer).
/// Returns the vocabulary size.
pub fn write_permuted(input: &Path, out: &Path, perm: &Permutation) -> Result<usize> {
    let (content, mut reader) = read(input)?;
    let vocab = vocab_size(&content)?;
    if vocab != perm.len() {
        return Err(EeError::VocabMismatch {
            vocab: "generator",
            expected: perm.len(),
            found: vocab,
        });
    }
    // Keep the file's tensor order.
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let info = &content.tensor_infos[name];
        let mut raw = raw_tensor(&mut reader, &content, info)?;
        if name == TOKEN_EMBEDDING || name == OUTPUT_HEAD {
            let row = row_bytes(info.ggml_dtype, *info.shape.dims().last().unwrap_or(&0))?;
            raw = permute_rows(&raw, row, perm)?;
        }
        let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
            info.ggml_dtype,
            &raw,
            info.shape.dims().to_vec(),
            &Device::Cpu,
        )?;
        tensors.push((name.clone(), q));
    }
    // candle's writer always aligns to 32 bytes, the GGUF default: drop any
    // other alignment the input declared.
    let mut metadata: Vec<(&String, &gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("tokenizer.") && k.as_str() != "general.alignment")
        .collect();
    // llama.cpp refuses a model without a vocabulary. "none" with the size
    // gives it placeholder tokens, so it runs on ids alone, as eerag does,
    // and the file names no token.
    let (no_vocab_key, vocab_size_key) = opaque_vocabulary_keys(&content)?;
    let no_vocab = gguf_file::Value::String("none".into());
    let vocab_count = gguf_file::Value::U32(
        u32::try_from(vocab).map_err(|_| EeError::Model("vocabulary too large".into()))?,
    );
    metadata.retain(|(k, _)| **k != vocab_size_key);
    metadata.push((&no_vocab_key, &no_vocab));
    metadata.push((&vocab_size_key, &vocab_count));
    metadata.sort_by(|a, b| a.0.cmp(b.0));
    let md: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let file = File::create(out).map_err(|e| EeError::io(out, e))?;
    let mut w = BufWriter::new(file);
    gguf_file::write(&mut w, &md, &ts)?;
    let file = w
        .into_inner()
        .map_err(|e| EeError::io(out, e.into_error()))?;
    file.sync_all().map_err(|e| EeError::io(out, e))?;
    Ok(vocab)
}

/// The metadata keys of an opaque vocabulary: `tokenizer.ggml.model` (set to
/// "none") and `<architecture>.vocab_size`.
fn opaque_vocabulary_keys(content: &gguf_file::Content) -> Result<(String, String)> {
    let arch = match content.metadata.get(ARCHITECTURE_KEY) {
        Some(gguf_file::Value::String(arch)) => arch.clone(),
        _ => return Err(EeError::Model(format!("GGUF has no {ARCHITECTURE_KEY}"))),
    };
    Ok((
        TOKENIZER_MODEL_KEY.to_string(),
        format!("{arch}.vocab_size"),
    ))
}

/// Whether a metadata entry is the opaque vocabulary's `tokenizer.ggml.model
/// = "none"`, the one tokenizer key a host file may carry (it names no token).
pub fn is_opaque_vocabulary(key: &str, value: &gguf_file::Value) -> bool {
    key == TOKENIZER_MODEL_KEY && matches!(value, gguf_file::Value::String(m) if m == "none")
}

/// Whether a GGUF names its tokenizer model (a public GGUF's real one, or the
/// opaque "none" of host artifacts): llama.cpp needs it to load the file.
pub fn declares_vocabulary(content: &gguf_file::Content) -> bool {
    content.metadata.contains_key(TOKENIZER_MODEL_KEY)
}

/// Metadata of a GGUF file, for callers that need only the header.
pub fn metadata(path: &Path) -> Result<HashMap<String, gguf_file::Value>> {
    Ok(read(path)?.0.metadata)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::generator::{GenerationOptions, GeneratorBackend};
    #[cfg(feature = "llama-cpp")]
    use crate::models::generator::{Generator, GeneratorOptions};
    use crate::sampling::Sampling;
    #[cfg(feature = "llama-cpp")]
    use crate::test_support::assert_logits_close;
    use crate::test_support::{greedy_walk_permuted, load_on, tiny_llama, VOCAB};
    use candle_core::quantized::gguf_file::Value;

    fn check_permuted_model(own_output_head: bool) {
        let dir = tempfile::tempdir().unwrap();
        let (base, out) = (dir.path().join("base.gguf"), dir.path().join("enc.gguf"));
        tiny_llama(&base, own_output_head);
        let perm = crate::test_support::seeded_permutation(VOCAB, 4);
        assert_eq!(write_permuted(&base, &out, &perm).unwrap(), VOCAB);

        let (content, _) = read(&out).unwrap();
        assert!(content
            .metadata
            .keys()
            .all(|k| !k.starts_with("tokenizer.") || k == TOKENIZER_MODEL_KEY));
        assert!(matches!(
            &content.metadata[TOKENIZER_MODEL_KEY],
            Value::String(model) if model == "none"
        ));
        assert_eq!(
            content.metadata["llama.vocab_size"].to_u32().unwrap() as usize,
            VOCAB
        );
        assert_eq!(
            content.tensor_infos.contains_key(OUTPUT_HEAD),
            own_output_head
        );

        let plain = load_on(&base, GeneratorBackend::Candle);
        let enc = load_on(&out, GeneratorBackend::Candle);
        let prompt = [3u32, 17, 42, 5, 88];
        greedy_walk_permuted(&plain, &enc, &prompt, &perm, 10, "GGUF");
        let opts = |stop| GenerationOptions {
            max_tokens: 20,
            stop_ids: vec![stop],
            sampling: Sampling::Random {
                temperature: 0.9,
                top_p: 0.95,
                top_k: None,
                seed: 11,
            },
        };
        let p = plain
            .session()
            .generate(&prompt, &opts(0), |_| true)
            .unwrap();
        let e = enc
            .session()
            .generate(
                &perm.apply_all(&prompt).unwrap(),
                &opts(perm.apply(0).unwrap()),
                |_| true,
            )
            .unwrap();
        assert_eq!(perm.invert_all(&e.tokens).unwrap(), p.tokens);
        assert_eq!(e.stop, p.stop);
    }

    #[test]
    fn tied_embedding_model_permutes_exactly() {
        check_permuted_model(false);
    }

    #[test]
    fn own_output_head_is_permuted_too() {
        check_permuted_model(true);
    }

    /// llama.cpp runs the host file as written (opaque vocabulary): its
    /// logits on encrypted ids are its plaintext logits permuted, bitwise, and
    /// close to candle's on the same file.
    #[cfg(feature = "llama-cpp")]
    #[test]
    fn llama_cpp_runs_host_files_bitwise_permuted() {
        for own_output_head in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().join("base.gguf");
            tiny_llama(&base, own_output_head);
            let (plain_path, enc_path) = (dir.path().join("id.gguf"), dir.path().join("enc.gguf"));
            let identity = crate::permutation::Permutation::identity(VOCAB, "generator");
            write_permuted(&base, &plain_path, &identity).unwrap();
            let perm = crate::test_support::seeded_permutation(VOCAB, 4);
            write_permuted(&base, &enc_path, &perm).unwrap();
            let plain = load_on(&plain_path, GeneratorBackend::LlamaCpp);
            let enc = load_on(&enc_path, GeneratorBackend::LlamaCpp);
            assert_eq!((plain.vocab_size(), plain.context_length()), (VOCAB, 64));
            let prompt = [3u32, 17, 42, 5, 88];
            let tokens = greedy_walk_permuted(&plain, &enc, &prompt, &perm, 10, "llama.cpp");

            let candle = load_on(&plain_path, GeneratorBackend::Candle);
            let mut a = candle.session();
            let mut b = plain.session();
            let (la, lb) = (a.feed(&prompt).unwrap(), b.feed(&prompt).unwrap());
            assert_logits_close(&la, &lb, "candle vs llama.cpp");
            assert_eq!(crate::sampling::argmax(&la), tokens[0]);
        }
    }

    /// A session forked on llama.cpp continues exactly as the original, and
    /// steps over several sessions give what each gives alone.
    #[cfg(feature = "llama-cpp")]
    #[test]
    fn llama_cpp_sessions_fork_and_step_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let (base, host) = (dir.path().join("base.gguf"), dir.path().join("host.gguf"));
        tiny_llama(&base, false);
        let identity = crate::permutation::Permutation::identity(VOCAB, "generator");
        write_permuted(&base, &host, &identity).unwrap();
        let g = load_on(&host, GeneratorBackend::LlamaCpp);
        let mut first = g.session();
        first.feed(&[1, 2, 3, 4]).unwrap();
        let mut copy = first.fork().unwrap();
        assert_eq!(copy.position(), 4);
        let mut other = g.session();
        other.feed(&[9, 8]).unwrap();
        let stepped = g
            .step(&mut [&mut first, &mut copy, &mut other], &[5, 5, 7])
            .unwrap();
        assert_eq!(stepped[0], stepped[1]);
        let mut alone = g.session();
        alone.feed(&[9, 8]).unwrap();
        assert_eq!(stepped[2], alone.feed(&[7]).unwrap());
        assert!(g.step(&mut [&mut alone], &[VOCAB as u32]).is_err());
        // Past the window is refused before llama.cpp sees it.
        let mut full = g.session();
        assert!(full.feed(&[1; 65]).is_err());
        assert_eq!(full.position(), 0);
    }

    /// A host file without the opaque vocabulary: llama.cpp refuses it with
    /// what to do, and the automatic backend runs it on candle instead.
    #[cfg(feature = "llama-cpp")]
    #[test]
    fn old_host_files_fall_back_to_candle() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.gguf");
        tiny_llama(&base, false);
        let (content, _) = read(&base).unwrap();
        let old = dir.path().join("old.gguf");
        {
            let (content2, mut reader) = read(&base).unwrap();
            let mut tensors = Vec::new();
            for (name, info) in &content2.tensor_infos {
                let raw = raw_tensor(&mut reader, &content2, info).unwrap();
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    info.ggml_dtype,
                    &raw,
                    info.shape.dims().to_vec(),
                    &Device::Cpu,
                )
                .unwrap();
                tensors.push((name.clone(), q));
            }
            let md: Vec<(&str, &gguf_file::Value)> = content
                .metadata
                .iter()
                .filter(|(k, _)| !k.starts_with("tokenizer."))
                .map(|(k, v)| (k.as_str(), v))
                .collect();
            let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
            gguf_file::write(&mut File::create(&old).unwrap(), &md, &ts).unwrap();
        }
        let options = GeneratorOptions {
            backend: GeneratorBackend::LlamaCpp,
            ..GeneratorOptions::on(&Device::Cpu)
        };
        let err = Generator::load_with(&old, &options)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("eerag transform"), "{err}");
        let auto = Generator::load(&old, &Device::Cpu).unwrap();
        assert_eq!(auto.backend(), GeneratorBackend::Candle);
    }

    #[test]
    fn wrong_vocabulary_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.gguf");
        tiny_llama(&base, false);
        let perm = crate::test_support::seeded_permutation(VOCAB + 1, 4);
        assert!(matches!(
            write_permuted(&base, &dir.path().join("x.gguf"), &perm),
            Err(EeError::VocabMismatch { .. })
        ));
    }
}
