//! The OpenAI-compatible API against a real server, through the official `openai` Python SDK
//! (pinned, tests/openai/requirements.txt) as a chat UI would use it: captions whole and
//! streamed, a follow-up question (a feature-cache hit), a video, sampling with several choices
//! and logprobs, gitcap's own options as extra fields, mistakes, a wrong token. Every answer must
//! be the gRPC API's for the same input and options.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use common::fixtures::fixtures;
use common::openai::{data_uri, decode_steps_after_leaving_a_stream, post_chat};
use common::probe::{self, value};
use common::python::{self, describe};
use common::server::TestServer;
use common::tools::{self, Tool};
use common::videos::Videos;
use gitcap_client::{CaptionOptions, ClientConfig, GenerationOptions, GitcapClient, Media};

const TOKEN: &str = "infer-secret";

async fn grpc(client: &GitcapClient, media: Media, options: CaptionOptions) -> String {
    client.caption(media, &options).await.unwrap().text
}

#[tokio::test]
async fn the_openai_sdk_gets_what_grpc_answers() {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai/requirements.txt");
    let Some(python) = python::venv("openai-venv", &requirements, "openai_sdk") else { return };
    if tools::require(Tool::Ffmpeg, "openai_sdk").is_none() {
        return;
    }
    let videos = Videos::new();
    let video = videos.h264_mp4("clip.mp4", "64x48", 25, 2.0);
    let image = fixtures().join("media/shapes.png");
    let server = TestServer::start_with_env("tiny-git-video", &[], &[("GITCAP__AUTH__INFERENCE_TOKEN", TOKEN)]);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai/chat.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(format!("{}/v1", server.url()))
        .arg(TOKEN)
        .arg(&image)
        .arg(&video)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe("tests/openai/chat.py", &output));
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();

    let client = GitcapClient::connect(ClientConfig::new(server.url()).token(TOKEN)).await.unwrap();
    let bytes = std::fs::read(&image).unwrap();
    let caption = grpc(&client, Media::image(bytes.clone()), CaptionOptions::default().max_new_tokens(8)).await;
    assert_eq!(got["caption"], caption.as_str(), "{got}");
    assert_eq!(got["caption_usage"].as_u64(), Some(8));
    assert_eq!(got["caption_finish"], "length");
    let deltas: String = got["stream_deltas"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(deltas, caption, "the streamed deltas add up to the whole answer");
    assert!(got["stream_deltas"].as_array().unwrap().len() > 1, "{got}");
    assert_eq!((got["stream_finish"].as_str(), got["stream_usage"].as_u64()), (Some("length"), Some(8)));

    // The first caption computed the image's tokens; the follow-up found them in the feature
    // cache, and its usage says so as OpenAI's SDK reads it (prompt_tokens_details.cached_tokens).
    assert_eq!(got["caption_cached"].as_u64(), Some(0), "{got}");
    let cached = got["follow_up_cached"].as_u64().unwrap();
    assert!(cached > 0 && cached < got["follow_up_prompt"].as_u64().unwrap(), "{got}");
    let question = CaptionOptions::default().question("what is in the picture?").max_new_tokens(6);
    assert_eq!(got["follow_up"], grpc(&client, Media::image(bytes.clone()), question).await.as_str());
    let video = Media::video(std::fs::read(&video).unwrap());
    assert_eq!(got["video"], grpc(&client, video, CaptionOptions::default().max_new_tokens(8)).await.as_str());
    let beams = CaptionOptions::default().max_new_tokens(8).num_beams(3);
    assert_eq!(got["beams"], grpc(&client, Media::image(bytes.clone()), beams).await.as_str());

    // n = 2 with seed 7: the choices are seeds 7 and 8.
    for (i, seed) in [7u64, 8].into_iter().enumerate() {
        let options = CaptionOptions {
            generation: GenerationOptions {
                max_new_tokens: Some(5),
                do_sample: Some(true),
                temperature: Some(1.2),
                seed: Some(seed),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(got["sampled"][i], grpc(&client, Media::image(bytes.clone()), options).await.as_str(), "choice {i}");
        let tokens = got["logprobs"][i].as_array().unwrap();
        assert_eq!(tokens.len(), 5, "{got}");
        assert!(tokens.iter().all(|t| t[1].as_f64().unwrap() <= 0.0 && t[2] == 2), "{got}");
    }

    let errors = &got["errors"];
    let expect = |name: &str, class: &str, status: u64, param: Option<&str>| {
        let e = &errors[name];
        assert_eq!((e["class"].as_str(), e["status"].as_u64()), (Some(class), Some(status)), "{name}: {e}");
        if let Some(param) = param {
            assert_eq!(e["param"].as_str(), Some(param), "{name}: {e}");
        }
    };
    expect("unsupported", "BadRequestError", 400, Some("frequency_penalty"));
    expect("no_media", "BadRequestError", 400, Some("messages"));
    expect("unknown_model", "NotFoundError", 404, None);
    expect("bad_option", "BadRequestError", 400, Some("top_p"));
    expect("wrong_token", "AuthenticationError", 401, None);
    let models: Vec<&str> = got["models"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
    assert_eq!(models, ["default", "tiny", "tiny@local"]);

    // The follow-up found the image's keys and values in the feature cache, and the metrics say
    // which protocol asked.
    let text = probe::scrape_until(&server.addr, |_| true);
    let prefix_hits = value(&text, r#"gitcap_feature_cache_hits_total{model="tiny",version="local",kind="prefix"}"#);
    assert!(prefix_hits.is_some_and(|hits| hits >= 1.0), "{prefix_hits:?}");
    let ok = r#"gitcap_requests_total{model="tiny",version="local",protocol="openai",rpc="ChatCompletions",code="OK"}"#;
    assert_eq!(value(&text, ok), Some(6.0), "the six calls that succeeded");
}

/// Plain HTTP, as any OpenAI client would speak it: (status, body).
async fn post(server: &TestServer, body: Value) -> (u16, Value) {
    let (status, _, body) = post_chat(server, &[], &body).await;
    (status, body)
}

fn image_message() -> Value {
    let bytes = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    serde_json::json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri("image/png", &bytes)}}]}])
}

