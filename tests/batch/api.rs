//! The Files and Batches API over plain HTTP, for the batch tests: uploads (multipart, written
//! by hand as any client sends it), jobs, polling with a deadline.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::openai::{data_uri, http};
use super::common::server::TestServer;

pub struct Api<'a> {
    pub server: &'a TestServer,
    pub token: Option<&'a str>,
}

/// (status, body as JSON or as a string)
pub type Answer = (u16, Value);

impl<'a> Api<'a> {
    pub fn new(server: &'a TestServer) -> Self {
        Self { server, token: None }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = http().request(method, format!("{}{path}", self.server.url()));
        match self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn answer(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> Answer {
        Self::answer(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        Self::answer(self.request(reqwest::Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        let request = self.request(reqwest::Method::POST, path).header("content-type", "application/json");
        Self::answer(request.body(body.to_string())).await
    }

    /// `POST /v1/files` with `content` as the file and `purpose`.
    pub async fn upload_as(&self, purpose: &str, name: &str, content: &[u8]) -> Answer {
        let boundary = "gitcap-test-boundary-7d1b";
        let mut body = Vec::new();
        body.extend_from_slice(
            format!("--{boundary}\r\ncontent-disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n").as_bytes(),
        );
        body.extend_from_slice(
            format!(
                "--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 content-type: application/jsonl\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let request = self
            .request(reqwest::Method::POST, "/v1/files")
            .header("content-type", format!("multipart/form-data; boundary={boundary}"));
        Self::answer(request.body(body)).await
    }

    /// Uploads `lines` as a batch input file; its id.
    pub async fn upload(&self, lines: &[Value]) -> String {
        let (status, file) = self.upload_as("batch", "input.jsonl", jsonl(lines).as_bytes()).await;
        assert_eq!(status, 200, "{file}");
        file["id"].as_str().unwrap().to_string()
    }

    /// Creates a chat-completions job over `file`; the job's object.
    pub async fn create(&self, file: &str) -> Value {
        let body = json!({"input_file_id": file, "endpoint": "/v1/chat/completions", "completion_window": "24h"});
        let (status, batch) = self.post("/v1/batches", &body).await;
        assert_eq!(status, 200, "{batch}");
        batch
    }

    /// Polls job `id` until `done` holds of it, for at most `limit`.
    pub async fn wait_for(&self, id: &str, limit: Duration, mut done: impl FnMut(&Value) -> bool) -> Value {
        let until = Instant::now() + limit;
        loop {
            let (status, batch) = self.get(&format!("/v1/batches/{id}")).await;
            assert_eq!(status, 200, "{batch}");
            if done(&batch) {
                return batch;
            }
            assert!(Instant::now() < until, "the batch did not get there in {limit:?}: {batch}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls job `id` until it has ended (completed, failed, cancelled, expired).
    pub async fn wait_end(&self, id: &str, limit: Duration) -> Value {
        self.wait_for(id, limit, |b| {
            ["completed", "failed", "cancelled", "expired"].contains(&b["status"].as_str().unwrap())
        })
        .await
    }

    /// A file's content as JSON lines.
    pub async fn lines(&self, file: &Value) -> Vec<Value> {
        let Some(id) = file.as_str() else { return vec![] };
        let (status, content) = self.get(&format!("/v1/files/{id}/content")).await;
        assert_eq!(status, 200, "{content}");
        let text = match content {
            Value::String(text) => text,
            one => one.to_string(),
        };
        text.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

pub fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// A chat body captioning `image` (PNG bytes) with `model`, at most `tokens` tokens.
pub fn caption(model: &str, image: &[u8], tokens: u32) -> Value {
    json!({
        "model": model,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri("image/png", image)}}]}],
    })
}

/// A batch line: `custom_id` posting `body` to the chat endpoint.
pub fn line(custom_id: &str, body: Value) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
}

/// The answers of output lines by custom_id: (status code, text or error message).
pub fn by_custom_id(lines: &[Value]) -> std::collections::BTreeMap<String, Value> {
    lines.iter().map(|l| (l["custom_id"].as_str().unwrap_or("").to_string(), l.clone())).collect()
}
