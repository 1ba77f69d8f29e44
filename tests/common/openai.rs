//! Plain HTTP to the OpenAI-compatible API, as any OpenAI client speaks it.

#![allow(dead_code)]

use serde_json::{json, Value};

use super::fixtures::fixtures;
use super::server::TestServer;

/// An HTTP client (rustls on ring, the crypto the server's TLS uses too).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A `data:` URI of `bytes` as `mime`.
pub fn data_uri(mime: &str, bytes: &[u8]) -> String {
    use base64::Engine;
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A chat request for `model` captioning the shapes fixture, with `extra` fields on top.
pub fn caption_body(model: &str, extra: Value) -> Value {
    let png = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri("image/png", &png)}}]}],
    });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// Posts `body` to `/v1/chat/completions` with `headers`: (status, response headers, body as
/// JSON, or as a string when it is not JSON).
pub async fn post_chat(
    server: &TestServer,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = http()
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let (status, response_headers) = (response.status().as_u16(), response.headers().clone());
    let text = response.text().await.unwrap();
    (status, response_headers, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Decoding steps model `tiny` has run, from a `/metrics` text.
fn decode_steps(text: &str) -> f64 {
    super::probe::value(text, r#"gitcap_decode_batch_size_count{model="tiny",version="local"}"#).unwrap_or(0.0)
}

/// Opens a streamed `path` call with `body` on `server` (model `tiny`), reads its first chunk
/// (which must hold `first`), then closes the stream, as a client that goes away does. Checks
/// the call is counted CANCELLED under `rpc` and returns the decoding steps the model ran from
/// before the call until it went idle.
pub async fn decode_steps_after_leaving_a_stream(
    server: &TestServer,
    path: &str,
    body: &Value,
    first: &str,
    rpc: &str,
) -> f64 {
    use super::probe;
    let before = decode_steps(&probe::scrape_until(&server.addr, |_| true));
    let mut response = http()
        .post(format!("{}{path}", server.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let chunk = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains(first), "{chunk:?}");
    drop(response);
    let cancelled = format!(
        r#"gitcap_requests_total{{model="tiny",version="local",protocol="openai",rpc="{rpc}",code="CANCELLED"}}"#
    );
    let text = probe::scrape_until(&server.addr, |t| probe::value(t, &cancelled).is_some());
    assert_eq!(probe::value(&text, &cancelled), Some(1.0), "the closed stream is counted as CANCELLED: {text}");
    // The model goes idle (nothing running, nothing queued).
    let idle = probe::wait_for_idle(&server.addr, "tiny", std::time::Duration::from_secs(60)).await;
    decode_steps(&idle) - before
}
