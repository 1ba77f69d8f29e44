//! What every door shares, through every door: a caller's deadline and its route key work the
//! same over gRPC and over the OpenAI-compatible API (one request core under both), an image
//! sent again through either door comes from the one image cache, and no timeout a caller sends,
//! however large or malformed, can leak a place in a model's queue.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tonic::Request;

use common::fixtures::{fixtures, model_dir};
use common::openai::{caption_body, post_chat};
use common::probe::{gauge, http_get, long_request};
use common::server::TestServer;
use gitcap_client::proto::captioner_client::CaptionerClient;
use gitcap_client::proto::{media::Kind, CaptionRequest, GenerationOptions, Media};
use gitcap_client::{ClientConfig, GitcapClient, ModelSpec};

const ADMIN: &str = "doors-admin";
const ROUTE_KEY: &str = "x-gitcap-route-key";
const VERSION: &str = "x-gitcap-model-version";

fn image() -> Vec<u8> {
    std::fs::read(fixtures().join("media/shapes.png")).unwrap()
}

fn caption_request(max_new_tokens: u32) -> CaptionRequest {
    CaptionRequest {
        model: "tiny".into(),
        media: Some(Media { kind: Some(Kind::Image(image())), ..Default::default() }),
        options: Some(GenerationOptions { max_new_tokens: Some(max_new_tokens), ..Default::default() }),
        ..Default::default()
    }
}

fn chat_body(extra: Value) -> Value {
    let mut extra = extra;
    extra.as_object_mut().unwrap().entry("max_tokens").or_insert(4.into());
    caption_body("tiny", extra)
}

/// Posts a chat completion with `headers`: (status, the answering version, body).
async fn chat(server: &TestServer, headers: &[(&str, &str)], body: Value) -> (u16, Option<String>, Value) {
    let (status, response_headers, body) = post_chat(server, headers, &body).await;
    let version = response_headers.get(VERSION).map(|v| v.to_str().unwrap().to_string());
    (status, version, body)
}

/// A server whose `tiny` alias is split 50/50 between two versions.
async fn split_server() -> TestServer {
    let server = TestServer::start_with_env(
        "tiny-git-image",
        &[],
        &[("GITCAP__AUTH__ADMIN_TOKEN", ADMIN), ("GITCAP__ADMIN__MODEL_ROOTS", model_dir("").to_str().unwrap())],
    );
    let admin = GitcapClient::connect(ClientConfig::new(server.url()).admin_token(ADMIN)).await.unwrap();
    let wide = model_dir("tiny-git-wide");
    admin.load_model(ModelSpec::new("tiny", wide.to_str().unwrap()).version("v2")).await.unwrap();
    admin.set_alias_split("tiny", [("tiny@local", 50), ("tiny@v2", 50)]).await.unwrap();
    server
}

