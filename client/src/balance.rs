//! Per-call load balancing over replicas: a channel that sends each call to the next replica a
//! name resolves to (round robin), and resolves the name again whenever one of its connections
//! ends or fails to connect, as gRPC's `dns:///` resolver with the `round_robin` policy does.
//!
//! A gRPC client keeps its HTTP/2 connections open for as long as they work, so on its own it
//! never notices replicas added after it resolved the name. Servers that close connections after
//! a maximum age (gitcap's `server.max_connection_age_secs`) end that: each close makes this
//! channel resolve again and connect to the replicas it finds, within the age (plus its grace).
//!
//! A call that meets a connection as the server closes it (sent just after the server's GOAWAY,
//! or onto a socket the server has just closed) never reached the server: like gRPC's
//! transparent retries, such a call is sent again, on the next replica, when its request is
//! whole in memory (unary and server-streaming calls; a request still being streamed is not
//! retried). Calls the server may have seen are never sent twice.
//!
//! ```no_run
//! # async fn run() -> gitcap_client::Result<()> {
//! use gitcap_client::balance::{self, BalanceOptions};
//! use gitcap_client::proto::captioner_client::CaptionerClient;
//! use gitcap_client::ClientConfig;
//!
//! let base = ClientConfig::new("http://unused");
//! let channel = balance::connect("dns:///gitcap-headless.prod.svc:50051", &base, BalanceOptions::default()).await?;
//! let mut captioner = CaptionerClient::new(channel);
//! # Ok(())
//! # }
//! ```

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tonic::body::Body;
use tonic::codegen::{http, Service};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::client::{endpoint, ClientConfig};
use crate::error::{Error, Result};
use crate::replicas::dns_target;

/// Resolves the replicas' addresses (a DNS look-up, or any other source of addresses).
pub type Resolver = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> + Send + Sync>;

/// When to resolve again.
#[derive(Clone, Debug)]
pub struct BalanceOptions {
    /// At least this long between two resolutions (many connections ending together resolve once).
    pub min_resolve_interval: Duration,
    /// Also resolve this often when no connection ends; `None` (the default, as in gRPC): only
    /// when a connection ends or fails.
    pub refresh_every: Option<Duration>,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        Self { min_resolve_interval: Duration::from_secs(1), refresh_every: None }
    }
}

/// A channel over every replica; clones share the replicas and their connections. Use it with
/// the generated stubs (`CaptionerClient::new(channel)`).
#[derive(Clone)]
pub struct BalancedChannel {
    shared: Arc<Shared>,
}

struct Shared {
    /// Sorted by address.
    replicas: RwLock<Vec<Replica>>,
    next: AtomicUsize,
}

struct Replica {
    address: SocketAddr,
    channel: Channel,
    /// Its last connection attempt failed: skipped while others work.
    failing: Arc<AtomicBool>,
}

/// Resolves `spec`, `dns:///host:port` (also `dns:host:port`), with the system resolver; each
/// address takes `base`'s scheme, TLS settings and connect timeout (with TLS, the certificate
/// is checked against `host` unless `base.tls_domain` says otherwise).
pub async fn connect(spec: &str, base: &ClientConfig, options: BalanceOptions) -> Result<BalancedChannel> {
    let target = spec
        .trim()
        .strip_prefix("dns:")
        .ok_or_else(|| Error::Resolve(format!("{spec:?}: a balanced channel follows a name: dns:///host:port")))?;
    let (host, port) = dns_target(target)?;
    let mut base = base.clone();
    if base.tls_domain.is_none() {
        base.tls_domain = Some(host.clone());
    }
    let resolver: Resolver = Arc::new(move || {
        let host = host.clone();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    });
    connect_with(resolver, &base, options).await
}

/// Like [`connect`], with addresses from `resolver`.
pub async fn connect_with(resolver: Resolver, base: &ClientConfig, options: BalanceOptions) -> Result<BalancedChannel> {
    let scheme = if base.url.starts_with("https://") { "https" } else { "http" };
    let base = base.clone();
    let endpoint_for =
        move |address: SocketAddr| endpoint(&ClientConfig { url: format!("{scheme}://{address}"), ..base.clone() });
    let addresses = resolve(&resolver).await?;
    let ended = Arc::new(Notify::new());
    let shared = Arc::new(Shared { replicas: RwLock::new(Vec::new()), next: AtomicUsize::new(0) });
    shared.update(addresses, &endpoint_for, &ended)?;
    tokio::spawn(keep_resolving(Arc::downgrade(&shared), resolver, endpoint_for, ended, options));
    Ok(BalancedChannel { shared })
}

