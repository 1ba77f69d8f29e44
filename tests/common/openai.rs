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