#[tokio::test]
async fn a_route_key_reaches_the_same_version_through_every_door() {
    let server = split_server().await;
    let channel = server.channel().await;
    let keys: Vec<String> = (0..24).map(|i| format!("caller-{i}")).collect();
    let mut by_grpc = Vec::new();
    for key in &keys {
        let mut answered = Vec::new();
        for _ in 0..2 {
            let mut request = Request::new(caption_request(2));
            request.metadata_mut().insert(ROUTE_KEY, key.parse().unwrap());
            answered.push(CaptionerClient::new(channel.clone()).caption(request).await.unwrap().into_inner().version);
        }
        assert_eq!(answered[0], answered[1], "gRPC: key {key} moved between versions");
        by_grpc.push(answered.remove(0));
    }
    assert!(by_grpc.iter().any(|v| v == "v2") && by_grpc.iter().any(|v| v == "local"), "{by_grpc:?}");
    // The Rust client's route key is the same metadata.
    for (key, version) in keys.iter().zip(&by_grpc).take(8) {
        let client = GitcapClient::connect(ClientConfig::new(server.url()).route_key(key)).await.unwrap();
        let png = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
        let options = gitcap_client::CaptionOptions::default().model("tiny").max_new_tokens(2);
        let answer = client.caption(gitcap_client::Media::image(png), &options).await.unwrap();
        assert_eq!(&answer.version, version, "the Rust client with route key {key}");
    }

    for (key, version) in keys.iter().zip(&by_grpc) {
        // The header, as over gRPC; and OpenAI's `user` field when no header is given.
        let (status, header, body) = chat(&server, &[(ROUTE_KEY, key)], chat_body(json!({}))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(header.as_deref(), Some(version.as_str()), "OpenAI with the header: key {key}");
        let (status, header, body) = chat(&server, &[], chat_body(json!({"user": key}))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(header.as_deref(), Some(version.as_str()), "OpenAI with `user`: key {key}");
        // The header wins over `user`.
        let (_, header, _) = chat(&server, &[(ROUTE_KEY, key)], chat_body(json!({"user": "someone-else"}))).await;
        assert_eq!(header.as_deref(), Some(version.as_str()), "OpenAI, header and another user: key {key}");
    }
}

#[tokio::test]
async fn a_deadline_expires_the_same_way_through_every_door() {
    let server = TestServer::start("tiny-git-image", &[]);
    // gRPC: a 300 ms timeout on a request that needs seconds. `grpc-timeout` would have the
    // client give up at the same moment as the server; the HTTP header, which every door reads
    // too, lets the test see the server's own answer.
    let mut client = CaptionerClient::new(server.channel().await);
    let mut request = Request::new(CaptionRequest { model: "tiny".into(), ..long_request(image()) });
    request.metadata_mut().insert("x-gitcap-timeout-ms", "300".parse().unwrap());
    let started = Instant::now();
    let status = client.caption(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());

    // OpenAI: the same through `x-gitcap-timeout-ms`, as OpenAI's 504.
    let long = json!({"max_tokens": 60, "min_new_tokens": 60, "num_beams": 32});
    let started = Instant::now();
    let (status, _, body) = chat(&server, &[("x-gitcap-timeout-ms", "300")], chat_body(long.clone())).await;
    assert_eq!(status, 504, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("deadline"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // A malformed timeout is refused by name, not ignored.
    let (status, _, body) = chat(&server, &[("x-gitcap-timeout-ms", "soon")], chat_body(json!({}))).await;
    assert_eq!((status, body["error"]["param"].as_str()), (400, Some("x-gitcap-timeout-ms")), "{body}");
    // Neither request is left running or queued.
    wait_until_idle(&server.addr).await;
}

/// A gRPC channel that sends every call with a raw `grpc-timeout` header (tonic's own client
/// only sends well-formed ones).
fn with_grpc_timeout(
    channel: tonic::transport::Channel,
    value: &'static str,
) -> CaptionerClient<
    tower::util::MapRequest<
        tonic::transport::Channel,
        impl Fn(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone,
    >,
> {
    let raw = move |mut request: http::Request<tonic::body::Body>| {
        request.headers_mut().insert("grpc-timeout", http::HeaderValue::from_static(value));
        request
    };
    CaptionerClient::new(tower::ServiceBuilder::new().map_request(raw).service(channel))
}

#[tokio::test]
async fn no_timeout_a_caller_sends_can_wedge_the_queue() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__MODEL__QUEUE_CAPACITY", "2")]);
    let channel = server.channel().await;
    // Past what the specification allows (8 digits): refused by name, each time, and never
    // holding a place in the queue afterwards.
    for value in ["18446744073709551615S", "999999999999H", "5"] {
        let mut client = with_grpc_timeout(channel.clone(), value);
        for _ in 0..4 {
            let status = client.caption(caption_request(2)).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{value}: {status:?}");
            assert!(status.message().contains("grpc-timeout"), "{value}: {status:?}");
        }
    }
    // The largest legal timeout (eight digits of hours, 11,000 years) is clamped to
    // limits.max_timeout_secs and the calls are answered.
    let mut client = with_grpc_timeout(channel.clone(), "99999999H");
    for _ in 0..4 {
        client.caption(caption_request(2)).await.expect("a caption under the largest legal timeout");
    }
    // Every place is free: as many concurrent calls as the queue holds are all answered, and the
    // gauge reads what waits.
    let calls = (0..2).map(|_| {
        let mut client = CaptionerClient::new(channel.clone());
        async move { client.caption(caption_request(2)).await }
    });
    for answer in futures::stream::iter(calls).buffer_unordered(2).collect::<Vec<_>>().await {
        answer.expect("a caption after the hostile calls");
    }
    wait_until_idle(&server.addr).await;
}

#[tokio::test]
async fn an_image_sent_again_through_any_door_is_not_decoded_again() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[]);
    let mut grpc = CaptionerClient::new(server.channel().await);
    grpc.caption(caption_request(2)).await.expect("a gRPC caption");
    // The same PNG as a data: URI in a chat message (a chat client resending it), twice.
    for _ in 0..2 {
        let (status, _, body) = chat(&server, &[], chat_body(json!({}))).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() > Some(0), "{body}");
    }
    let addr = server.addr.clone();
    let text = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics").2).await.unwrap();
    let value = |name: &str| common::probe::value(&text, name);
    assert_eq!(value("gitcap_image_cache_misses_total"), Some(1.0), "decoded once, by the first door: {text}");
    assert_eq!(value("gitcap_image_cache_hits_total"), Some(2.0), "{text}");
}

/// Waits (30 s at most) until the model `tiny` has nothing running and nothing queued.
async fn wait_until_idle(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owned = addr.to_string();
        let text = tokio::task::spawn_blocking(move || http_get(&owned, "/metrics").2).await.unwrap();
        let (running, queued) =
            (gauge(&text, "gitcap_running_requests", "tiny"), gauge(&text, "gitcap_queue_depth", "tiny"));
        if running == 0.0 && queued == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "still {running} running and {queued} queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