impl BalancedChannel {
    /// The replicas' addresses now, sorted.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.shared.read().iter().map(|replica| replica.address).collect()
    }
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Replica>> {
        self.replicas.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The next replica's channel, round robin, skipping replicas that failed to connect while
    /// some have not.
    fn pick(&self) -> Channel {
        let replicas = self.read();
        let working: Vec<&Replica> = replicas.iter().filter(|r| !r.failing.load(Ordering::Relaxed)).collect();
        let choices = if working.is_empty() { replicas.iter().collect() } else { working };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        choices[n % choices.len()].channel.clone()
    }

    /// Keeps the replicas still at `addresses` (and their connections), adds the new ones.
    fn update(
        &self,
        mut addresses: Vec<SocketAddr>,
        endpoint_for: &impl Fn(SocketAddr) -> Result<Endpoint>,
        ended: &Arc<Notify>,
    ) -> Result<()> {
        addresses.sort();
        addresses.dedup();
        let mut replicas = self.replicas.write().unwrap_or_else(|e| e.into_inner());
        let mut old = std::mem::take(&mut *replicas);
        for address in addresses {
            let replica = match old.iter().position(|r| r.address == address) {
                Some(kept) => old.swap_remove(kept),
                None => {
                    let failing = Arc::new(AtomicBool::new(false));
                    let connector = Connector { address, failing: failing.clone(), ended: ended.clone() };
                    Replica { address, channel: endpoint_for(address)?.connect_with_connector_lazy(connector), failing }
                }
            };
            replicas.push(replica);
        }
        Ok(())
    }
}

async fn resolve(resolver: &Resolver) -> Result<Vec<SocketAddr>> {
    let addresses = resolver().await.map_err(|e| Error::Resolve(e.to_string()))?;
    if addresses.is_empty() {
        return Err(Error::Resolve("the name resolves to no address".into()));
    }
    Ok(addresses)
}

/// Resolves again each time a connection ends or fails (and every `refresh_every`), until the
/// channel is dropped. A failed or empty resolution keeps the replicas there were.
async fn keep_resolving(
    shared: Weak<Shared>,
    resolver: Resolver,
    endpoint_for: impl Fn(SocketAddr) -> Result<Endpoint>,
    ended: Arc<Notify>,
    options: BalanceOptions,
) {
    let mut last = tokio::time::Instant::now();
    loop {
        match options.refresh_every {
            Some(every) => {
                let _ = tokio::time::timeout(every, ended.notified()).await;
            }
            None => ended.notified().await,
        }
        tokio::time::sleep_until(last + options.min_resolve_interval).await;
        last = tokio::time::Instant::now();
        let Some(shared) = shared.upgrade() else { return };
        if let Ok(addresses) = resolve(&resolver).await {
            let _ = shared.update(addresses, &endpoint_for, &ended);
        }
    }
}

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        // Each call waits on the replica it is given.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let whole = match whole_body(body) {
                Ok(bytes) => bytes,
                // Still being streamed: one try.
                Err(body) => return send(shared.pick(), http::Request::from_parts(parts, body)).await,
            };
            let again = |parts: &http::request::Parts| {
                let mut request = http::Request::new(Body::new(http_body_util::Full::new(whole.clone())));
                *request.method_mut() = parts.method.clone();
                *request.uri_mut() = parts.uri.clone();
                *request.version_mut() = parts.version;
                *request.headers_mut() = parts.headers.clone();
                request
            };
            let mut tries = 0;
            loop {
                tries += 1;
                let mut request = again(&parts);
                if tries == 1 {
                    *request.extensions_mut() = parts.extensions.clone();
                }
                match send(shared.pick(), request).await {
                    Err(error) if tries <= RETRIES && never_reached_the_server(&error) => continue,
                    result => return result,
                }
            }
        })
    }
}

/// Sends of a call the server never saw, after the first.
const RETRIES: usize = 2;

