//! Traces over OpenTelemetry's OTLP (gRPC), off unless `telemetry.otlp_endpoint` is set.
//!
//! Each inference call (every Captioner RPC, `POST /v1/chat/completions`) is one span,
//! `gitcap.<rpc>`, from the moment the call reached its handler to its end. A W3C `traceparent`
//! (and `tracestate`) in the call's gRPC metadata or HTTP headers makes it a child of the caller's
//! span; without one it starts a new trace. Under it, each request the call queued on a model
//! has the engine's stages as child spans, `queue`, `vision`, `prefill` and `decode`, laid end to
//! end and ending when the answer arrived, each exactly as long as the `Timings` of the response
//! (`queue_ms`, `vision_ms`, `prefill_ms`, `decode_ms`): the engine reports durations, not instants, so the
//! spans are placed from them (see docs/traces.md for what each covers).
//!
//! Off, nothing is built: no exporter, no thread, and a call only looks up an empty [`OnceLock`].
//! On, spans go through a batch processor (its own thread) to the OTLP exporter, which runs on
//! the tokio runtime; ending a span never blocks (a full queue drops it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tonic::Code;

use crate::engine::{ModelInfo, Priority};
use crate::error::{GitcapError, Result};
use crate::optional_setting::optional;
use serde::{Deserialize, Serialize};

/// Traces over OTLP (crate::telemetry); off unless an endpoint is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TelemetrySettings {
    /// The OTLP/gRPC receiver (`http://host:4317`); `None` = traces off.
    #[serde(default, deserialize_with = "optional")]
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
    /// Of the traces gitcap starts (no sampled `traceparent` from the caller), the share kept.
    pub sample_ratio: f64,
    /// How long finished spans wait to be sent together.
    pub export_delay_ms: u64,
}

/// The tracer of this process, once [`init`] has turned traces on.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The exporter's provider, kept to flush what is left at shutdown.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

/// Turns traces on when `settings` name an endpoint; `None` when they are off. Must run on the
/// tokio runtime (the exporter's connection lives there).
pub fn init(settings: &TelemetrySettings) -> Result<Option<Telemetry>> {
    let Some(endpoint) = &settings.otlp_endpoint else { return Ok(None) };
    let provider = provider(settings, endpoint)?;
    let tracer = provider.tracer("gitcap");
    TRACER.set(tracer).map_err(|_| GitcapError::Internal("traces were turned on twice".into()))?;
    tracing::info!(endpoint, sample_ratio = settings.sample_ratio, "traces: exporting over OTLP");
    Ok(Some(Telemetry { provider }))
}

/// The tracer provider the settings describe: the OTLP/gRPC exporter behind a batch processor,
/// sampling by the caller's decision or else `sample_ratio` of new traces.
fn provider(settings: &TelemetrySettings, endpoint: &str) -> Result<SdkTracerProvider> {
    let ratio = settings.sample_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(GitcapError::invalid("telemetry.sample_ratio", format!("must be from 0 to 1, not {ratio}")));
    }
    let scheme = endpoint.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("http" | "https")) {
        return Err(GitcapError::invalid(
            "telemetry.otlp_endpoint",
            format!(
                "`{endpoint}` is not an http:// or https:// URL (an OTLP/gRPC receiver, e.g. http://localhost:4317)"
            ),
        ));
    }
    if settings.export_delay_ms == 0 {
        return Err(GitcapError::invalid("telemetry.export_delay_ms", "must be at least 1"));
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint);
    if scheme == Some("https") {
        // The system's trusted roots, as for media URLs.
        exporter = exporter.with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
    }
    let exporter = exporter.build().map_err(|e| GitcapError::invalid("telemetry.otlp_endpoint", e.to_string()))?;
    let batches = BatchConfigBuilder::default().with_scheduled_delay(Duration::from_millis(settings.export_delay_ms));
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches.build()).build();
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(resource)
        .build())
}

impl Telemetry {
    /// Sends the spans not yet exported and stops the exporter (on a blocking thread: the
    /// processor waits for its last export).
    pub async fn shutdown(self) {
        let provider = self.provider;
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("traces: the last export failed: {e}"),
            Err(e) => tracing::warn!("traces: flushing at shutdown failed: {e}"),
        }
    }
}

/// The span of one inference call, shared by the requests it queues (cloning shares it). The
/// call's [`crate::service::request::Tally`] ends it.
#[derive(Clone)]
pub struct RequestTrace {
    tracer: SdkTracer,
    /// Holds the call's span: the parent of the stages.
    context: Context,
    tokens: Arc<Tokens>,
}

/// Tokens read and generated by a call's requests, added up.
#[derive(Default)]
struct Tokens {
    prompt: AtomicU64,
    generated: AtomicU64,
}

