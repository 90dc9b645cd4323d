//! The client commands against a real `eerag-host serve`: `upload` of a mixed
//! folder (twice), `search`, `ask`, and their errors.

use std::path::Path;

use serde_json::Value;

use crate::serve::{setup, Server};
use crate::{assert_clean_failure, eerag, path, stderr};

/// A one-page PDF with `lines` of Helvetica text, offsets and all.
pub(crate) fn pdf_with_text(lines: &[&str]) -> Vec<u8> {
    let mut content = String::from("BT /F1 12 Tf 72 720 Td 14 TL\n");
    for line in lines {
        let escaped = line
            .replace('\\', "\\\\")
            .replace('(', "\\(")
            .replace(')', "\\)");
        content.push_str(&format!("({escaped}) Tj T*\n"));
    }
    content.push_str("ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R \
         /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_string(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_string(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for offset in offsets {
        out.extend(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// Eight files of every kind (three unreadable) and a hidden folder.
fn mixed_folder(root: &Path) {
    let write = |name: &str, bytes: &[u8]| {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    write(
        "notes/maintenance.txt",
        b"Maintenance schedule for the Harbourview plant.\n\n\
          The Zorbex valve on cooling tower B must be inspected every fourteen days by the night crew. \
          Each inspection is written into the blue binder kept in the control room.\n\n\
          Pumps on the east side are serviced by an outside contractor twice a year.",
    );
    // Long enough for several chunks; the encoder's NFD splits each
    // syllable into jamo tokens that share its byte range.
    write(
        "notes/회의록.txt",
        "주간 회의에서 냉각탑 점검 일정과 예산 문제를 논의했습니다. 다음 회의는 금요일입니다. "
            .repeat(30)
            .as_bytes(),
    );
    write(
        "guide.md",
        b"# Onboarding guide\n\nNew employees receive a laptop on their first day. \
          The cafeteria opens at half past seven and closes at three in the afternoon.\n\n\
          ## Parking\n\nStaff park on level two of the garage; visitors use level one.",
    );
    write(
        "policy.html",
        b"<html><head><title>Travel policy</title></head><body><h1>Travel</h1>\
          <p>Economy class is required for flights shorter than six hours.</p>\
          <p>Hotel costs are refunded up to a nightly limit set by the finance team.</p>\
          <script>var tracking = 1;</script></body></html>",
    );
    write(
        "reports/q3.pdf",
        &pdf_with_text(&[
            "Quarterly report for the third quarter.",
            "Revenue from the Lisbon office grew by twelve percent,",
            "driven by two new logistics customers.",
        ]),
    );
    write(
        "reports/broken.pdf",
        b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R",
    );
    write(
        "firmware.bin",
        &(0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    );
    write("dump.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00binary");
    write(".cache/hidden.txt", b"never uploaded");
}

fn json_of(o: &std::process::Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

#[test]
fn upload_a_mixed_folder_twice_then_search_and_ask() {
    let s = setup();
    let server = Server::start(
        &s.artifacts,
        &s.dir.path().join("data"),
        &s.dir.path().join("logs"),
        "info",
    );
    let folder = s.dir.path().join("docs");
    mixed_folder(&folder);
    let key = s.dir.path().join("client.eekey");
    let models = s.models.root().to_path_buf();
    let common = |cmd: &'static str| -> Vec<String> {
        vec![
            cmd.into(),
            "--server".into(),
            server.url.clone(),
            "--key".into(),
            path(&key).into(),
            "--models".into(),
            path(&models).into(),
            "--collection".into(),
            "docs".into(),
        ]
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        eerag(&refs)
    };
    let upload = || {
        let mut args = common("upload");
        args.extend(["--json".into(), path(&folder).into()]);
        run(args)
    };

    let o = upload();
    assert!(o.status.success(), "{}", stderr(&o));
    let first = json_of(&o);
    assert_eq!(first["files"], 8, "{first:#}");
    assert_eq!(first["uploaded"], 5, "{first:#}");
    assert_eq!(first["skipped"], 3, "{first:#}");
    assert_eq!(first["not_uploaded"], 0);
    let reason = |name: &str| {
        first["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("no outcome for {name}"))["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(reason("broken.pdf").contains("PDF"), "{first:#}");
    assert!(reason("firmware.bin").contains("unsupported"), "{first:#}");
    assert!(reason("dump.txt").contains("not text"), "{first:#}");
    let korean = first["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["path"].as_str().unwrap().ends_with("회의록.txt"))
        .unwrap();
    assert!(korean["chunks"].as_u64().unwrap() >= 2, "{korean:#}");
    let chunks = first["chunks"].as_u64().unwrap();
    assert!(chunks >= 7, "{first:#}");

    // Again: nothing is sent twice, nothing duplicated.
    let o = upload();
    assert!(o.status.success(), "{}", stderr(&o));
    let second = json_of(&o);
    assert_eq!(second["uploaded"], 0, "{second:#}");
    assert_eq!(second["unchanged"], 5, "{second:#}");
    let client = server.client(&s);
    let docs = client.host().list_documents("docs", None, 100).unwrap();
    assert_eq!(docs.documents.len(), 5);
    let stored: u64 = docs.documents.iter().map(|d| d.chunks as u64).sum();
    assert_eq!(stored, chunks);

    // The PDF's text is searchable.
    let mut args = common("search");
    args.extend(["--json".into(), "Lisbon office revenue growth".into()]);
    let o = run(args);
    assert!(o.status.success(), "{}", stderr(&o));
    let hits = json_of(&o);
    assert!(
        hits["hits"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("q3.pdf"),
        "{hits:#}"
    );
    assert!(hits["hits"][0]["text"]
        .as_str()
        .unwrap()
        .contains("twelve percent"));

    // The answer's top source is the one file that holds the answer.
    let mut args = common("ask");
    args.extend([
        "--json".into(),
        "--max-tokens".into(),
        "24".into(),
        "How often must the Zorbex valve on tower B be inspected?".into(),
    ]);
    let o = run(args);
    assert!(o.status.success(), "{}", stderr(&o));
    let answer = json_of(&o);
    assert!(
        answer["sources"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("maintenance.txt"),
        "{answer:#}"
    );
    assert!(!answer["answer"].as_str().unwrap().is_empty(), "{answer:#}");
    assert!(answer["generated_tokens"].as_u64().unwrap() > 0);

    // Another key: a clear error before anything is sent.
    let other = s.dir.path().join("other.eekey");
    assert!(eerag(&["keygen", "--out", path(&other)]).status.success());
    let mut args = common("upload");
    args[4] = path(&other).into();
    args.push(path(&folder).into());
    let o = run(args);
    assert_clean_failure(&o, "key");
    assert_eq!(
        client
            .host()
            .list_documents("docs", None, 100)
            .unwrap()
            .documents
            .len(),
        5
    );

    // No host there: one line that says so.
    let mut args = common("search");
    args[2] = "http://127.0.0.1:9".into();
    args.push("anything".into());
    let o = run(args);
    assert_clean_failure(&o, "cannot reach the host");

    // A missing collection is named.
    let mut args = common("ask");
    args[8] = "nope".into();
    args.push("anything?".into());
    let o = run(args);
    assert_clean_failure(&o, "no collection \"nope\"");
    server.stop();
}
