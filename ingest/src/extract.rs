//! Reading files into normalised text (client side): plain text, Markdown,
//! HTML and PDF. Anything else, or a file that cannot be read as its kind,
//! is an [`ExtractError`] that the upload reports and skips.

use std::path::Path;

use unicode_normalization::UnicodeNormalization;

/// Files larger than this are refused rather than read into memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Why a file yields no text.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("unsupported file type (eerag reads .txt, .md, .html and .pdf)")]
    Unsupported,
    #[error("cannot read the file: {0}")]
    Unreadable(#[from] std::io::Error),
    #[error("larger than {} MiB", MAX_FILE_BYTES >> 20)]
    TooLarge,
    #[error("not text (binary content or not UTF-8)")]
    NotText,
    #[error("the PDF cannot be read: {0}")]
    Pdf(String),
    #[error("the HTML cannot be read: {0}")]
    Html(String),
    #[error("no text in the file")]
    Empty,
    #[error("the tokenizer failed on the text: {0}")]
    Tokenize(String),
}

/// The kinds of file eerag reads, by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Text,
    Markdown,
    Html,
    Pdf,
}

impl FileKind {
    /// The kind of `path` from its extension, if eerag reads it.
    pub fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "txt" | "text" => FileKind::Text,
            "md" | "markdown" => FileKind::Markdown,
            "html" | "htm" | "xhtml" => FileKind::Html,
            "pdf" => FileKind::Pdf,
            _ => return None,
        })
    }
}

/// A file's text, normalised, and a title for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Extracted {
    pub title: String,
    pub text: String,
}

/// Reads `path` and extracts its text.
pub fn extract_file(path: &Path) -> Result<Extracted, ExtractError> {
    let kind = FileKind::of(path).ok_or(ExtractError::Unsupported)?;
    let size = std::fs::metadata(path)?.len();
    if size > MAX_FILE_BYTES {
        return Err(ExtractError::TooLarge);
    }
    let bytes = std::fs::read(path)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    extract_bytes(kind, &bytes, &stem)
}

/// Extracts the text of `bytes` read as `kind`; `fallback_title` (the file
/// name) is used when the content has no title of its own.
pub fn extract_bytes(
    kind: FileKind,
    bytes: &[u8],
    fallback_title: &str,
) -> Result<Extracted, ExtractError> {
    let (title, raw) = match kind {
        FileKind::Text => (None, utf8_text(bytes)?),
        FileKind::Markdown => {
            let text = utf8_text(bytes)?;
            (markdown_title(&text), text)
        }
        FileKind::Html => {
            let html = utf8_text(bytes)?;
            let title = html_title(&html);
            let text = html2text::config::plain_no_decorate()
                .no_table_borders()
                .string_from_read(html.as_bytes(), 100_000)
                .map_err(|e| ExtractError::Html(e.to_string()))?;
            (title, text)
        }
        FileKind::Pdf => (None, pdf_text(bytes)?),
    };
    let text = normalize(&raw);
    if text.trim().is_empty() {
        return Err(ExtractError::Empty);
    }
    let title = title
        .map(|t| normalize(&t).replace('\n', " "))
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| fallback_title.to_string());
    Ok(Extracted { title, text })
}

/// UTF-8 text without a byte-order mark; binary content (NUL bytes) and
/// other encodings are refused rather than guessed.
fn utf8_text(bytes: &[u8]) -> Result<String, ExtractError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    if bytes.contains(&0) {
        return Err(ExtractError::NotText);
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| ExtractError::NotText)
}

fn markdown_title(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with("# "))
        .map(|l| l.trim_start_matches('#').trim().to_string())
}

/// The text of the first `<title>` element, entities decoded.
fn html_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let open = lower.find("<title")?;
    let start = open + lower[open..].find('>')? + 1;
    let end = start + lower[start..].find("</title")?;
    let fragment = format!("<p>{}</p>", &html[start..end]);
    html2text::config::plain_no_decorate()
        .string_from_read(fragment.as_bytes(), 100_000)
        .ok()
        .map(|t| t.trim().to_string())
}