/// What the engine reported of one answered request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stages {
    pub queue_ms: f64,
    pub vision_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// Prompt and image tokens the model read.
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
}

/// A call's span when traces are on: a child of the `traceparent` in `headers` (gRPC metadata
/// or HTTP headers), or the root of a new trace.
pub fn request(protocol: &'static str, rpc: &'static str, headers: &http::HeaderMap) -> Option<RequestTrace> {
    TRACER.get().map(|tracer| RequestTrace::start(tracer, protocol, rpc, headers))
}

impl RequestTrace {
    pub fn start(tracer: &SdkTracer, protocol: &'static str, rpc: &'static str, headers: &http::HeaderMap) -> Self {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let mut attributes = vec![KeyValue::new("gitcap.protocol", protocol), KeyValue::new("gitcap.rpc", rpc)];
        match protocol {
            "grpc" => attributes.extend([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", crate::proto::captioner_server::SERVICE_NAME),
                KeyValue::new("rpc.method", rpc),
            ]),
            _ => attributes.push(KeyValue::new("http.request.method", "POST")),
        }
        let span = tracer
            .span_builder(format!("gitcap.{rpc}"))
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Self { tracer: tracer.clone(), context: parent.with_span(span), tokens: Arc::default() }
    }

    /// The call's request priority.
    pub fn priority(&self, priority: Priority) {
        self.context.span().set_attribute(KeyValue::new("gitcap.priority", priority.as_str()));
    }

    /// Adds one answered request's stages, `answered` being when its answer arrived.
    pub fn stages(&self, answered: SystemTime, stages: &Stages) {
        for (name, start, end) in layout(answered, stages) {
            let mut builder = self.tracer.span_builder(name).with_kind(SpanKind::Internal).with_start_time(start);
            match name {
                "prefill" => {
                    builder =
                        builder.with_attributes([KeyValue::new("gitcap.tokens.prompt", stages.prompt_tokens as i64)])
                }
                "decode" => {
                    builder = builder
                        .with_attributes([KeyValue::new("gitcap.tokens.generated", stages.generated_tokens as i64)])
                }
                _ => {}
            }
            builder.start_with_context(&self.tracer, &self.context).end_with_timestamp(end);
        }
        self.tokens.prompt.fetch_add(stages.prompt_tokens, Ordering::Relaxed);
        self.tokens.generated.fetch_add(stages.generated_tokens, Ordering::Relaxed);
    }

    /// Ends the call's span with the model that served it and its status code.
    pub fn end(&self, model: Option<&ModelInfo>, code: Code) {
        let span = self.context.span();
        if let Some(model) = model {
            span.set_attribute(KeyValue::new("gitcap.model", model.name.clone()));
            span.set_attribute(KeyValue::new("gitcap.version", model.version.clone()));
        }
        span.set_attribute(KeyValue::new("gitcap.tokens.prompt", self.tokens.prompt.load(Ordering::Relaxed) as i64));
        span.set_attribute(KeyValue::new(
            "gitcap.tokens.generated",
            self.tokens.generated.load(Ordering::Relaxed) as i64,
        ));
        span.set_attribute(KeyValue::new("gitcap.code", crate::metrics::code_name(code)));
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
        if is_server_error(code) {
            span.set_status(Status::error(crate::metrics::code_name(code)));
        }
        span.end();
    }
}

