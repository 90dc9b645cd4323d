//! Cutting a document into chunks by encoder tokens, with overlap (client
//! side). Cuts prefer paragraph ends, then sentence ends, near the end of a
//! window, so a chunk rarely stops mid-sentence.

use crate::tokenize::EncoderTokenizer;
use eerag_core::EeError;

/// How documents are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkingOptions {
    /// Encoder tokens per chunk, before `[CLS]`/`[SEP]`.
    pub max_tokens: usize,
    /// Tokens each chunk repeats from the end of the previous one.
    pub overlap: usize,
}

impl Default for ChunkingOptions {
    /// 192 tokens with 32 of overlap: well inside all-MiniLM-L6-v2's
    /// 256-token window (the model was trained on 128-token inputs, so
    /// shorter chunks embed better than window-filling ones).
    fn default() -> Self {
        Self {
            max_tokens: 192,
            overlap: 32,
        }
    }
}

impl ChunkingOptions {
    /// Checks the options against the encoder's window.
    pub fn validate(&self, window: usize) -> Result<(), String> {
        if self.max_tokens < 8 {
            return Err(format!(
                "chunks of {} tokens are too small (at least 8)",
                self.max_tokens
            ));
        }
        // Room for [CLS], [SEP] and re-tokenisation at the cut points.
        let most = window.saturating_sub(8);
        if self.max_tokens > most {
            return Err(format!(
                "chunks of {} tokens do not fit the encoder's {window}-token window (at most {most})",
                self.max_tokens
            ));
        }
        if self.overlap >= self.max_tokens / 2 {
            return Err(format!(
                "an overlap of {} tokens must be less than half the chunk size ({})",
                self.overlap, self.max_tokens
            ));
        }
        Ok(())
    }

    /// A tag of the options, folded into a document's content hash so that
    /// re-chunking with other options replaces the document's chunks.
    pub fn tag(&self) -> String {
        format!("chunks-v1/{}/{}", self.max_tokens, self.overlap)
    }
}

/// A piece of a document: its text and where it sits (byte offsets into the
/// normalised document text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextChunk {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// Cuts `text` into chunks of at most `options.max_tokens` encoder tokens.
pub fn chunk_text(
    tokenizer: &EncoderTokenizer,
    text: &str,
    options: &ChunkingOptions,
) -> Result<Vec<TextChunk>, EeError> {
    let offsets = tokenizer.token_offsets(text)?;
    Ok(cut(text, &offsets, options))
}

/// The cutting itself, over token byte ranges.
fn cut(text: &str, offsets: &[(usize, usize)], options: &ChunkingOptions) -> Vec<TextChunk> {
    let n = offsets.len();
    let max = options.max_tokens.max(1);
    let mut chunks = Vec::new();
    let mut start = 0usize;
    while start < n {
        let mut end = (start + max).min(n);
        if end < n {
            end = best_cut(text, offsets, (start + max * 3 / 4).max(start + 1), end);
        }
        let (from, to) = (offsets[start].0, offsets[end - 1].1);
        chunks.push(TextChunk {
            text: text[from..to].to_string(),
            start: from,
            end: to,
        });
        if end == n {
            break;
        }
        // Step back by the overlap, then to the start of that word so a
        // chunk rarely opens on a word piece (a few tokens at most: text
        // without spaces must still move forward).
        let next = end.saturating_sub(options.overlap).max(start + 1);
        let mut j = next;
        while j > start + 1 && next - j < 8 && offsets[j].0 == offsets[j - 1].1 {
            j -= 1;
        }
        start = if offsets[j].0 != offsets[j - 1].1 {
            j
        } else {
            next
        };
    }
    chunks
}

/// Whether token `j` (> 0) starts after a gap (space, newline) rather than
/// right after, or inside, the previous token's text. Tokens of one
/// character can share a range (the encoder's NFD splits a Hangul syllable
/// into several jamo tokens), so ranges may overlap.
fn starts_word(offsets: &[(usize, usize)], j: usize) -> bool {
    offsets[j].0 > offsets[j - 1].1
}

