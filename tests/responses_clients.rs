//! `/v1/responses` driven by clients nobody here wrote, pinned: the official `openai` Python SDK
//! (tests/responses/requirements.txt: `responses.create` whole and streamed, a
//! `previous_response_id` follow-up served from the feature cache, retrieve and delete, mistakes;
//! every Response object and event received validated against the SDK's own types)
//! and the Vercel AI SDK in Node (tests/responses/node: `generateText` and `streamText` with an
//! image, through its default OpenAI provider, which speaks the Responses API). Every answer must
//! be the transformers golden for the same input and options.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::fixtures::{cases, fixtures};
use common::probe::{self, value};
use common::python::{self, describe};
use common::server::TestServer;
use common::tools::{self, target_dir, Tool};

const TOKEN: &str = "infer-secret";

fn golden(name: &str) -> String {
    cases().into_iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no golden case {name}")).text
}

fn ok_responses(text: &str) -> Option<f64> {
    value(text, r#"gitcap_requests_total{model="tiny",version="local",protocol="openai",rpc="Responses",code="OK"}"#)
}

/// The sum of a metric's series for model `tiny`.
fn total(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(r#"model="tiny""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_openai_sdk_gets_the_goldens_and_a_follow_up_hits_the_feature_cache() {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/responses/requirements.txt");
    let Some(python) = python::venv("responses-venv", &requirements, "responses_openai_sdk") else { return };
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__AUTH__INFERENCE_TOKEN", TOKEN)]);
    let media = fixtures().join("media");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/responses/responses.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(format!("{}/v1", server.url()))
        .arg(TOKEN)
        .arg(media.join("photo.jpg"))
        .arg(media.join("shapes.png"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe("tests/responses/responses.py", &output));
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(got["invalid"], serde_json::json!([]), "what the SDK's types refuse of what gitcap sent");

    let caption = &got["caption"];
    assert_eq!(caption["text"], golden("image_caption_greedy").as_str(), "{got}");
    assert_eq!(caption["object"], "response");
    assert!(caption["id"].as_str().unwrap().starts_with("resp_"), "{got}");
    let usage: Vec<u64> = caption["usage"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).collect();
    assert_eq!(usage[0] + usage[1], usage[2], "input + output = total: {got}");
    assert_eq!(got["follow_up"]["text"], golden("image_vqa_greedy").as_str(), "{got}");
    assert_eq!(got["follow_up"]["previous_response_id"], caption["id"]);
    assert!(got["follow_up"]["cached_tokens"].as_u64().unwrap() > 0, "the follow-up's usage says so: {got}");
    assert_eq!(got["retrieved"], caption["text"], "the stored response, retrieved");

    // The streamed events: the documented sequence, numbered from 0, deltas adding up to the golden.
    let shapes = golden("image_caption_shapes_greedy");
    assert_eq!(got["stream_final"]["text"], shapes.as_str(), "{got}");
    let events = got["stream_events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let deltas = kinds.iter().filter(|k| **k == "response.output_text.delta").count();
    assert!(deltas > 1, "{kinds:?}");
    let mut expected =
        vec!["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"];
    expected.extend(std::iter::repeat_n("response.output_text.delta", deltas));
    let last = if got["stream_final"]["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
    expected.extend(["response.output_text.done", "response.content_part.done", "response.output_item.done", last]);
    assert_eq!(kinds, expected);
    let numbers: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    let text: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(text, shapes);

    let errors = &got["errors"];
    let expect = |name: &str, class: &str, status: u64, param: Option<&str>| {
        let e = &errors[name];
        assert_eq!((e["class"].as_str(), e["status"].as_u64()), (Some(class), Some(status)), "{name}: {e}");
        assert_eq!(e["param"].as_str(), param, "{name}: {e}");
    };
    expect("deleted", "NotFoundError", 404, None);
    expect("previous_deleted", "NotFoundError", 404, Some("previous_response_id"));
    expect("tools", "BadRequestError", 400, Some("tools"));
    expect("json_format", "BadRequestError", 400, Some("text.format"));
    expect("no_media", "BadRequestError", 400, Some("input"));
    expect("unknown_model", "NotFoundError", 404, None);
    expect("wrong_token", "AuthenticationError", 401, None);

    // The photo was asked about twice (the caption, then the follow-up that sent only the
    // previous response's id) and the shapes once: the follow-up's look-ups are the only ones
    // that can have found the features.
    let text = probe::scrape_until(&server.addr, |t| ok_responses(t) == Some(3.0));
    assert_eq!(ok_responses(&text), Some(3.0), "caption, follow-up, stream: {text}");
    let hits = total(&text, "gitcap_feature_cache_hits_total");
    assert!(hits >= 1.0, "the follow-up found the photo's features in the cache: {text}");
}

/// The Node project's dependencies, installed with `npm ci` (from its lock file) under the
/// target directory, reused while the lock file stays the same: the directory to run its
/// scripts in.
fn node_project(test: &str) -> Option<PathBuf> {
    tools::require(Tool::Node, test)?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/responses/node");
    let project = target_dir().join("responses-node");
    let lock = std::fs::read_to_string(source.join("package-lock.json")).unwrap();
    let stamp = project.join("gitcap-installed-lock.json");
    std::fs::create_dir_all(&project).unwrap();
    for file in ["package.json", "package-lock.json", "generate.mjs"] {
        std::fs::copy(source.join(file), project.join(file)).unwrap();
    }
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock.as_str()) {
        let output = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&project)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", describe("npm ci (tests/responses/node)", &output));
        std::fs::write(&stamp, lock).unwrap();
    }
    Some(project)
}

#[tokio::test]
async fn the_vercel_ai_sdk_gets_the_golden_whole_and_streamed() {
    let Some(project) = node_project("responses_vercel_ai_sdk") else { return };
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__AUTH__INFERENCE_TOKEN", TOKEN)]);
    let output = Command::new("node")
        .arg(project.join("generate.mjs"))
        .arg(format!("{}/v1", server.url()))
        .arg(TOKEN)
        .arg(fixtures().join("media/shapes.png"))
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe("tests/responses/node/generate.mjs", &output));
    let got: Value = serde_json::from_slice(&output.stdout).unwrap();
    let shapes = golden("image_caption_shapes_greedy");
    assert_eq!(got["generate"]["text"], shapes.as_str(), "{got}");
    assert_eq!(got["generate"]["finishReason"], "stop", "{got}");
    let deltas = got["stream"]["deltas"].as_array().unwrap();
    assert!(deltas.len() > 1, "{got}");
    assert_eq!(deltas.iter().map(|d| d.as_str().unwrap()).collect::<String>(), shapes);
    assert_eq!(got["stream"]["outputTokens"], got["generate"]["outputTokens"], "{got}");
    // Both calls came through the Responses API.
    let text = probe::scrape_until(&server.addr, |t| ok_responses(t) == Some(2.0));
    assert_eq!(ok_responses(&text), Some(2.0), "{text}");
}