async fn send(
    mut channel: Channel,
    request: http::Request<Body>,
) -> std::result::Result<http::Response<Body>, tonic::transport::Error> {
    std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
    channel.call(request).await
}

/// The request body's bytes when it is all there already (a unary or server-streaming call);
/// otherwise the body, unchanged in what it will yield.
fn whole_body(mut body: Body) -> std::result::Result<Bytes, Body> {
    let mut read = Vec::new();
    loop {
        match body.frame().now_or_never() {
            Some(None) if read.len() == 1 => return Ok(read.remove(0)),
            Some(None) => return Ok(read.iter().flat_map(|data| data.iter().copied()).collect::<Vec<u8>>().into()),
            Some(Some(Ok(frame))) if frame.is_data() => {
                read.push(frame.into_data().unwrap_or_default());
            }
            // Trailers, an error, or more to come later: pass it all on as it is.
            other => {
                let first: Vec<std::result::Result<http_body::Frame<Bytes>, tonic::Status>> =
                    read.into_iter().map(|data| Ok(http_body::Frame::data(data))).collect();
                let next = match other {
                    Some(Some(frame)) => vec![frame],
                    _ => vec![],
                };
                let rest = http_body_util::BodyStream::new(body);
                let stream = futures::stream::iter(first.into_iter().chain(next)).chain(rest);
                return Err(Body::new(http_body_util::StreamBody::new(stream)));
            }
        }
    }
}

/// Whether `error` means the call never reached the server: the connection was refused, was
/// already closed (broken pipe), or the server refused the stream or had said GOAWAY before it.
fn never_reached_the_server(error: &tonic::transport::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = error.source();
    while let Some(error) = source {
        if error.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            let closed = h2.get_io().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe);
            if closed
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
            {
                return true;
            }
        }
        if let Some(io) = error.downcast_ref::<io::Error>() {
            if matches!(io.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionRefused) {
                return true;
            }
        }
        source = error.source();
    }
    false
}

/// Connects one replica's channel to its address, noting failures and, through `ended`, every
/// connection that ends or fails.
#[derive(Clone)]
struct Connector {
    address: SocketAddr,
    failing: Arc<AtomicBool>,
    ended: Arc<Notify>,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<Watched>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let Connector { address, failing, ended } = self.clone();
        Box::pin(async move {
            match TcpStream::connect(address).await.and_then(|s| s.set_nodelay(true).map(|()| s)) {
                Ok(stream) => {
                    failing.store(false, Ordering::Relaxed);
                    Ok(TokioIo::new(Watched { stream, ended }))
                }
                Err(error) => {
                    failing.store(true, Ordering::Relaxed);
                    ended.notify_one();
                    Err(error)
                }
            }
        })
    }
}

/// A connection that says when it is gone (hyper drops it once the connection has ended,
/// after a GOAWAY or an error).
struct Watched {
    stream: TcpStream,
    ended: Arc<Notify>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.ended.notify_one();
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_whole_request_is_kept_for_a_retry_and_a_streamed_one_passes_through_intact() {
        let whole = Body::new(http_body_util::Full::new(Bytes::from_static(b"one message")));
        assert_eq!(whole_body(whole).unwrap(), Bytes::from_static(b"one message"));

        // Two frames now, a third later: not retriable, and nothing is lost or reordered.
        let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<http_body::Frame<Bytes>, tonic::Status>>(4);
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"a")))).await.unwrap();
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"b")))).await.unwrap();
        let streamed = Body::new(http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)));
        let passed = whole_body(streamed).expect_err("a body still streaming is not buffered");
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"c")))).await.unwrap();
        drop(tx);
        assert_eq!(collect(passed).await, b"abc");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_call_that_never_reached_a_server() {
        // Nothing listens on this port: refused, so never reached.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let resolver: Resolver = Arc::new(move || Box::pin(async move { Ok(vec![closed]) }));
        let mut channel =
            connect_with(resolver, &ClientConfig::new("http://unused"), BalanceOptions::default()).await.unwrap();
        assert_eq!(channel.addresses(), [closed]);
        let request = http::Request::builder().uri(format!("http://{closed}/x")).body(Body::empty()).unwrap();
        let error = channel.call(request).await.unwrap_err();
        assert!(never_reached_the_server(&error), "{error:?}");
    }
}
