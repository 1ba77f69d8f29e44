//! A tiny HTTP/1.1 server on 127.0.0.1 for the fetch tests: a canned [`Reply`] per request path,
//! plain or over TLS, counting the connections it accepts and the body bytes it manages to send.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the server answers to one request.
#[derive(Clone)]
pub enum Reply {
    /// A status, headers and a body sent with its `Content-Length`.
    Full { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// 200, then `total` bytes in 64 KiB writes; `declared` is the `Content-Length` sent, if any
    /// (without one, the body ends when the connection closes).
    Stream { declared: Option<u64>, total: u64 },
    /// 200 with a `Content-Length` of 1000 and 10 bytes of body, then nothing for a minute.
    StallInBody,
    /// Reads the request and answers nothing for a minute.
    StallBeforeHeaders,
}

impl Reply {
    pub fn ok(content_type: &str, body: &[u8]) -> Self {
        Self::Full { status: 200, headers: vec![("Content-Type".into(), content_type.into())], body: body.to_vec() }
    }

    pub fn status(status: u16) -> Self {
        Self::Full { status, headers: Vec::new(), body: format!("status {status}").into_bytes() }
    }

    pub fn redirect(status: u16, location: &str) -> Self {
        Self::Full { status, headers: vec![("Location".into(), location.into())], body: Vec::new() }
    }
}

type Routes = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Counters shared with the connection tasks.
#[derive(Default)]
struct Counters {
    accepted: AtomicUsize,
    finished: AtomicUsize,
    body_bytes_sent: AtomicU64,
}

pub struct TestServer {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    accept_loop: JoinHandle<()>,
}

impl TestServer {
    /// A plain HTTP server answering each path with `routes(path)`.
    pub async fn start(routes: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_inner(Arc::new(routes), None).await
    }

    /// An HTTPS server with the given certificate and key.
    pub async fn start_tls(
        routes: impl Fn(&str) -> Reply + Send + Sync + 'static,
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        Self::start_inner(Arc::new(routes), Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_inner(routes: Routes, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let accept_loop = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let (routes, counters, tls) = (routes.clone(), shared.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, &routes, &counters).await;
                            }
                        }
                        None => serve(stream, &routes, &counters).await,
                    }
                    counters.finished.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, counters, accept_loop }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn connections(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// The body bytes written so far, over all connections.
    pub fn body_bytes_sent(&self) -> u64 {
        self.counters.body_bytes_sent.load(Ordering::SeqCst)
    }

    /// Waits (up to 10 s) until every accepted connection has been served or dropped.
    pub async fn wait_idle(&self) {
        for _ in 0..1000 {
            if self.counters.finished.load(Ordering::SeqCst) == self.connections() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the test server still has connections open after 10 s");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, routes: &Routes, counters: &Counters) {
    let Some(path) = read_request_path(&mut stream).await else { return };
    let head = |status: u16, headers: &[(String, String)], length: Option<u64>| {
        let mut head = format!("HTTP/1.1 {status} {}\r\nConnection: close\r\n", reason(status));
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(length) = length {
            head.push_str(&format!("Content-Length: {length}\r\n"));
        }
        head + "\r\n"
    };
    let _ = match routes(&path) {
        Reply::Full { status, headers, body } => {
            let head = head(status, &headers, Some(body.len() as u64));
            send(&mut stream, head.as_bytes(), &body, counters).await
        }
        Reply::Stream { declared, total } => {
            let octet = [("Content-Type".to_string(), "application/octet-stream".to_string())];
            let mut result = stream.write_all(head(200, &octet, declared).as_bytes()).await;
            let chunk = vec![0x5a; 64 << 10];
            let mut left = total;
            while result.is_ok() && left > 0 {
                let n = left.min(chunk.len() as u64);
                result = stream.write_all(&chunk[..n as usize]).await;
                if result.is_ok() {
                    counters.body_bytes_sent.fetch_add(n, Ordering::SeqCst);
                    left -= n;
                }
            }
            result
        }
        Reply::StallInBody => {
            let result = send(&mut stream, head(200, &[], Some(1000)).as_bytes(), &[0; 10], counters).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            result
        }
        Reply::StallBeforeHeaders => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
    };
    let _ = stream.shutdown().await;
}

async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    head: &[u8],
    body: &[u8],
    counters: &Counters,
) -> std::io::Result<()> {
    stream.write_all(head).await?;
    stream.write_all(body).await?;
    counters.body_bytes_sent.fetch_add(body.len() as u64, Ordering::SeqCst);
    stream.flush().await
}

/// The path of a GET request, once its head has arrived.
async fn read_request_path<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&buf[..n]);
        if head.len() > 64 << 10 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut request_line = head.lines().next()?.split(' ');
    (request_line.next()? == "GET").then_some(())?;
    request_line.next().map(str::to_string)
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Whatever")
}
