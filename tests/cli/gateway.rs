//! `eerag gateway` driven by the unmodified `openai` Python package: an
//! existing app changes only its base URL and gets the encrypted pipeline's
//! answers and the plaintext model's embeddings.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use eerag_client::client::AskOptions;
use eerag_core::models::encoder::Encoder;
use serde_json::Value;

use crate::serve::{setup, Server};
use crate::{eerag, path, stderr};

/// The OpenAI client library the test drives the gateway with.
const OPENAI_PACKAGE: &str = "openai==3.57.0";

/// Installs the `openai` package into a folder under the build's temp dir
/// (once) and returns that folder, for `PYTHONPATH`.
fn openai_package() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-py");
    if dir.join("openai").is_dir() {
        return dir;
    }
    let o = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&dir)
        .arg(OPENAI_PACKAGE)
        .output()
        .expect("python3 runs");
    assert!(
        o.status.success(),
        "installing {OPENAI_PACKAGE}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    dir
}

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const SCRIPT: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="not-needed")
question = sys.argv[2]
models = [m.id for m in client.models.list()]
whole = client.chat.completions.create(
    model=models[0], max_tokens=24,
    messages=[{"role": "user", "content": question}])
streamed = ""
finish = None
for chunk in client.chat.completions.create(
        model=models[0], max_tokens=24, stream=True,
        messages=[{"role": "user", "content": question}]):
    if chunk.choices:
        streamed += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
texts = ["vaccine refrigerator temperature", "legal fees"]
floats = client.embeddings.create(model=models[1], input=texts, encoding_format="float")
default = client.embeddings.create(model=models[1], input=texts)
usage = None
for chunk in client.chat.completions.create(
        model=models[0], max_tokens=4, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": question}]):
    usage = chunk.usage or usage
try:
    client.chat.completions.create(model=models[0], messages=[])
    refused = None
except openai.BadRequestError as e:
    refused = e.status_code
print(json.dumps({
    "models": models,
    "whole": whole.choices[0].message.content,
    "whole_finish": whole.choices[0].finish_reason,
    "usage": whole.usage.completion_tokens,
    "streamed": streamed,
    "stream_finish": finish,
    "floats": [d.embedding for d in floats.data],
    "default": [d.embedding for d in default.data],
    "refused": refused,
    "stream_usage": usage.completion_tokens if usage else None,
}))
"#;

#[test]
fn an_unmodified_openai_client_talks_to_the_gateway() {
    let package = openai_package();
    let s = setup();
    let server = Server::start(
        &s.artifacts,
        &s.dir.path().join("data"),
        &s.dir.path().join("logs"),
        "info",
    );
    let key = s.dir.path().join("client.eekey");
    let models = s.models.root().to_path_buf();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/sample");
    let o = eerag(&[
        "upload",
        "--server",
        &server.url,
        "--key",
        path(&key),
        "--models",
        path(&models),
        "--collection",
        "handbook",
        path(&sample),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let port = free_port();
    let log = s.dir.path().join("gateway.log");
    let gateway = Gateway(
        Command::new(env!("CARGO_BIN_EXE_eerag"))
            .args([
                "gateway",
                "--server",
                &server.url,
                "--key",
                path(&key),
                "--models",
                path(&models),
                "--collection",
                "handbook",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(s.dir.path().join("gateway.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}/v1");
    let started = Instant::now();
    while reqwest::blocking::get(format!("{base}/models")).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the gateway did not start: {}",
            std::fs::read_to_string(s.dir.path().join("gateway.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let question = "Between which temperatures must vaccines be kept?";
    let o = Command::new("python3")
        .args(["-c", SCRIPT, &base, question])
        .env("PYTHONPATH", &package)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the openai client failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got: Value = serde_json::from_slice(&o.stdout).unwrap();

    // Chat: the same answer whole and streamed, and the same as eerag's own
    // client gives for the same question and options.
    let whole = got["whole"].as_str().unwrap();
    assert!(!whole.is_empty());
    assert_eq!(got["streamed"].as_str().unwrap().trim(), whole, "{got:#}");
    assert_eq!(got["whole_finish"], got["stream_finish"]);
    let client = server.client(&s);
    let direct = client
        .ask(
            "handbook",
            question,
            &AskOptions {
                max_tokens: 24,
                ..AskOptions::default()
            },
            |_| {},
        )
        .unwrap();
    assert_eq!(whole, direct.text.trim());
    assert_eq!(got["usage"].as_u64().unwrap() as usize, direct.ids.len());
    assert_eq!(got["refused"], 400);
    assert_eq!(got["stream_usage"], 4, "{got:#}");

    // A page that rebinds its own domain to 127.0.0.1 is turned away.
    let r = reqwest::blocking::Client::new()
        .get(format!("{base}/models"))
        .header("Host", "attacker.example")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // Embeddings: the public model's vectors, recovered through the key,
    // in both encodings.
    let encoder = Encoder::load(&s.models.encoder_dir(), &Device::Cpu).unwrap();
    let texts = ["vaccine refrigerator temperature", "legal fees"];
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| client.encoder_tokenizer().encode(t).unwrap())
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let plain = encoder.embed(&refs, 2).unwrap();
    for encoding in ["floats", "default"] {
        let vectors = got[encoding].as_array().unwrap();
        assert_eq!(vectors.len(), 2);
        for (v, p) in vectors.iter().zip(&plain) {
            let v: Vec<f32> = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(v.len(), p.len());
            let err = v
                .iter()
                .zip(p)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-5, "{encoding}: max error {err}");
        }
    }
    drop(gateway);
    server.stop();
}
