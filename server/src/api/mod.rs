//! The gRPC surface: the Captioner service, standard health and reflection, and gRPC-Web
//! (with CORS) on the same port for browsers.

pub mod captioner;
pub mod convert;
pub mod status;
pub mod upload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tower_http::cors::CorsLayer;

use crate::error::{GitcapError, Result};
use crate::proto::captioner_server::CaptionerServer;
use crate::registry::Models;
use captioner::CaptionerService;
use convert::RequestLimits;

/// Health service name of the captioning API; each model also has `gitcap.v1.Captioner/<model>`.
pub const SERVICE_NAME: &str = "gitcap.v1.Captioner";

pub struct ServeOptions {
    pub limits: RequestLimits,
    pub max_message_bytes: usize,
    pub shutdown_grace: Duration,
}

/// Serves on `listener` until `shutdown` resolves; then reports NOT_SERVING, stops taking
/// requests and lets in-flight ones finish within the grace period.
pub async fn serve(
    listener: TcpListener,
    models: Arc<Models>,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health.set_service_status(SERVICE_NAME, ServingStatus::Serving).await;
    for name in models.names() {
        health.set_service_status(format!("{SERVICE_NAME}/{name}"), ServingStatus::Serving).await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| GitcapError::Internal(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| GitcapError::Internal(e.to_string()))?;
    let captioner = CaptionerServer::new(CaptionerService::new(models.clone(), options.limits))
        .max_decoding_message_size(options.max_message_bytes)
        .max_encoding_message_size(options.max_message_bytes);

    let grace = options.shutdown_grace;
    let draining = {
        let health = health.clone();
        let models = models.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, no new requests, {grace:?} for in-flight ones");
            health.set_service_status("", ServingStatus::NotServing).await;
            health.set_service_status(SERVICE_NAME, ServingStatus::NotServing).await;
            for name in models.names() {
                health.set_service_status(format!("{SERVICE_NAME}/{name}"), ServingStatus::NotServing).await;
            }
        }
    };
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .trace_fn(request_span)
        .accept_http1(true)
        .layer(CorsLayer::very_permissive())
        .layer(tonic_web::GrpcWebLayer::new())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(captioner)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            draining.await;
            let _ = stopped_tx.send(());
        });
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

/// Binds `addr` (port 0 = any free port).
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| GitcapError::invalid("server.listen", format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| GitcapError::Internal(e.to_string()))?;
    Ok((listener, local))
}
