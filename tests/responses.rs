//! `/v1/responses` over plain HTTP, as any Responses client speaks it: the Response object's
//! shape, the streamed events, options, videos, mistakes answered by name, the bounds on stored
//! responses, and a client that closes its stream stopping the generation.

mod common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::fixtures::{cases, fixtures};
use common::openai::{data_uri, decode_steps_after_leaving_a_stream, http};
use common::probe;
use common::server::TestServer;
use common::tools::{self, Tool};
use common::videos::Videos;
use gitcap_client::{CaptionOptions, Media};

fn golden(name: &str) -> String {
    cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no golden case {name}")).text
}

fn image_part(file: &str) -> Value {
    let bytes = std::fs::read(fixtures().join("media").join(file)).unwrap();
    let mime = if file.ends_with(".png") { "image/png" } else { "image/jpeg" };
    json!({"type": "input_image", "image_url": data_uri(mime, &bytes)})
}

/// A request for model `tiny` about `parts`, with `extra` fields on top.
fn ask(parts: Vec<Value>, extra: Value) -> Value {
    let mut body = json!({"model": "tiny", "input": [{"role": "user", "content": parts}]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body
}

/// (status, body as JSON, or as a string when it is not JSON).
async fn post(server: &TestServer, body: &Value) -> (u16, Value) {
    let response = http()
        .post(format!("{}/v1/responses", server.url()))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn get(server: &TestServer, id: &str) -> (u16, Value) {
    let response = http().get(format!("{}/v1/responses/{id}", server.url())).send().await.unwrap();
    (response.status().as_u16(), serde_json::from_str(&response.text().await.unwrap()).unwrap())
}

/// The text of a Response object's one message.
fn text(response: &Value) -> &str {
    response["output"][0]["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no output text: {response}"))
}

/// The events of an SSE body: (event name, its JSON).
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let name = event.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_string();
            let data = event.lines().find_map(|l| l.strip_prefix("data: ")).expect("a data line");
            (name, serde_json::from_str(data).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_response_has_openais_shape_whole_and_streamed() {
    let server = TestServer::start("tiny-git-image", &[]);
    let (status, whole) = post(&server, &ask(vec![image_part("photo.jpg")], json!({"max_output_tokens": 12}))).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(text(&whole), golden("image_caption_greedy"));
    assert!(whole["id"].as_str().unwrap().starts_with("resp_"), "{whole}");
    assert_eq!((whole["object"].as_str(), whole["status"].as_str()), (Some("response"), Some("completed")));
    assert_eq!(whole["model"], "tiny");
    assert!(whole["created_at"].as_u64().is_some() && whole["tools"] == json!([]), "{whole}");
    let message = &whole["output"][0];
    assert_eq!((message["type"].as_str(), message["role"].as_str()), (Some("message"), Some("assistant")));
    assert!(message["id"].as_str().unwrap().starts_with("msg_"), "{whole}");
    assert_eq!(message["content"][0]["type"], "output_text");
    let usage = &whole["usage"];
    let (input, output) = (usage["input_tokens"].as_u64().unwrap(), usage["output_tokens"].as_u64().unwrap());
    assert!(input > 0 && output > 0 && usage["total_tokens"].as_u64() == Some(input + output), "{usage}");
    assert!(usage["input_tokens_details"]["cached_tokens"].is_u64(), "{usage}");
    assert!(usage["output_tokens_details"]["reasoning_tokens"].is_u64(), "{usage}");

    // Cut short by max_output_tokens: incomplete, saying why.
    let (_, short) = post(&server, &ask(vec![image_part("photo.jpg")], json!({"max_output_tokens": 2}))).await;
    assert_eq!(short["status"], "incomplete", "{short}");
    assert_eq!(short["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(short["usage"]["output_tokens"], 2);

    // Streamed: the documented events, numbered, the deltas adding up to the whole answer.
    let request = ask(vec![image_part("photo.jpg")], json!({"max_output_tokens": 12, "stream": true}));
    let (status, body) = post(&server, &request).await;
    assert_eq!(status, 200, "{body}");
    let events = sse_events(body.as_str().unwrap());
    for (i, (name, event)) in events.iter().enumerate() {
        assert_eq!((event["type"].as_str(), event["sequence_number"].as_u64()), (Some(name.as_str()), Some(i as u64)));
    }
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    let deltas = names.iter().filter(|n| **n == "response.output_text.delta").count();
    let mut expected =
        vec!["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    expected.extend(["response.output_text.done", "response.content_part.done", "response.output_item.done"]);
    expected.push("response.completed");
    assert_eq!(names, expected);
    let streamed: String = events.iter().filter_map(|(_, e)| e["delta"].as_str()).collect();
    assert_eq!(streamed, golden("image_caption_greedy"));
    let last = &events.last().unwrap().1["response"];
    assert_eq!(text(last), streamed);
    assert_eq!(last["id"], events[0].1["response"]["id"], "one response from created to completed");
    assert_eq!(events[0].1["response"]["status"], "in_progress");
    let (status, stored) = get(&server, last["id"].as_str().unwrap()).await;
    assert_eq!((status, text(&stored)), (200, streamed.as_str()), "a streamed response is stored too");

    // More tokens than the model's 64 positions hold: refused when the model admits the request,
    // after the stream began, which then ends with response.failed; whole, a 400 naming the field.
    let request = ask(vec![image_part("photo.jpg")], json!({"max_output_tokens": 100, "stream": true}));
    let (status, body) = post(&server, &request).await;
    assert_eq!(status, 200, "{body}");
    let events = sse_events(body.as_str().unwrap());
    let (name, failed) = events.last().unwrap();
    assert_eq!(name, "response.failed", "{body}");
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(failed["response"]["error"]["code"], "invalid_prompt", "{failed}");
    assert!(failed["response"]["error"]["message"].as_str().unwrap().contains("64 positions"), "{failed}");
    let (status, error) = post(&server, &ask(vec![image_part("photo.jpg")], json!({"max_output_tokens": 100}))).await;
    assert_eq!((status, error["error"]["param"].as_str()), (400, Some("max_output_tokens")), "{error}");
}

#[tokio::test]
async fn options_are_mapped_as_on_chat_completions() {
    let server = TestServer::start("tiny-git-image", &[]);
    let photo = || vec![image_part("photo.jpg")];
    // temperature 0 is greedy; gitcap's own options are extra fields; log-probabilities on request.
    let (_, greedy) = post(&server, &ask(photo(), json!({"max_output_tokens": 12, "temperature": 0}))).await;
    assert_eq!(text(&greedy), golden("image_caption_greedy"), "{greedy}");
    let (_, beams) = post(&server, &ask(photo(), json!({"max_output_tokens": 12, "num_beams": 3}))).await;
    assert_eq!(text(&beams), golden("image_caption_beam3"), "{beams}");
    let request =
        ask(photo(), json!({"max_output_tokens": 3, "top_logprobs": 2, "include": ["message.output_text.logprobs"]}));
    let (_, scored) = post(&server, &request).await;
    let logprobs = scored["output"][0]["content"][0]["logprobs"].as_array().unwrap();
    assert_eq!(logprobs.len(), 3, "{scored}");
    assert!(logprobs
        .iter()
        .all(|l| l["logprob"].as_f64().unwrap() <= 0.0 && l["top_logprobs"].as_array().unwrap().len() == 2));
    assert_eq!(scored["top_logprobs"], 2);
    // Sampling with a seed is repeatable.
    let sampled = json!({"max_output_tokens": 6, "temperature": 1.3, "top_p": 0.9, "seed": 7});
    let (_, first) = post(&server, &ask(photo(), sampled.clone())).await;
    let (_, again) = post(&server, &ask(photo(), sampled)).await;
    assert_eq!(text(&first), text(&again));
    assert_eq!((first["temperature"].as_f64(), first["top_p"].as_f64()), (Some(1.3), Some(0.9)));

    // Every generation option of the protocol is read from the extra fields: a wrong value of
    // each is refused naming it.
    let fields = gitcap_protocol::descriptor::message_fields("GenerationOptions").unwrap();
    for field in fields.iter().filter(|f| !f.deprecated) {
        let name = if field.name == "early_stopping_mode" { "early_stopping" } else { field.name.as_str() };
        let (status, error) = post(&server, &ask(photo(), json!({ name: "not-a-value" }))).await;
        assert_eq!(status, 400, "{name}: {error}");
        assert_eq!(error["error"]["param"], name, "{error}");
    }
    // The core's bounds, named as this API spells them.
    let (status, error) = post(&server, &ask(photo(), json!({"max_output_tokens": 100000}))).await;
    assert_eq!((status, error["error"]["param"].as_str()), (400, Some("max_output_tokens")), "{error}");
    let (status, error) = post(&server, &ask(photo(), json!({"top_p": 1.5}))).await;
    assert_eq!((status, error["error"]["param"].as_str()), (400, Some("top_p")), "{error}");
    // service_tier "flex" is batch priority, and said so.
    let (_, flex) = post(&server, &ask(photo(), json!({"max_output_tokens": 12, "service_tier": "flex"}))).await;
    assert_eq!((flex["service_tier"].as_str(), text(&flex)), (Some("flex"), golden("image_caption_greedy").as_str()));
}

#[tokio::test]
async fn what_gitcap_cannot_honour_is_refused_by_name_unless_harmless() {
    let server = TestServer::start("tiny-git-image", &[]);
    let photo = || vec![image_part("shapes.png")];
    let harmless = json!({
        "tools": [], "tool_choice": "auto", "reasoning": {}, "background": false, "parallel_tool_calls": true,
        "text": {"format": {"type": "text"}, "verbosity": "medium"}, "truncation": "disabled",
        "instructions": "You are a helpful assistant.", "metadata": {"session": "s1"}, "user": "u1",
        "max_output_tokens": 4,
    });
    let (status, fine) = post(&server, &ask(photo(), harmless)).await;
    assert_eq!(status, 200, "{fine}");
    assert_eq!(
        (fine["metadata"]["session"].as_str(), fine["instructions"].as_str()),
        (Some("s1"), Some("You are a helpful assistant."))
    );
    for (field, value, param) in [
        ("tools", json!([{"type": "web_search"}]), "tools"),
        ("tool_choice", json!("required"), "tool_choice"),
        ("reasoning", json!({"effort": "high"}), "reasoning"),
        ("background", json!(true), "background"),
        ("text", json!({"format": {"type": "json_schema", "name": "x", "schema": {}}}), "text.format"),
        ("conversation", json!("conv_1"), "conversation"),
        ("prompt", json!({"id": "pmpt_1"}), "prompt"),
        ("service_tier", json!("urgent"), "service_tier"),
    ] {
        let (status, error) = post(&server, &ask(photo(), json!({ field: value }))).await;
        assert_eq!(status, 400, "{field}: {error}");
        assert_eq!(error["error"]["param"], param, "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    }
    // Input the door cannot read, named down to the part.
    for (input, param) in [
        (json!("describe it"), "input"),
        (json!([{"type": "function_call_output", "call_id": "c", "output": "x"}]), "input[0].type"),
        (json!([{"role": "user", "content": [{"type": "input_audio"}]}]), "input[0].content[0].type"),
        (
            json!([{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]),
            "input[0].content[0].image_url",
        ),
        (
            json!([{"role": "user", "content": [{"type": "input_file", "file_data": "data:application/pdf;base64,AAAA"}]}]),
            "input[0].content[0].file_data",
        ),
        (
            json!([{"role": "user", "content": [{"type": "input_file", "file_url": "http://127.0.0.1:1/v.mp4"}]}]),
            "input[0].content[0].file_url",
        ),
        (
            json!([{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,%%%"}]}]),
            "input[0].content[0].image_url",
        ),
    ] {
        let (status, error) = post(&server, &json!({"model": "tiny", "input": input})).await;
        assert_eq!(status, 400, "{input}: {error}");
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    let (status, error) = post(&server, &json!({"model": "tiny", "input": 7})).await;
    assert_eq!(status, 400, "{error}");
    let (status, error) =
        post(&server, &json!({"model": "nope", "input": [{"role": "user", "content": photo()}]})).await;
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("model_not_found")), "{error}");
    // A follow-up naming a response the server does not have: OpenAI's 404.
    let (status, error) =
        post(&server, &json!({"model": "tiny", "previous_response_id": "resp_nope", "input": "and?"})).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["param"], "previous_response_id");
    assert_eq!(error["error"]["code"], "previous_response_not_found");
    let (status, error) = get(&server, "resp_nope").await;
    assert_eq!((status, error["error"]["type"].as_str()), (404, Some("invalid_request_error")), "{error}");
    assert_eq!(error["error"]["message"], "Response with id 'resp_nope' not found.");
    // The fallback names the route.
    let response = http().get(format!("{}/v1/nothing", server.url())).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert!(response.text().await.unwrap().contains("POST /v1/responses"));
}

#[tokio::test]
async fn a_follow_up_asks_about_the_previous_responses_media() {
    let server = TestServer::start("tiny-git-image", &[]);
    let (_, caption) = post(&server, &ask(vec![image_part("photo.jpg")], json!({"max_output_tokens": 12}))).await;
    let id = caption["id"].as_str().unwrap();
    let follow_up = json!({"model": "tiny", "previous_response_id": id, "max_output_tokens": 12,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "what is in the picture?"}]}]});
    let (status, answer) = post(&server, &follow_up).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(text(&answer), golden("image_vqa_greedy"));
    assert_eq!(answer["previous_response_id"], id);
    assert_eq!(caption["usage"]["input_tokens_details"]["cached_tokens"], 0, "{caption}");
    let cached = answer["usage"]["input_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached > 0 && cached < answer["usage"]["input_tokens"].as_u64().unwrap(), "the image's tokens: {answer}");
    let text_metrics = probe::scrape_until(&server.addr, |_| true);
    let hits = probe::sum_with_label(&text_metrics, "gitcap_feature_cache_hits_total", r#"model="tiny""#);
    assert!(hits >= 1.0, "the follow-up's features came from the cache: {text_metrics}");
    // New media in the follow-up win over the previous response's.
    let mut other = follow_up.clone();
    other["input"][0]["content"] = json!([image_part("shapes.png")]);
    let (_, shapes) = post(&server, &other).await;
    assert_eq!(text(&shapes), golden("image_caption_shapes_greedy"));
    // Deleted: gone, and so is its media for follow-ups.
    let response = http().delete(format!("{}/v1/responses/{id}", server.url())).send().await.unwrap();
    let deleted: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(deleted, json!({"id": id, "object": "response", "deleted": true}));
    assert_eq!(post(&server, &follow_up).await.0, 404);
    // store: false keeps nothing.
    let (_, unstored) =
        post(&server, &ask(vec![image_part("photo.jpg")], json!({"max_output_tokens": 2, "store": false}))).await;
    assert_eq!(unstored["store"], false);
    assert_eq!(get(&server, unstored["id"].as_str().unwrap()).await.0, 404);
}

#[tokio::test]
async fn videos_as_frames_files_and_video_url_parts() {
    let Some(_) = tools::require(Tool::Ffmpeg, "responses_videos") else { return };
    let server = TestServer::start("tiny-git-video", &[]);
    let frames: Vec<Value> = (0..6).map(|i| image_part(&format!("frames/frame_{i}.png"))).collect();
    let (status, answer) = post(&server, &ask(frames, json!({"max_output_tokens": 12}))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(text(&answer), golden("video_caption_greedy"));

    let videos = Videos::new();
    let bytes = std::fs::read(videos.h264_mp4("clip.mp4", "64x48", 25, 2.0)).unwrap();
    let grpc = server.client(None).await;
    let expected =
        grpc.caption(Media::video(bytes.clone()), &CaptionOptions::default().max_new_tokens(8)).await.unwrap().text;
    let uri = data_uri("video/mp4", &bytes);
    for part in [
        json!({"type": "input_file", "file_data": uri, "filename": "clip.mp4"}),
        json!({"type": "video_url", "video_url": {"url": uri}}),
        json!({"type": "video_url", "video_url": uri}),
    ] {
        let (status, answer) = post(&server, &ask(vec![part], json!({"max_output_tokens": 8}))).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(text(&answer), expected);
    }
    let mixed = vec![json!({"type": "video_url", "video_url": uri}), image_part("frames/frame_0.png")];
    let (status, error) = post(&server, &ask(mixed, json!({}))).await;
    assert_eq!((status, error["error"]["param"].as_str()), (400, Some("input[0].content")), "{error}");
}

async fn store_one(server: &TestServer, image: &str) -> String {
    let (status, response) = post(server, &ask(vec![image_part(image)], json!({"max_output_tokens": 1}))).await;
    assert_eq!(status, 200, "{response}");
    response["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn stored_responses_are_bounded_by_count_bytes_and_age() {
    // Count: the oldest goes first.
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__RESPONSES__MAX_STORED", "2")]);
    let ids = [
        store_one(&server, "shapes.png").await,
        store_one(&server, "shapes.png").await,
        store_one(&server, "shapes.png").await,
    ];
    assert_eq!(get(&server, &ids[0]).await.0, 404);
    assert_eq!((get(&server, &ids[1]).await.0, get(&server, &ids[2]).await.0), (200, 200));
    drop(server);

    // Bytes: nine 124 kB images do not fit in 1 MB; the oldest make room.
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__RESPONSES__MAX_STORED_MB", "1")]);
    let mut ids = Vec::new();
    for _ in 0..9 {
        ids.push(store_one(&server, "big.png").await);
    }
    assert_eq!(get(&server, &ids[0]).await.0, 404, "the first made room");
    assert_eq!(get(&server, &ids[8]).await.0, 200, "the last is kept");
    let kept = futures::future::join_all(ids.iter().map(|id| get(&server, id))).await;
    let kept = kept.iter().filter(|(status, _)| *status == 200).count();
    assert!(kept * 124_222 <= 1 << 20, "{kept} kept");
    drop(server);

    // Age: kept a while, then gone (polled, with a deadline).
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__RESPONSES__TTL_SECS", "5")]);
    let id = store_one(&server, "shapes.png").await;
    assert_eq!(get(&server, &id).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(&server, &id).await.0 != 404 {
        assert!(Instant::now() < deadline, "still stored a minute after a 5 s expiry");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// Several threads: the connection task that closes the socket when the response is dropped
// must run while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_the_stream_stops_the_generation() {
    // An 8-beam search of 60 tokens (as many as the fixture's 64 positions allow) sends its tokens
    // at its end: 60 decoding steps, over a second or more, if nothing stops it. The client
    // leaves after the first event, sent before any token.
    let server = TestServer::start_with_env("tiny-git-wide", &[], &[("GITCAP__ENGINE__MAX_BATCH_SIZE", "8")]);
    let request = ask(
        vec![image_part("shapes.png")],
        json!({"stream": true, "max_output_tokens": 60, "min_new_tokens": 60, "num_beams": 8}),
    );
    let steps =
        decode_steps_after_leaving_a_stream(&server, "/v1/responses", &request, "response.created", "Responses").await;
    assert!(steps < 60.0, "{steps} decoding steps after the client left: the generation went on");
}

#[tokio::test]
async fn the_token_and_the_deadline_hold_on_every_responses_route() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__AUTH__INFERENCE_TOKEN", "secret")]);
    let body =
        ask(vec![image_part("shapes.png")], json!({"max_output_tokens": 60, "min_new_tokens": 60, "num_beams": 32}));
    let url = format!("{}/v1/responses", server.url());
    for request in [
        http().post(&url).header("content-type", "application/json").body(body.to_string()),
        http().get(format!("{url}/resp_1")),
        http().delete(format!("{url}/resp_1")),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{:?}", response.url());
    }
    // `x-gitcap-timeout-ms` on a request that needs seconds: OpenAI's 504, and nothing left running.
    let started = Instant::now();
    let response = http()
        .post(&url)
        .bearer_auth("secret")
        .header("content-type", "application/json")
        .header("x-gitcap-timeout-ms", "300")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 504);
    assert!(response.text().await.unwrap().contains("deadline"));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    probe::wait_for_idle(&server.addr, "tiny", Duration::from_secs(60)).await;
    // Every answer names the version that gave it.
    let quick = ask(vec![image_part("shapes.png")], json!({"max_output_tokens": 2}));
    let response = http()
        .post(&url)
        .bearer_auth("secret")
        .header("content-type", "application/json")
        .body(quick.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["x-gitcap-model-version"], "local");
}
