//! The OpenAI-compatible gateway as a library, started in process beside an
//! `eerag-host serve` process: its answers are the encrypted client's answers, its
//! embeddings the public model's, and it turns away what it must (another
//! address than loopback, a missing or wrong API key, a foreign Host).
//! `tests/cli/gateway.rs` drives the binary's gateway with the `openai`
//! package.

use std::net::TcpListener;
use std::thread::JoinHandle;

use eerag_client::client::{AskOptions, EncryptedClient};
use eerag_client::gateway::{self, Gateway, GatewayError, GatewayOptions};
use eerag_client::Key;
use eerag_remote::HostClient;
use eerag_tests::fixture;
use eerag_tests::host::{sample_documents, Host, HostOptions};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const API_KEY: &str = "gateway test token";

fn client(host: &Host, key: &Key) -> EncryptedClient {
    EncryptedClient::connect(
        HostClient::new(&host.url, None).unwrap(),
        key,
        &fixture().models,
    )
    .expect("client connects")
}

/// A gateway serving on a thread of its own; dropping it stops it.
struct Running {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), GatewayError>>>,
}

impl Running {
    fn start(gateway: Gateway) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            gateway::serve(listener, gateway, async {
                let _ = stopped.await;
            })
        });
        Self {
            base,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.thread.take() {
            let served = t.join().expect("the gateway thread panicked");
            if !std::thread::panicking() {
                served.expect("the gateway stopped cleanly");
            }
        }
    }
}

fn post(base: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut r = reqwest::blocking::Client::new()
        .post(format!("{base}{path}"))
        .json(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let response = r.send().expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn the_in_process_gateway_answers_as_the_encrypted_client_does() {
    let f = fixture();
    let host = Host::start(f.artifacts.dir(), HostOptions::default());
    let direct = client(&host, &f.key);
    direct.create_collection("handbook").unwrap();
    direct.upload("handbook", &sample_documents()).unwrap();

    let gateway_on = |collection: &str| {
        Gateway::new(
            client(&host, &f.key),
            GatewayOptions {
                collection: collection.into(),
                k: 3,
                api_key: Some(API_KEY.into()),
                max_tokens: 16,
            },
        )
    };
    // A collection the host does not have is refused before serving.
    assert!(
        matches!(gateway_on("nowhere"), Err(GatewayError::Client(_))),
        "a missing collection was accepted"
    );
    // So is any address but loopback.
    let anywhere = TcpListener::bind("0.0.0.0:0").unwrap();
    assert!(matches!(
        gateway::serve(anywhere, gateway_on("handbook").unwrap(), async {}),
        Err(GatewayError::NotLoopback(_))
    ));

    let running = Running::start(gateway_on("handbook").unwrap());
    let base = &running.base;
    let question = "Between which temperatures must vaccines be kept?";
    let chat = json!({
        "model": gateway::CHAT_MODEL,
        "max_tokens": 12,
        "messages": [{"role": "user", "content": question}],
    });

    // The API key: required, and only the right one.
    assert_eq!(post(base, "/chat/completions", None, &chat).0, 401);
    assert_eq!(post(base, "/chat/completions", Some("wrong"), &chat).0, 401);

    // Chat: the encrypted client's greedy answer, word for word, with the
    // token count it decoded.
    let (status, reply) = post(base, "/chat/completions", Some(API_KEY), &chat);
    assert_eq!(status, 200, "{reply:#}");
    let expected = direct
        .ask(
            "handbook",
            question,
            &AskOptions {
                max_tokens: 12,
                ..AskOptions::default()
            },
            |_| {},
        )
        .unwrap();
    assert_eq!(
        reply["choices"][0]["message"]["content"].as_str().unwrap(),
        expected.text.trim()
    );
    assert_eq!(
        reply["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        expected.ids.len(),
        "{reply:#}"
    );

    // Embeddings: the public model's vectors, recovered through the key.
    let texts = ["vaccine refrigerator temperature", "legal fees"];
    let (status, reply) = post(
        base,
        "/embeddings",
        Some(API_KEY),
        &json!({"model": gateway::EMBEDDING_MODEL, "input": texts, "encoding_format": "float"}),
    );
    assert_eq!(status, 200, "{reply:#}");
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| f.sides.encoder_tokenizer.encode(t).unwrap())
        .collect();
    let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let plain = f.sides.plain_encoder.embed(&refs, 2).unwrap();
    let data = reply["data"].as_array().unwrap();
    assert_eq!(data.len(), plain.len());
    for (d, p) in data.iter().zip(&plain) {
        let v: Vec<f32> = serde_json::from_value(d["embedding"].clone()).unwrap();
        let err = v
            .iter()
            .zip(p)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-5, "max error {err}");
    }

    // Bad input: a clear 400, and the gateway goes on serving.
    let (status, reply) = post(
        base,
        "/chat/completions",
        Some(API_KEY),
        &json!({"model": gateway::CHAT_MODEL, "messages": []}),
    );
    assert_eq!(status, 400, "{reply:#}");
    let models = reqwest::blocking::Client::new()
        .get(format!("{base}/models"))
        .bearer_auth(API_KEY)
        .header("Host", "attacker.example")
        .send()
        .unwrap();
    assert_eq!(models.status().as_u16(), 403);
    let models: Value = reqwest::blocking::Client::new()
        .get(format!("{base}/models"))
        .bearer_auth(API_KEY)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 2, "{models:#}");
    drop(running);
}
