//! Traces over OTLP against a real server process: a small OTLP/gRPC receiver (the collector's
//! TraceService) on 127.0.0.1 gets gitcap's spans. A caller's `traceparent`, in gRPC metadata
//! or an HTTP header, becomes the parent of the call's span; the `queue`, `vision`, `prefill` and
//! `decode` spans under it are as long as the response's `Timings`. Without an endpoint nothing is
//! exported, even with the exporter's standard OTEL_* variables pointing at a receiver; with one,
//! the spans still waiting at shutdown are sent before the process ends.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;

use common::fixtures::fixtures;
use common::server::TestServer;
use gitcap_client::proto::{
    caption_event::Event, captioner_client::CaptionerClient, media::Kind, CaptionRequest, GenerationOptions, Media,
    Timings,
};

/// A span's length in milliseconds may differ from the `Timings` it was made from by this much:
/// the spans hold whole nanoseconds.
const ROUNDING_MS: f64 = 0.001;
/// The call's span is measured on the wall clock, `total_ms` on the monotonic one, from a few
/// instructions later to a few earlier: this much apart at most.
const CLOCKS_MS: f64 = 1.0;
/// How long the spans of a call may take to reach the receiver (sent every 20 ms).
const ARRIVAL: Duration = Duration::from_secs(30);

/// One span as received, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP/gRPC trace receiver on an ephemeral port, keeping every span it gets.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    exports: Arc<Mutex<usize>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let attributes = resource_spans.resource.map(|r| r.attributes).unwrap_or_default();
            let service = string(&attributes, "service.name").unwrap_or_default();
            for scope in resource_spans.scope_spans {
                received.extend(scope.spans.into_iter().map(|span| Received { service: service.clone(), span }));
            }
        }
        self.spans.lock().unwrap().extend(received);
        *self.exports.lock().unwrap() += 1;
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on 127.0.0.1 (any free port) for as long as the test runs; its endpoint URL.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn received(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits for exports until `done` holds of the spans received (for at most [`ARRIVAL`]).
    async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        loop {
            // Registered before looking, so an export in between is not missed.
            let arrived = self.arrived.notified();
            let received = self.received();
            if done(&received) {
                return received;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("{what}: not received within {ARRIVAL:?}; got {:#?}", summary(&received));
            }
        }
    }
}

