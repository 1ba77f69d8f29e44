//! One validation under every door: the same mistake is refused with the same field through gRPC
//! and the OpenAI-compatible API (each in its own spelling), and the checkpoint's own generation
//! defaults count wherever a request leaves an option unset.

mod common;

use serde_json::{json, Value};

use common::fixtures::{fixtures, model_dir};
use common::openai::{caption_body, post_chat};
use common::probe::{http_get, value};
use common::server::TestServer;
use gitcap_client::proto::captioner_client::CaptionerClient;
use gitcap_client::proto::{media::Kind, CaptionRequest, GenerationOptions, Media};

fn image() -> Vec<u8> {
    std::fs::read(fixtures().join("media/shapes.png")).unwrap()
}

fn caption(options: GenerationOptions) -> CaptionRequest {
    CaptionRequest {
        model: "tiny".into(),
        media: Some(Media { kind: Some(Kind::Image(image())), ..Default::default() }),
        options: Some(options),
        ..Default::default()
    }
}

async fn chat(server: &TestServer, extra: Value) -> (u16, Value) {
    let (status, _, body) = post_chat(server, &[], &caption_body("tiny", extra)).await;
    (status, body)
}

/// A copy of the image fixture whose `generation_config.json` sets `config`.
fn checkpoint_with(config: Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir("tiny-git-image")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let file = dir.path().join("generation_config.json");
    let mut current: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    current.as_object_mut().unwrap().extend(config.as_object().unwrap().clone());
    std::fs::write(&file, current.to_string()).unwrap();
    dir
}

#[tokio::test]
async fn the_same_mistake_is_refused_by_the_same_field_through_both_doors() {
    // The checkpoint caps generation at 6 tokens; the server allows 4 beams.
    let dir = checkpoint_with(json!({"max_new_tokens": 6}));
    let server = TestServer::start_dir(dir.path(), &[], &[("GITCAP__LIMITS__MAX_BEAMS", "4")]);
    let mut grpc = CaptionerClient::new(server.channel().await);
    let cases = [
        // An option out of its own range.
        (GenerationOptions { top_p: Some(1.5), ..Default::default() }, json!({"top_p": 1.5}), "top_p"),
        // Over the server's limit.
        (GenerationOptions { num_beams: Some(5), ..Default::default() }, json!({"num_beams": 5}), "num_beams"),
        // Contradicting the checkpoint's own max_new_tokens.
        (
            GenerationOptions { min_new_tokens: Some(8), ..Default::default() },
            json!({"min_new_tokens": 8}),
            "min_new_tokens",
        ),
    ];
    for (options, extra, field) in cases {
        let status = grpc.caption(caption(options)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().starts_with(&format!("options.{field}:")), "{field}: {status:?}");
        let (code, body) = chat(&server, extra).await;
        assert_eq!((code, body["error"]["param"].as_str()), (400, Some(field)), "{field}: {body}");
    }
    // OpenAI names the most tokens the way the request set them.
    let (code, body) = chat(&server, json!({"max_tokens": 2, "min_new_tokens": 3})).await;
    assert_eq!((code, body["error"]["param"].as_str()), (400, Some("min_new_tokens")), "{body}");
    let (code, body) = chat(&server, json!({"max_completion_tokens": 100000})).await;
    assert_eq!((code, body["error"]["param"].as_str()), (400, Some("max_completion_tokens")), "{body}");
}

#[tokio::test]
async fn a_checkpoints_default_num_beams_is_beam_search_everywhere() {
    // Beam search sends its tokens together at the end, so a request that runs it records no
    // gaps between tokens; the checkpoint asks for 3 beams and the request sets none.
    let dir = checkpoint_with(json!({"num_beams": 3, "max_new_tokens": 6, "min_new_tokens": 6}));
    let server = TestServer::start_dir(dir.path(), &[], &[]);
    let mut grpc = CaptionerClient::new(server.channel().await);
    let answer = grpc.caption(caption(GenerationOptions::default())).await.unwrap().into_inner();
    assert_eq!(answer.token_ids.len(), 6);
    let (code, body) = chat(&server, json!({})).await;
    assert_eq!(code, 200, "{body}");
    let metrics = http_get(&server.addr, "/metrics").2;
    let gaps = value(&metrics, r#"gitcap_inter_token_seconds_count{model="tiny",version="local"}"#).unwrap_or(0.0);
    assert_eq!(gaps, 0.0, "inter-token gaps recorded for beam-search requests:\n{metrics}");
    // The same request with one beam is greedy, and its gaps count.
    let greedy = GenerationOptions { num_beams: Some(1), ..Default::default() };
    grpc.caption(caption(greedy)).await.unwrap();
    let metrics = http_get(&server.addr, "/metrics").2;
    let gaps = value(&metrics, r#"gitcap_inter_token_seconds_count{model="tiny",version="local"}"#).unwrap_or(0.0);
    assert_eq!(gaps, 5.0, "{metrics}");
}

#[tokio::test]
async fn a_label_too_long_for_the_model_is_named_as_the_label() {
    // The fixture reads at most 64 positions; the second label alone is 80 tokens.
    let server = TestServer::start("tiny-git-image", &[]);
    let mut grpc = CaptionerClient::new(server.channel().await);
    let request = gitcap_client::proto::ScoreLabelsRequest {
        model: "tiny".into(),
        media: Some(Media { kind: Some(Kind::Image(image())), ..Default::default() }),
        labels: vec!["a cat".into(), vec!["cat"; 80].join(" ")],
        ..Default::default()
    };
    let status = grpc.score_labels(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("labels[1]:"), "{status:?}");
    assert!(!status.message().contains("max_new_tokens"), "names an option the caller never set: {status:?}");
}