/// The text of each `data:` event of an SSE body, `[DONE]` included.
fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).map(str::to_string).collect()
}

#[tokio::test]
async fn stop_sequences_temperature_zero_and_gitcaps_own_options() {
    let server = TestServer::start("tiny-git-image", &[]);
    let (status, whole) =
        post(&server, serde_json::json!({"model": "tiny", "messages": image_message(), "max_tokens": 10})).await;
    assert_eq!(status, 200, "{whole}");
    let caption = whole["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    // temperature 0 is greedy: the checkpoint's default for GIT.
    let (_, greedy) = post(
        &server,
        serde_json::json!({"model": "tiny", "messages": image_message(), "max_tokens": 10, "temperature": 0}),
    )
    .await;
    assert_eq!(greedy["choices"][0]["message"]["content"], caption.as_str());

    // A stop sequence ends the answer before it, whole or streamed.
    let word = caption.split(' ').nth(1).expect("a caption of two words or more");
    let stop = format!(" {word}");
    let before = &caption[..caption.find(&stop).unwrap()];
    let request = serde_json::json!({"model": "tiny", "messages": image_message(), "max_tokens": 10, "stop": [stop]});
    let (_, stopped) = post(&server, request.clone()).await;
    assert_eq!(stopped["choices"][0]["message"]["content"], before, "{stopped}");
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let mut streamed = request;
    streamed["stream"] = true.into();
    let (status, body) = post(&server, streamed).await;
    assert_eq!(status, 200);
    let events = sse_events(body.as_str().unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, before);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");

    // Every generation option of the protocol is read from the extra fields: a wrong value of
    // each is refused naming it (an option that were ignored would pass silently).
    let fields = gitcap_protocol::descriptor::message_fields("GenerationOptions").unwrap();
    for field in fields.iter().filter(|f| !f.deprecated) {
        let name = if field.name == "early_stopping_mode" { "early_stopping" } else { field.name.as_str() };
        let mut request = serde_json::json!({"model": "tiny", "messages": image_message()});
        request[name] = "not-a-value".into();
        let (status, error) = post(&server, request).await;
        assert_eq!(status, 400, "{name}: {error}");
        assert_eq!(error["error"]["param"], name, "{error}");
    }
    // `service_tier: "flex"` runs at batch priority and says so; an unknown tier is refused.
    let (status, flex) = post(
        &server,
        serde_json::json!({"model": "tiny", "messages": image_message(), "max_tokens": 10, "service_tier": "flex"}),
    )
    .await;
    assert_eq!(status, 200, "{flex}");
    assert_eq!(flex["service_tier"], "flex");
    assert_eq!(flex["choices"][0]["message"]["content"], caption.as_str(), "batch priority, same answer");
    assert_eq!(whole["service_tier"], "default");
    let text = probe::scrape_until(&server.addr, |t| probe::finished_at_priority(t, "batch") >= 1.0);
    assert_eq!(probe::finished_at_priority(&text, "batch"), 1.0, "{text}");
    let (status, error) =
        post(&server, serde_json::json!({"model": "tiny", "messages": image_message(), "service_tier": "urgent"}))
            .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["param"], "service_tier", "{error}");
    // An unknown field is ignored, as OpenAI clients expect.
    let (status, _) =
        post(&server, serde_json::json!({"model": "tiny", "messages": image_message(), "user": "u1"})).await;
    assert_eq!(status, 200);
}

// Several threads: the connection task that closes the socket when the response is dropped
// must run while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_the_stream_stops_the_generation() {
    // Eight choices of 60 tokens, each an 8-beam search (which sends its tokens at its end), one
    // at a time: 8 × 60 decoding steps if nothing stops them. A client that leaves after the
    // first chunk (the role, sent before any token) leaves at most the choice then running to
    // finish.
    let server = TestServer::start_with_env("tiny-git-wide", &[], &[("GITCAP__ENGINE__MAX_BATCH_SIZE", "8")]);
    let request = serde_json::json!({
        "model": "tiny", "messages": image_message(), "stream": true, "n": 8,
        "max_tokens": 60, "min_new_tokens": 60, "num_beams": 8,
    });
    let steps = decode_steps_after_leaving_a_stream(
        &server,
        "/v1/chat/completions",
        &request,
        "chat.completion.chunk",
        "ChatCompletions",
    )
    .await;
    assert!(steps < 4.0 * 60.0, "{steps} decoding steps after the client left: the choices kept generating");
}

