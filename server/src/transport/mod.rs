//! The one port every door shares: listeners (plain text or TLS), connection limits and ages,
//! HTTP/1.1 and HTTP/2, and where each request goes: `/v1/…` to the OpenAI-compatible API
//! (crate::openai), `/v2…` to the Open Inference Protocol's REST routes (crate::oip), `/` and
//! `/metrics` to crate::web, everything else to gRPC and gRPC-Web (crate::api and
//! crate::oip's `inference.GRPCInferenceService`), with health and reflection beside it.

mod connection_age;
mod connection_slots;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tower_http::cors::CorsLayer;

use crate::api::admin::AdminService;
use crate::api::captioner::CaptionerService;
use crate::api::{status, track_model_health, SERVICE_NAME, VIDEO_SERVICE_NAME};
use crate::device::DeviceSpec;
use crate::error::{GitcapError, Result};
use crate::model::Precision;
use crate::proto::admin_server::AdminServer;
use crate::proto::captioner_server::CaptionerServer;
use crate::registry::Registry;
use crate::service::auth::BearerAuth;
use crate::service::media::MediaService;
use crate::service::validation::RequestLimits;
use crate::service::Core;
use connection_age::AgedConnection;
use connection_slots::{ConnectionSlots, Slotted};

pub struct ServeOptions {
    pub limits: RequestLimits,
    /// Media decoding: budget, video decoder, URL fetching.
    pub media: Arc<MediaService>,
    pub max_message_bytes: usize,
    pub shutdown_grace: Duration,
    /// Bearer token for inference calls; `None` = open.
    pub inference_token: Option<String>,
    /// Bearer token for the admin service; without one the admin service is not served.
    pub admin_token: Option<String>,
    /// Serve the admin service on this listener instead of the main one.
    pub admin_listener: Option<TcpListener>,
    pub default_device: DeviceSpec,
    pub default_dtype: Precision,
    /// PEM certificate chain and private key: serve TLS instead of plain text.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Close connections after this age (GOAWAY), letting calls finish within the grace.
    pub max_connection_age: Option<(Duration, Duration)>,
    /// Calls open at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Connections open at once, on each listener.
    pub max_connections: usize,
    /// How long an HTTP/1.1 request body may take to arrive (crate::web).
    pub http1_body_timeout: Duration,
    /// The bounds on stored responses (`/v1/responses`).
    pub stored_responses: crate::openai::responses::StoreLimits,
    /// The OpenAI Files and Batches API's store, when `batch.data_dir` is set.
    pub batch: Option<Arc<crate::openai::batch::Batches>>,
}