/// The token index to cut before, in `[earliest, latest]`: the last
/// paragraph break, else the last sentence end, else `latest`.
fn best_cut(text: &str, offsets: &[(usize, usize)], earliest: usize, latest: usize) -> usize {
    let gap = |j: usize| {
        if starts_word(offsets, j) {
            &text[offsets[j - 1].1..offsets[j].0]
        } else {
            ""
        }
    };
    if let Some(j) = (earliest..=latest).rev().find(|&j| gap(j).contains("\n\n")) {
        return j;
    }
    let sentence_end = |j: usize| {
        let prev = &text[offsets[j - 1].0..offsets[j - 1].1];
        matches!(prev, "." | "!" | "?" | ":" | ";") && !gap(j).is_empty() || gap(j).contains('\n')
    };
    (earliest..=latest)
        .rev()
        .find(|&j| sentence_end(j))
        .unwrap_or(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace "tokens", enough to test the cutting rules.
    fn words(text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices() {
            match (c.is_whitespace(), start) {
                (true, Some(s)) => {
                    out.push((s, i));
                    start = None;
                }
                (false, None) => start = Some(i),
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push((s, text.len()));
        }
        out
    }

    #[test]
    fn chunks_cover_the_text_with_overlap_and_respect_the_size() {
        let text: String = (0..100).map(|i| format!("w{i} ")).collect();
        let offsets = words(&text);
        let options = ChunkingOptions {
            max_tokens: 20,
            overlap: 5,
        };
        let chunks = cut(&text, &offsets, &options);
        assert!(chunks.len() >= 6);
        assert_eq!(chunks[0].start, 0);
        assert_eq!(chunks.last().unwrap().end, text.trim_end().len());
        for pair in chunks.windows(2) {
            assert!(pair[1].start < pair[0].end, "consecutive chunks overlap");
        }
        for c in &chunks {
            assert!(c.text.split_whitespace().count() <= 20);
            assert_eq!(&text[c.start..c.end], c.text);
        }
    }

    #[test]
    fn cuts_prefer_paragraphs_then_sentences() {
        let text = "a b c d e f g h i j k l m n o p.\n\nq r s t u v w x y z";
        let options = ChunkingOptions {
            max_tokens: 20,
            overlap: 2,
        };
        let chunks = cut(text, &words(text), &options);
        assert!(chunks[0].text.ends_with("p."), "{:?}", chunks[0].text);
        let text = "a b c d e f g h i j k l m n o p . q r s t u v w x y z";
        let chunks = cut(text, &words(text), &options);
        assert!(chunks[0].text.ends_with('.'), "{:?}", chunks[0].text);
    }

    #[test]
    fn tokens_that_share_a_character_never_break_the_cutting() {
        // Three tokens per character, all with the character's range, as
        // NFD gives Hangul syllables.
        let text: String = "한국어 문서 ".repeat(40);
        let mut offsets = Vec::new();
        for (i, c) in text.char_indices().filter(|(_, c)| !c.is_whitespace()) {
            for _ in 0..3 {
                offsets.push((i, i + c.len_utf8()));
            }
        }
        let options = ChunkingOptions {
            max_tokens: 20,
            overlap: 4,
        };
        let chunks = cut(&text, &offsets, &options);
        assert!(chunks.len() > 10);
        assert_eq!(chunks.last().unwrap().end, text.trim_end().len());
        for c in &chunks {
            assert!(c.start < c.end);
            assert_eq!(&text[c.start..c.end], c.text);
        }
    }

    #[test]
    fn options_must_fit_the_window() {
        assert!(ChunkingOptions::default().validate(256).is_ok());
        let too_big = ChunkingOptions {
            max_tokens: 300,
            overlap: 0,
        };
        assert!(too_big.validate(256).unwrap_err().contains("256"));
        let overlap = ChunkingOptions {
            max_tokens: 100,
            overlap: 60,
        };
        assert!(overlap.validate(256).is_err());
    }
}