/// The error object of an OpenAI answer: (type, code).
fn error_kind(body: &Value) -> (Option<&str>, Option<&str>) {
    (body["error"]["type"].as_str(), body["error"]["code"].as_str())
}

#[tokio::test]
async fn a_body_over_twice_max_message_bytes_is_413() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__SERVER__MAX_MESSAGE_BYTES", "1048576")]);
    let mut request = serde_json::json!({"model": "tiny", "messages": image_message(), "max_tokens": 4});
    request["messages"][0]["content"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "text", "text": "x".repeat(2 << 20)}));
    assert!(request.to_string().len() > 2 << 20);
    let (status, error) = post(&server, request).await;
    assert_eq!(status, 413, "{error}");
    assert_eq!(error_kind(&error), (Some("invalid_request_error"), Some("request_too_large")), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("server.max_message_bytes"), "{error}");
    // A body within the limit is answered, and the server is still up.
    let (status, _) =
        post(&server, serde_json::json!({"model": "tiny", "messages": image_message(), "max_tokens": 4})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_full_queue_is_429() {
    // One request running (a 32-beam search fills the batch by itself) and one waiting fill a
    // queue of 1.
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__MODEL__QUEUE_CAPACITY", "1")]);
    let channel = server.channel().await;
    let image = std::fs::read(fixtures().join("media/shapes.png")).unwrap();
    let hold = || {
        let mut client = gitcap_client::proto::captioner_client::CaptionerClient::new(channel.clone());
        let request = probe::long_request(image.clone());
        tokio::spawn(async move { client.caption(request).await.map(|_| ()) })
    };
    let running = hold();
    probe::wait_for_engine(&server.addr, "tiny", 1.0, 0.0).await;
    let waiting = hold();
    probe::wait_for_engine(&server.addr, "tiny", 1.0, 1.0).await;
    let (status, error) =
        post(&server, serde_json::json!({"model": "tiny", "messages": image_message(), "max_tokens": 4})).await;
    assert_eq!(status, 429, "{error}");
    assert_eq!(error_kind(&error).0, Some("rate_limit_error"), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("retry"), "{error}");
    // The held requests are served, and then so is this one.
    running.await.unwrap().expect("the running request");
    waiting.await.unwrap().expect("the waiting request");
    let (status, _) =
        post(&server, serde_json::json!({"model": "tiny", "messages": image_message(), "max_tokens": 4})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_model_that_cannot_serve_is_503() {
    // Replace mode unloads the alias's version first; a replacement that fails to load leaves the
    // alias without a version able to serve (UNAVAILABLE on gRPC), not unknown.
    use gitcap_client::proto::{admin_client::AdminClient, ModelSpec, SwapRequest};
    let roots = tempfile::tempdir().unwrap();
    let broken = roots.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    for file in ["config.json", "preprocessor_config.json", "tokenizer.json"] {
        std::fs::copy(common::fixtures::model_dir("tiny-git-image").join(file), broken.join(file)).unwrap();
    }
    std::fs::write(broken.join("model.safetensors"), b"corrupt").unwrap();
    let server = TestServer::start_with_env(
        "tiny-git-image",
        &[],
        &[
            ("GITCAP__AUTH__ADMIN_TOKEN", "admin-secret"),
            ("GITCAP__ADMIN__MODEL_ROOTS", roots.path().to_str().unwrap()),
        ],
    );
    let (status, _) =
        post(&server, serde_json::json!({"model": "tiny", "messages": image_message(), "max_tokens": 4})).await;
    assert_eq!(status, 200, "served before the swap");
    let spec = ModelSpec { name: "tiny".into(), source: broken.display().to_string(), ..Default::default() };
    let mut swap = tonic::Request::new(SwapRequest {
        alias: "tiny".into(),
        spec: Some(spec),
        replace: true,
        ..Default::default()
    });
    swap.metadata_mut().insert("authorization", "Bearer admin-secret".parse().unwrap());
    AdminClient::new(server.channel().await).swap(swap).await.expect_err("a corrupt checkpoint does not load");
    let (status, error) =
        post(&server, serde_json::json!({"model": "tiny", "messages": image_message(), "max_tokens": 4})).await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(error_kind(&error).0, Some("server_error"), "{error}");
    let grpc = server
        .client(None)
        .await
        .caption(
            gitcap_client::Media::image(std::fs::read(fixtures().join("media/shapes.png")).unwrap()),
            &CaptionOptions::default().model("tiny"),
        )
        .await
        .unwrap_err();
    assert_eq!(grpc.code(), Some(tonic::Code::Unavailable), "{grpc}");
}