/// The stages' spans: `queue`, `vision`, `prefill` and `decode` end to end, the last ending at
/// `answered`, each as long as the engine measured it.
fn layout(answered: SystemTime, stages: &Stages) -> [(&'static str, SystemTime, SystemTime); 4] {
    let before = |end: SystemTime, ms: f64| {
        let length = Duration::try_from_secs_f64(ms / 1e3).unwrap_or_default();
        end.checked_sub(length).unwrap_or(end)
    };
    let decode = before(answered, stages.decode_ms);
    let prefill = before(decode, stages.prefill_ms);
    let vision = before(prefill, stages.vision_ms);
    let queue = before(vision, stages.queue_ms);
    [("queue", queue, vision), ("vision", vision, prefill), ("prefill", prefill, decode), ("decode", decode, answered)]
}

/// The codes that mark a server span as failed (OpenTelemetry's gRPC conventions): the
/// server's fault, not the caller's.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// gRPC metadata or HTTP headers, read by the W3C trace-context propagator.
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::{SpanData, SpanExporter};

    use super::*;

    /// Keeps what it is given.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn tracer(exporter: &Collect) -> SdkTracer {
        SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build().tracer("test")
    }

    fn settings(endpoint: &str) -> TelemetrySettings {
        TelemetrySettings {
            otlp_endpoint: Some(endpoint.into()),
            service_name: "gitcap".into(),
            sample_ratio: 1.0,
            export_delay_ms: 5000,
        }
    }

    fn micros(d: Duration) -> u128 {
        d.as_micros()
    }

    #[test]
    fn stages_end_at_the_answer_each_as_long_as_measured() {
        let answered = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let stages = Stages {
            queue_ms: 2.5,
            vision_ms: 10.25,
            prefill_ms: 7.5,
            decode_ms: 40.125,
            prompt_tokens: 3,
            generated_tokens: 8,
        };
        let [queue, vision, prefill, decode] = layout(answered, &stages);
        let length = |(_, start, end): (&str, SystemTime, SystemTime)| micros(end.duration_since(start).unwrap());
        assert_eq!((length(queue), length(vision), length(prefill), length(decode)), (2500, 10250, 7500, 40125));
        assert_eq!(
            (queue.2, vision.2, prefill.2, decode.2),
            (vision.1, prefill.1, decode.1, answered),
            "end to end, ending at the answer"
        );
        // A stage the engine did not run (frames encoded ahead, a cached prefix) is empty.
        let [_, vision, ..] = layout(answered, &Stages { vision_ms: 0.0, ..stages });
        assert_eq!(vision.1, vision.2);
    }

    #[test]
    fn a_traceparent_becomes_the_parent_and_the_stages_its_children() {
        let exporter = Collect::default();
        let tracer = tracer(&exporter);
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap());
        headers.insert("tracestate", "vendor=opaque".parse().unwrap());
        let trace = RequestTrace::start(&tracer, "grpc", "Caption", &headers);
        trace.priority(Priority::Batch);
        let stages = Stages {
            queue_ms: 1.0,
            vision_ms: 2.0,
            prefill_ms: 0.5,
            decode_ms: 3.0,
            prompt_tokens: 5,
            generated_tokens: 4,
        };
        trace.stages(SystemTime::now(), &stages);
        trace.stages(SystemTime::now(), &stages);
        trace.end(None, Code::Unavailable);

        let spans = exporter.0.lock().unwrap().clone();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(
            names,
            ["queue", "vision", "prefill", "decode", "queue", "vision", "prefill", "decode", "gitcap.Caption"]
        );
        let call = spans.last().unwrap();
        assert_eq!(call.span_context.trace_id(), TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap());
        assert_eq!(call.parent_span_id, SpanId::from_hex("b7ad6b7169203331").unwrap());
        assert_eq!(call.span_context.trace_state().header(), "vendor=opaque");
        assert_eq!(call.span_kind, SpanKind::Server);
        assert_eq!(call.status, Status::error("UNAVAILABLE"));
        let attribute = |key: &str| call.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.clone());
        assert_eq!(attribute("gitcap.priority"), Some("batch".into()));
        assert_eq!(attribute("gitcap.tokens.generated"), Some(8i64.into()), "both requests' tokens");
        assert_eq!(attribute("rpc.method"), Some("Caption".into()));
        for stage in &spans[..8] {
            assert_eq!(stage.parent_span_id, call.span_context.span_id(), "{}", stage.name);
            assert_eq!(stage.span_context.trace_id(), call.span_context.trace_id());
        }
    }

    #[test]
    fn without_a_traceparent_a_call_starts_a_new_trace() {
        let exporter = Collect::default();
        let tracer = tracer(&exporter);
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "not a trace context".parse().unwrap());
        RequestTrace::start(&tracer, "openai", "ChatCompletions", &headers).end(None, Code::InvalidArgument);
        let spans = exporter.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
        assert!(spans[0].span_context.trace_id() != TraceId::INVALID);
        assert_eq!(spans[0].status, Status::Unset, "a caller's mistake is not the server's error");
    }

    #[tokio::test]
    async fn bad_settings_stop_start_up_naming_the_key() {
        let bad =
            |settings: TelemetrySettings| provider(&settings, &settings.otlp_endpoint.clone().unwrap()).unwrap_err();
        assert!(bad(settings("localhost:4317")).to_string().starts_with("telemetry.otlp_endpoint: "));
        let ratio = TelemetrySettings { sample_ratio: 1.5, ..settings("http://localhost:4317") };
        assert!(bad(ratio).to_string().starts_with("telemetry.sample_ratio: "));
        let delay = TelemetrySettings { export_delay_ms: 0, ..settings("http://localhost:4317") };
        assert!(bad(delay).to_string().starts_with("telemetry.export_delay_ms: "));
        for endpoint in ["http://127.0.0.1:4317", "https://collector.example:4317"] {
            Telemetry { provider: provider(&settings(endpoint), endpoint).unwrap() }.shutdown().await;
        }
    }
}