fn summary(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| format!("{} trace {} parent {}", r.span.name, hex(&r.span.trace_id), hex(&r.span.parent_span_id)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()? {
        AnyValue::IntValue(n) => Some(*n),
        _ => None,
    }
}

fn length_ms(span: &Span) -> f64 {
    (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6
}

/// A call's span and its requests' stages (`queue`, `vision`, `prefill`, `decode` each).
struct Call {
    span: Span,
    requests: Vec<[Span; 4]>,
}

/// The call `name` of trace `trace` with everything its spans must be: a server span whose
/// parent is `parent` (none: a root), of the service under test, with `requests` sets of
/// `queue`, `vision`, `prefill` and `decode` children, each set laid end to end within it.
fn call(received: &[Received], trace: &str, name: &str, parent: Option<&str>, requests: usize) -> Call {
    let in_trace: Vec<&Span> = received.iter().map(|r| &r.span).filter(|s| hex(&s.trace_id) == trace).collect();
    let found = received.iter().find(|r| hex(&r.span.trace_id) == trace && r.span.name == name);
    let found = found.unwrap_or_else(|| panic!("no {name} in trace {trace}: {:#?}", summary(received)));
    assert_eq!(found.service, "gitcap-under-test", "the configured service.name");
    let span = found.span.clone();
    assert_eq!(span.kind, SpanKind::Server as i32, "{name}");
    assert_eq!(hex(&span.parent_span_id), parent.unwrap_or(""), "{name}'s parent");
    let stages: Vec<&Span> = in_trace.into_iter().filter(|s| s.name != name).collect();
    assert_eq!(stages.len(), 4 * requests, "{name}: {:#?}", summary(received));
    for stage in &stages {
        assert_eq!(stage.parent_span_id, span.span_id, "{} is a child of {name}", stage.name);
        assert_eq!(stage.kind, SpanKind::Internal as i32);
    }
    // Each request's stages follow one another: vision starts as its queue ends, prefill as its
    // vision ends, decode as its prefill ends.
    let after = |stage: &str, end: u64| {
        let next = stages.iter().find(|s| s.name == stage && s.start_time_unix_nano == end);
        (*next.unwrap_or_else(|| panic!("{name}: no {stage} span starts at {end}"))).clone()
    };
    let requests: Vec<[Span; 4]> = stages
        .iter()
        .filter(|s| s.name == "queue")
        .map(|queue| {
            let vision = after("vision", queue.end_time_unix_nano);
            let prefill = after("prefill", vision.end_time_unix_nano);
            let decode = after("decode", prefill.end_time_unix_nano);
            [(*queue).clone(), vision, prefill, decode]
        })
        .collect();
    assert_eq!(requests.len(), stages.len() / 4, "{name}: a queue span per request");
    for [.., decode] in &requests {
        assert!(decode.end_time_unix_nano <= span.end_time_unix_nano, "the answer arrives before the call ends");
        assert!(decode.end_time_unix_nano > span.start_time_unix_nano, "and after it began");
    }
    Call { span, requests }
}

/// The stages agree with the response's `Timings`, and the call's span holds its `total_ms`.
fn agree(call: &Call, timings: &Timings) {
    let [[queue, vision, prefill, decode]] = &call.requests[..] else { panic!("one request's stages") };
    let stages = [
        (queue, timings.queue_ms),
        (vision, timings.vision_ms),
        (prefill, timings.prefill_ms),
        (decode, timings.decode_ms),
    ];
    for (span, ms) in stages {
        assert!((length_ms(span) - ms).abs() <= ROUNDING_MS, "{}: {} ms, Timings say {ms}", span.name, length_ms(span));
    }
    let total = length_ms(&call.span);
    assert!(total >= timings.total_ms - CLOCKS_MS, "{}: {total} ms, total_ms {}", call.span.name, timings.total_ms);
}

fn caption_request(image: &[u8]) -> CaptionRequest {
    CaptionRequest {
        media: Some(Media { kind: Some(Kind::Image(image.to_vec())), ..Default::default() }),
        options: Some(GenerationOptions { max_new_tokens: Some(6), ..Default::default() }),
        ..Default::default()
    }
}

/// A request with the W3C trace context of caller span `parent` in trace `trace`.
fn traced<T>(message: T, trace: &str, parent: &str, state: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", format!("00-{trace}-{parent}-01").parse().unwrap());
    if let Some(state) = state {
        request.metadata_mut().insert("tracestate", state.parse().unwrap());
    }
    request
}

fn image() -> Vec<u8> {
    std::fs::read(fixtures().join("media/shapes.png")).unwrap()
}

/// `POST /v1/chat/completions`, streamed, with a `traceparent` header: the SSE events' data.
async fn chat(server: &TestServer, traceparent: &str) -> Vec<Value> {
    use base64::Engine;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let uri = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(image()));
    let body = serde_json::json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}],
        "max_tokens": 5,
        "n": 2,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let response = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.url()))
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

