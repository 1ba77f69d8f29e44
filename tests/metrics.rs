//! `GET /metrics` against a real server process: the series that requests leave behind, on the
//! main port and the admin listener, open without the inference token.

mod common;

use tokio_stream::StreamExt;
use tonic::Code;

use common::fixtures::fixtures;
use common::probe::{self, http_get, value};
use common::server::TestServer;
use gitcap_client::proto::{
    admin_client::AdminClient, caption_event::Event, captioner_client::CaptionerClient, media::Kind, CaptionRequest,
    GenerationOptions, Media, UnloadRequest,
};

const TOKEN: &str = "infer-secret";
const ADMIN: &str = "admin-secret";

/// Scrapes until `ready` holds (a stream's outcome is counted just after its last message),
/// checking the content type on the way.
fn scrape_until(addr: &str, ready: impl Fn(&str) -> bool) -> String {
    let (_, content_type, _) = http_get(addr, "/metrics");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    probe::scrape_until(addr, ready)
}

fn request(image: Vec<u8>, model: &str) -> tonic::Request<CaptionRequest> {
    let options = GenerationOptions { max_new_tokens: Some(8), num_beams: Some(1), ..Default::default() };
    let message = CaptionRequest {
        model: model.into(),
        media: Some(Media { kind: Some(Kind::Image(image)), ..Default::default() }),
        question: String::new(),
        options: Some(options),
        ..Default::default()
    };
    authed(message, TOKEN)
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn requests_leave_labelled_series_on_both_listeners_without_a_token() {
    let env = [
        ("GITCAP__AUTH__INFERENCE_TOKEN", TOKEN),
        ("GITCAP__AUTH__ADMIN_TOKEN", ADMIN),
        ("GITCAP__ADMIN__LISTEN", "127.0.0.1:0"),
    ];
    let server = TestServer::start_with_env("tiny-git-image", &[], &env);
    let mut client = CaptionerClient::new(server.channel().await);
    let image = std::fs::read(fixtures().join("media/shapes.png")).unwrap();

    let unary = client.caption(request(image.clone(), "")).await.unwrap().into_inner();
    let mut events = client.caption_stream(request(image.clone(), "tiny")).await.unwrap().into_inner();
    let (mut streamed, mut done) = (0, None);
    while let Some(event) = events.next().await {
        match event.unwrap().event.unwrap() {
            Event::Token(_) => streamed += 1,
            Event::Done(response) => done = response.usage,
        }
    }
    // The second request on the same image found its image tokens in the feature cache, and
    // its answer says so; the first computed them.
    let (first, second) = (unary.usage.unwrap(), done.expect("a final response"));
    assert_eq!(first.cached_image_tokens, 0, "{first:?}");
    assert!(second.image_tokens > 0 && second.cached_image_tokens == second.image_tokens, "{second:?}");
    let bad = client.caption(request(b"not an image".to_vec(), "")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let unknown = client.caption_stream(request(image, "no-such-model")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let labels = format!(r#"model="tiny",version="{}""#, unary.version);
    let requests = |rpc: &str, code: &str| {
        format!(r#"gitcap_requests_total{{{labels},protocol="grpc",rpc="{rpc}",code="{code}"}}"#)
    };
    let stream_ok = requests("CaptionStream", "OK");
    let text = scrape_until(&server.addr, |text| value(text, &stream_ok).is_some());
    assert_eq!(value(&text, &requests("Caption", "OK")), Some(1.0), "{text}");
    assert_eq!(value(&text, &stream_ok), Some(1.0), "{text}");
    assert_eq!(value(&text, &requests("Caption", "INVALID_ARGUMENT")), Some(1.0), "{text}");
    let not_found =
        r#"gitcap_requests_total{model="",version="",protocol="grpc",rpc="CaptionStream",code="NOT_FOUND"}"#;
    assert_eq!(value(&text, not_found), Some(1.0), "a request that reached no model has empty labels: {text}");

    let generated = unary.token_ids.len() + streamed;
    assert!(unary.token_ids.len() > 1 && streamed > 1, "{unary:?}");
    let series = |name: &str| value(&text, &format!("{name}{{{labels}}}"));
    assert_eq!(series("gitcap_generated_tokens_total"), Some(generated as f64), "{text}");
    // One sample per finished generation; one inter-token gap per token after the first.
    for histogram in ["time_to_first_token_seconds", "request_tokens_per_second"] {
        assert_eq!(series(&format!("gitcap_{histogram}_count")), Some(2.0), "{histogram}: {text}");
        let infinite = format!(r#"gitcap_{histogram}_bucket{{{labels},le="+Inf"}}"#);
        assert_eq!(value(&text, &infinite), Some(2.0), "{histogram}: {text}");
    }
    let queue = format!(r#"gitcap_queue_seconds_count{{{labels},priority="interactive"}}"#);
    assert_eq!(value(&text, &queue), Some(2.0), "queue time by priority: {text}");
    assert_eq!(series("gitcap_inter_token_seconds_count"), Some((generated - 2) as f64), "{text}");
    assert!(series("gitcap_model_weight_bytes").is_some_and(|b| b > 10_000.0), "{text}");
    assert!(text.contains("# HELP gitcap_time_to_first_token_seconds "), "{text}");
    assert!(text.contains(r#"gitcap_queue_seconds_bucket{model="tiny","#), "{text}");
    // The engine's side: decoding steps, vision passes (the load's warm-up inference, then the
    // first request), and the second request on the same image found its image keys/values in
    // the feature cache.
    assert!(series("gitcap_decode_batch_size_count").is_some_and(|n| n >= generated as f64 - 2.0), "{text}");
    assert_eq!(series("gitcap_vision_batch_frames_count"), Some(2.0), "{text}");
    let cache = |outcome: &str, kind: &str| {
        value(&text, &format!(r#"gitcap_feature_cache_{outcome}_total{{{labels},kind="{kind}"}}"#))
    };
    assert_eq!(cache("hits", "prefix"), Some(1.0), "{text}");
    assert_eq!(cache("misses", "prefix"), Some(2.0), "the warm-up's and the first request's: {text}");
    assert!(series("gitcap_feature_cache_bytes").is_some_and(|b| b > 0.0), "{text}");
    // The stream sent the image again: its frame came from the image cache, not decoded.
    assert_eq!(value(&text, "gitcap_image_cache_hits_total"), Some(1.0), "{text}");
    let misses = value(&text, "gitcap_image_cache_misses_total");
    assert_eq!(misses, Some(2.0), "the first request's image and the one that is not an image: {text}");
    assert!(value(&text, "gitcap_image_cache_bytes").is_some_and(|b| b > 0.0), "{text}");

    // The admin listener answers the same, beside the admin service.
    let admin_addr = server.admin_addr.clone().expect("the admin listener");
    let from_admin = scrape_until(&admin_addr, |_| true);
    assert_eq!(value(&from_admin, &requests("Caption", "OK")), Some(1.0), "{from_admin}");
    // The page is still on the main port.
    assert_eq!(http_get(&server.addr, "/").1, "text/html; charset=utf-8");

    // Unloading removes the version's memory gauge; its counters stay.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{admin_addr}")).unwrap().connect().await;
    let mut admin = AdminClient::new(channel.unwrap());
    let id = format!("tiny@{}", unary.version);
    admin.unload(authed(UnloadRequest { id }, ADMIN)).await.unwrap();
    let weight = format!("gitcap_model_weight_bytes{{{labels}}}");
    let text = scrape_until(&server.addr, |text| value(text, &weight).is_none());
    assert_eq!(value(&text, &weight), None, "{text}");
    assert_eq!(value(&text, &requests("Caption", "OK")), Some(1.0), "{text}");
}

#[tokio::test]
async fn the_admin_listener_serves_metrics_without_an_admin_service() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__ADMIN__LISTEN", "127.0.0.1:0")]);
    let admin_addr = server.admin_addr.clone().expect("the admin listener");
    let text = scrape_until(&admin_addr, |_| true);
    assert!(text.contains(r#"gitcap_model_weight_bytes{model="tiny",version="local"} "#), "{text}");
    let (_, content_type, body) = http_get(&admin_addr, "/");
    assert!(!content_type.starts_with("text/html") && !body.contains("<html"), "no page on the admin listener");
}

#[tokio::test]
async fn metrics_can_be_switched_off() {
    let server = TestServer::start_with_env("tiny-git-image", &[], &[("GITCAP__METRICS__ENABLED", "false")]);
    let (status, _, body) = http_get(&server.addr, "/metrics");
    assert_eq!(status, 404);
    assert!(body.contains("[metrics] enabled = true"), "{body}");
}