/// The text of a PDF. The parser can panic on damaged files; that is caught
/// and reported like any other unreadable file.
fn pdf_text(bytes: &[u8]) -> Result<String, ExtractError> {
    let owned = bytes.to_vec();
    match std::panic::catch_unwind(move || pdf_extract::extract_text_from_mem(&owned)) {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(ExtractError::Pdf(e.to_string())),
        Err(_) => Err(ExtractError::Pdf("the PDF parser gave up on it".into())),
    }
}

/// Unicode NFC, one kind of newline, no control characters, runs of spaces
/// collapsed, at most one blank line between paragraphs: the same document
/// always gives the same text, and so the same chunks and document id.
pub fn normalize(text: &str) -> String {
    let nfc: String = text
        .replace("\r\n", "\n")
        .replace('\r', "\n")
        .nfc()
        .collect();
    let mut out = String::with_capacity(nfc.len());
    let mut blank_lines = 0usize;
    for line in nfc.lines() {
        let mut cleaned = String::with_capacity(line.len());
        for word in line
            .split(|c: char| c.is_whitespace() || c.is_control())
            .filter(|w| !w.is_empty())
        {
            if !cleaned.is_empty() {
                cleaned.push(' ');
            }
            cleaned.push_str(word);
        }
        if cleaned.is_empty() {
            blank_lines += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_lines > 0 { "\n\n" } else { "\n" });
        }
        blank_lines = 0;
        out.push_str(&cleaned);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizing_is_stable_and_collapses_whitespace() {
        let text = "  Caf\u{65}\u{301}\tau\r\n lait \u{0007}\n\n\n\nNext   para ";
        let n = normalize(text);
        assert_eq!(n, "Caf\u{e9} au\nlait\n\nNext para");
        assert_eq!(normalize(&n), n);
    }

    #[test]
    fn kinds_come_from_extensions() {
        assert_eq!(FileKind::of(Path::new("a/B.MD")), Some(FileKind::Markdown));
        assert_eq!(FileKind::of(Path::new("x.htm")), Some(FileKind::Html));
        assert_eq!(FileKind::of(Path::new("x.pdf")), Some(FileKind::Pdf));
        assert_eq!(FileKind::of(Path::new("x.docx")), None);
        assert_eq!(FileKind::of(Path::new("README")), None);
    }

    #[test]
    fn html_gives_its_text_and_title() {
        let html = b"<html><head><title>Fridge &amp; rules</title><style>p{}</style></head>\
            <body><h1>Rules</h1><p>Keep it <b>cold</b>.</p><script>var x=1;</script></body></html>";
        let e = extract_bytes(FileKind::Html, html, "page").unwrap();
        assert_eq!(e.title, "Fridge & rules");
        assert!(e.text.contains("Keep it cold."), "{}", e.text);
        assert!(!e.text.contains("var x"), "{}", e.text);
    }

    #[test]
    fn binary_and_broken_files_are_errors() {
        assert!(matches!(
            extract_bytes(FileKind::Text, b"\x00\x01\x02ELF", "x"),
            Err(ExtractError::NotText)
        ));
        assert!(matches!(
            extract_bytes(FileKind::Text, b"\xff\xfe\xfa", "x"),
            Err(ExtractError::NotText)
        ));
        assert!(matches!(
            extract_bytes(FileKind::Pdf, b"%PDF-1.4\n1 0 obj << /Type /Catalog", "x"),
            Err(ExtractError::Pdf(_))
        ));
        assert!(matches!(
            extract_bytes(FileKind::Markdown, b" \n\n ", "x"),
            Err(ExtractError::Empty)
        ));
    }

    #[test]
    fn markdown_title_is_the_first_heading() {
        let e = extract_bytes(FileKind::Markdown, b"intro\n# The Title\ntext", "f").unwrap();
        assert_eq!(e.title, "The Title");
        let e = extract_bytes(FileKind::Text, b"plain", "file-name").unwrap();
        assert_eq!(e.title, "file-name");
    }
}