#[tokio::test]
async fn a_callers_trace_continues_into_spans_as_long_as_the_timings() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let env = [
        ("GITCAP__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
        ("GITCAP__TELEMETRY__SERVICE_NAME", "gitcap-under-test"),
        ("GITCAP__TELEMETRY__EXPORT_DELAY_MS", "20"),
    ];
    let server = TestServer::start_with_env("tiny-git-image", &[], &env);
    let mut client = CaptionerClient::new(server.channel().await);
    let image = image();

    // Caption, with a trace state to carry on.
    let (caption_trace, caption_parent) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let request = traced(caption_request(&image), caption_trace, caption_parent, Some("client=7,other=x"));
    let unary = client.caption(request).await.unwrap().into_inner();
    // CaptionStream: the timings come in its last event.
    let (stream_trace, stream_parent) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let request = traced(caption_request(&image), stream_trace, stream_parent, None);
    let mut events = client.caption_stream(request).await.unwrap().into_inner();
    let mut streamed = None;
    while let Some(event) = events.next().await {
        if let Some(Event::Done(done)) = event.unwrap().event {
            streamed = Some(done);
        }
    }
    let streamed = streamed.expect("a Done event");
    // No traceparent: a trace of its own.
    let untraced = client.caption(tonic::Request::new(caption_request(&image))).await.unwrap().into_inner();
    // The OpenAI API, two choices streamed: one call, two requests.
    let (chat_trace, chat_parent) = ("a1b2c3d4e5f60718293a4b5c6d7e8f90", "1122334455667788");
    let chunks = chat(&server, &format!("00-{chat_trace}-{chat_parent}-01")).await;
    let completion_tokens = chunks.last().unwrap()["usage"]["completion_tokens"].as_i64().unwrap();

    let known = [caption_trace, stream_trace, chat_trace];
    let received = receiver
        .until("every call's spans", |received| {
            let calls = received.iter().filter(|r| r.span.name.starts_with("gitcap.")).count();
            let stages = received.len() - calls;
            calls == 4 && stages == 4 * 5
        })
        .await;

    let caption = call(&received, caption_trace, "gitcap.Caption", Some(caption_parent), 1);
    agree(&caption, unary.timings.as_ref().unwrap());
    assert_eq!(caption.span.trace_state, "client=7,other=x", "the caller's tracestate carries on");
    let attributes = &caption.span.attributes;
    assert_eq!(string(attributes, "gitcap.model").as_deref(), Some("tiny"));
    assert_eq!(string(attributes, "gitcap.version").as_deref(), Some("local"));
    assert_eq!(string(attributes, "gitcap.rpc").as_deref(), Some("Caption"));
    assert_eq!(string(attributes, "gitcap.protocol").as_deref(), Some("grpc"));
    assert_eq!(string(attributes, "gitcap.priority").as_deref(), Some("interactive"));
    assert_eq!(string(attributes, "gitcap.code").as_deref(), Some("OK"));
    assert_eq!(int(attributes, "gitcap.tokens.generated"), Some(unary.token_ids.len() as i64));
    let usage = unary.usage.unwrap();
    let read = i64::from(usage.prompt_tokens + usage.image_tokens);
    assert_eq!(int(attributes, "gitcap.tokens.prompt"), Some(read));
    let [[_, _, prefill, decode]] = &caption.requests[..] else { unreachable!() };
    assert_eq!(int(&prefill.attributes, "gitcap.tokens.prompt"), Some(read), "the prefill reads the tokens");
    assert_eq!(int(&decode.attributes, "gitcap.tokens.generated"), Some(unary.token_ids.len() as i64));

    let stream = call(&received, stream_trace, "gitcap.CaptionStream", Some(stream_parent), 1);
    agree(&stream, streamed.timings.as_ref().unwrap());

    let root = received
        .iter()
        .find(|r| r.span.name == "gitcap.Caption" && !known.contains(&hex(&r.span.trace_id).as_str()))
        .expect("the untraced Caption's span");
    let root = call(&received, &hex(&root.span.trace_id), "gitcap.Caption", None, 1);
    agree(&root, untraced.timings.as_ref().unwrap());

    let chat = call(&received, chat_trace, "gitcap.ChatCompletions", Some(chat_parent), 2);
    assert_eq!(string(&chat.span.attributes, "gitcap.protocol").as_deref(), Some("openai"));
    assert_eq!(int(&chat.span.attributes, "gitcap.tokens.generated"), Some(completion_tokens), "both choices'");

    drop(client);
    server.signal_term();
    assert!(tokio::task::spawn_blocking(move || server.wait()).await.unwrap(), "a clean exit");
}

#[tokio::test]
async fn spans_left_at_shutdown_are_sent_and_none_without_an_endpoint() {
    let image = image();
    let (trace, parent) = ("5c6d7e8f90a1b2c3d4e5f60718293a4b", "8877665544332211");

    // No endpoint: no exporter, although the exporter's own variables name a receiver and ask
    // for batches every 20 ms.
    let unused = Receiver::default();
    let endpoint = unused.start().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "20"),
    ];
    let server = TestServer::start_with_env("tiny-git-image", &[], &env);
    let mut client = CaptionerClient::new(server.channel().await);
    client.caption(traced(caption_request(&image), trace, parent, None)).await.unwrap();
    drop(client);
    server.signal_term();
    assert!(tokio::task::spawn_blocking(move || server.wait()).await.unwrap(), "a clean exit");
    assert_eq!(*unused.exports.lock().unwrap(), 0, "{:#?}", summary(&unused.received()));

    // An endpoint, and a batch delay longer than the test: the spans go at shutdown.
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let env = [
        ("GITCAP__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
        ("GITCAP__TELEMETRY__SERVICE_NAME", "gitcap-under-test"),
        ("GITCAP__TELEMETRY__EXPORT_DELAY_MS", "600000"),
    ];
    let server = TestServer::start_with_env("tiny-git-image", &[], &env);
    let mut client = CaptionerClient::new(server.channel().await);
    let reply = client.caption(traced(caption_request(&image), trace, parent, None)).await.unwrap().into_inner();
    assert_eq!(*receiver.exports.lock().unwrap(), 0, "nothing is sent before the batch delay");
    drop(client);
    server.signal_term();
    assert!(tokio::task::spawn_blocking(move || server.wait()).await.unwrap(), "a clean exit");
    let caption = call(&receiver.received(), trace, "gitcap.Caption", Some(parent), 1);
    agree(&caption, reply.timings.as_ref().unwrap());
}