/// Serves on `listener` until `shutdown` resolves; then reports NOT_SERVING, stops taking
/// requests and lets in-flight ones finish within the grace period.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
    let video = if options.media.video_available() { ServingStatus::Serving } else { ServingStatus::NotServing };
    health.set_service_status(VIDEO_SERVICE_NAME, video).await;
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    track_model_health(&registry, health.clone(), stopping.clone()).await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(gitcap_protocol::inference::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| GitcapError::Internal(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(gitcap_protocol::inference::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| GitcapError::Internal(e.to_string()))?;
    let inference_auth = BearerAuth::new(options.inference_token.take());
    let core = Arc::new(Core::new(registry.clone(), options.limits, options.media.clone()));
    let openai = crate::openai::router(
        crate::openai::OpenAi {
            core: core.clone(),
            auth: inference_auth.clone(),
            stored_responses: options.stored_responses,
        },
        options.max_message_bytes.saturating_mul(2),
        options.batch.take(),
    );
    // The Open Inference Protocol (crate::oip): REST under /v2 beside the OpenAI API, and
    // `inference.GRPCInferenceService` beside Captioner.
    let oip =
        Arc::new(crate::oip::Oip { core: core.clone(), auth: inference_auth.clone(), stopping: stopping.clone() });
    let openai = openai.nest(
        crate::oip::rest::PREFIX,
        crate::oip::rest::router(oip.clone(), options.max_message_bytes.saturating_mul(2)),
    );
    let oip_grpc = crate::oip::grpc::service(oip, options.max_message_bytes);
    let captioner = CaptionerServer::new(CaptionerService::new(core.clone()))
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);
    let captioner =
        tonic::service::interceptor::InterceptedService::new(captioner, move |request| inference_auth.check(request));
    let admin = options.admin_token.take().map(|token| {
        let auth = BearerAuth::new(Some(token));
        let service = AdminService::new(registry.clone(), options.default_device, options.default_dtype);
        AdminServer::with_interceptor(service, move |request| auth.check(request))
    });

    let grace = options.shutdown_grace;
    let draining = {
        let health = health.clone();
        let registry = registry.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, no new requests, {grace:?} for in-flight ones");
            stopping.store(true, std::sync::atomic::Ordering::Relaxed);
            registry.stop_accepting();
            health.set_service_status("", ServingStatus::NotServing).await;
            health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
            for (name, _) in registry.serving_names() {
                health.set_service_status(format!("{SERVICE_NAME}/{name}"), ServingStatus::NotServing).await;
            }
        }
    };
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let (max_concurrent_streams, http1_body_timeout) = (options.max_concurrent_streams, options.http1_body_timeout);
    let max_connections = options.max_connections;
    let (admin_here, admin_apart) = match options.admin_listener.take() {
        Some(listener) => (None, Some((admin, listener))),
        None => (admin, None),
    };
    if let Some((admin, listener)) = admin_apart {
        // The admin service (when it has a token) on its own address, not reachable from the
        // inference port; `GET /metrics` there too (crate::web).
        tokio::spawn(async move {
            let served = Server::builder()
                .trace_fn(request_span)
                .accept_http1(true)
                .max_concurrent_streams(max_concurrent_streams)
                .layer(crate::web::PageLayer::metrics_only(http1_body_timeout))
                .add_optional_service(admin)
                .serve_with_incoming(incoming(listener, None, ConnectionSlots::new(max_connections)))
                .await;
            if let Err(e) = served {
                tracing::error!(%e, "admin server stopped");
            }
        });
    }
    let mut builder = Server::builder().max_concurrent_streams(max_concurrent_streams);
    // GOAWAY at the age (tonic); the hard close after the grace is the connection's own
    // (connection_age), since tonic's own grace would skip the GOAWAY.
    let lifetime = options.max_connection_age.map(|(age, grace)| age + grace);
    if let Some((age, _)) = options.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    if let Some((cert, key)) = options.tls.take() {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| GitcapError::invalid("server.tls_cert", format!("TLS certificate or key: {e}")))?;
    }
    let server = builder
        .trace_fn(request_span)
        .accept_http1(true)
        // `GET /`: the browser page, `GET /metrics` (crate::web), `/v1/…`: the OpenAI-compatible
        // API (crate::openai); everything else goes on to gRPC.
        .layer(crate::web::PageLayer::main(openai, http1_body_timeout))
        .layer(CorsLayer::very_permissive())
        .layer(status::OversizedMessageLayer)
        .layer(tonic_web::GrpcWebLayer::new())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(captioner)
        .add_service(oip_grpc)
        .add_optional_service(admin_here)
        .serve_with_incoming_shutdown(
            incoming(listener, lifetime, ConnectionSlots::new(max_connections)),
            async move {
                draining.await;
                let _ = stopped_tx.send(());
            },
        );
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.map_err(|e| GitcapError::Internal(e.to_string()))?,
        _ = async { let _ = stopped_rx.await; tokio::time::sleep(grace).await } => {
            tracing::warn!("grace period over: dropping the requests still running");
        }
    }
    Ok(())
}

/// One span per request, named by its method, with the caller's `x-request-id` or a number.
fn request_span(request: &http::Request<()>) -> tracing::Span {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = match request.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(given) => given.to_string(),
        None => NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string(),
    };
    tracing::info_span!("request", id, method = request.uri().path())
}

/// Accepted connections with Nagle's algorithm off: a response is written as several small
/// frames (headers, message, trailers), and with Nagle on the trailers wait for the client's
/// delayed ACK (~40 ms on Linux) on every call. Each is closed `lifetime` after it was accepted
/// (`None`: never). Each holds one of `slots` while open: at the cap, nothing is accepted.
///
/// An accept that fails for the server's own reasons (out of file descriptors or memory) is
/// retried after a pause that doubles up to a second: the listener stays readable while the
/// connection waits in the backlog, so retrying at once would spin a core (and tonic's own loop
/// retries at once). Errors of one connection (reset before it was accepted) are skipped.
fn incoming(
    listener: TcpListener,
    lifetime: Option<Duration>,
    slots: ConnectionSlots,
) -> impl tokio_stream::Stream<Item = std::io::Result<Slotted<AgedConnection>>> {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const LONGEST_PAUSE: Duration = Duration::from_secs(1);
    futures::stream::unfold(listener, move |listener| {
        let slots = slots.clone();
        async move {
            let slot = slots.take().await;
            let mut pause = FIRST_PAUSE;
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let accepted = stream.set_nodelay(true).map(|()| AgedConnection::new(stream, lifetime));
                        return Some((accepted.map(|c| Slotted::new(c, slot)), listener));
                    }
                    Err(e) if of_one_connection(&e) => continue,
                    Err(e) => {
                        tracing::warn!(%e, "cannot accept a connection; trying again in {pause:?}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(LONGEST_PAUSE);
                    }
                }
            }
        }
    })
}

/// Whether an accept error concerns only the connection being accepted (the next may succeed at
/// once), rather than the server (EMFILE, ENFILE, ENOBUFS, ENOMEM).
fn of_one_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(error.kind(), ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock)
}

/// Binds `addr` (port 0 = any free port).
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| GitcapError::invalid("server.listen", format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| GitcapError::Internal(e.to_string()))?;
    Ok((listener, local))
}
