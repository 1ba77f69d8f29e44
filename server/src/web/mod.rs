//! Plain HTTP in front of the gRPC services: `GET /` and `GET /index.html` answer with the page
//! (`index.html` and its scripts and style sheet, [`ASSETS`], embedded at build time, no build
//! step) that captions an image, frames or a video and answers questions about it over gRPC-Web
//! on the same port, with dense captions of a video as a subtitle track; `GET
//! /metrics` with the Prometheus metrics (crate::metrics), open like health; `/v1/…` goes to the
//! OpenAI-compatible API (crate::openai). Every other request goes on to the gRPC services
//! unchanged, except that an HTTP/1.1 request's body must arrive within
//! `server.http1_body_timeout_secs` ([`crate::deadline::TimedBody`]): a client that sends its headers and then
//! trickles (or never finishes) its body is answered and disconnected instead of holding the
//! connection open forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, Method, Request, Response, StatusCode, Version};
use tonic::body::Body;
use tonic::codegen::Service;

/// The page's files: path, content type, content.
pub static ASSETS: LazyLock<[(&str, &str, &str); 5]> = LazyLock::new(|| {
    [
        ("/index.html", "text/html; charset=utf-8", INDEX.as_str()),
        ("/page.css", "text/css; charset=utf-8", include_str!("page.css")),
        ("/grpcweb.js", "text/javascript; charset=utf-8", include_str!("grpcweb.js")),
        ("/subtitles.js", "text/javascript; charset=utf-8", include_str!("subtitles.js")),
        ("/page.js", "text/javascript; charset=utf-8", include_str!("page.js")),
    ]
});

/// The page, its file picker taking what this server decodes: the media table's MIME types and
/// extensions (gitcap_protocol::media_kind), not every `image/*` and `video/*`.
static INDEX: LazyLock<String> = LazyLock::new(|| include_str!("index.html").replace("{{accept}}", &accepted_files()));

fn accepted_files() -> String {
    let kinds = gitcap_protocol::media_kind::all_kinds();
    let names = kinds.flat_map(|kind| {
        let extensions = kind.extensions.iter().map(|e| format!(".{e}"));
        kind.mime_types.iter().map(|m| m.to_string()).chain(extensions)
    });
    names.collect::<Vec<_>>().join(",")
}

enum Route {
    Page(&'static str, &'static str),
    Metrics,
}

/// What a request asks for, if it is one of ours.
fn route<B>(request: &Request<B>, page: bool) -> Option<Route> {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return None;
    }
    let path = match request.uri().path() {
        "/metrics" => return Some(Route::Metrics),
        "/" => "/index.html",
        path => path,
    };
    let (_, content_type, content) = ASSETS.iter().find(|(asset, ..)| page && *asset == path)?;
    Some(Route::Page(content_type, content))
}

fn text_response(status: StatusCode, content_type: &str, text: String, head_only: bool) -> Response<Body> {
    let length = text.len();
    let body = if head_only { Body::empty() } else { Body::new(tonic::service::AxumBody::from(text)) };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, length)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("a valid response")
}

fn respond(route: Route, head_only: bool) -> Response<Body> {
    match route {
        Route::Page(content_type, content) => text_response(StatusCode::OK, content_type, content.into(), head_only),
        Route::Metrics => match crate::metrics::render() {
            Some(text) => text_response(StatusCode::OK, crate::metrics::CONTENT_TYPE, text, head_only),
            None => {
                let text =
                    "metrics are off on this server: set [metrics] enabled = true (GITCAP__METRICS__ENABLED=true)\n";
                text_response(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", text.into(), head_only)
            }
        },
    }
}

/// Whether a path is one of the HTTP doors' (the OpenAI-compatible API's `/v1/…`, the Open
/// Inference Protocol's `/v2…`) rather than gRPC's.
fn to_http_doors(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/v2" || path.starts_with("/v2/")
}

/// Serves the page, `/metrics` and the OpenAI-compatible API in front of the gRPC router.
#[derive(Clone)]
pub struct PageLayer {
    page: bool,
    openai: Option<axum::Router>,
    http1_body_timeout: Duration,
}

impl PageLayer {
    /// The main port: the page, `/metrics` and `/v1/…` (the OpenAI-compatible API).
    pub fn main(openai: axum::Router, http1_body_timeout: Duration) -> Self {
        Self { page: true, openai: Some(openai), http1_body_timeout }
    }

    /// The admin listener: `/metrics` only.
    pub fn metrics_only(http1_body_timeout: Duration) -> Self {
        Self { page: false, openai: None, http1_body_timeout }
    }
}

impl<S> tower_layer::Layer<S> for PageLayer {
    type Service = PageService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PageService { inner, page: self.page, openai: self.openai.clone(), http1_body_timeout: self.http1_body_timeout }
    }
}

#[derive(Clone)]
pub struct PageService<S> {
    inner: S,
    page: bool,
    openai: Option<axum::Router>,
    http1_body_timeout: Duration,
}

impl<S, ResBody> Service<Request<Body>> for PageService<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    ResBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Some(route) = route(&request, self.page) {
            let head_only = request.method() == Method::HEAD;
            return Box::pin(async move { Ok(respond(route, head_only)) });
        }
        let request = if request.version() <= Version::HTTP_11 {
            let timeout = self.http1_body_timeout;
            request.map(|body| Body::new(crate::deadline::TimedBody::new(body, timeout)))
        } else {
            request
        };
        if let Some(openai) = self.openai.as_ref().filter(|_| to_http_doors(request.uri().path())) {
            let mut openai = openai.clone();
            let request = request.map(axum::body::Body::new);
            return Box::pin(async move {
                let response = openai.call(request).await.unwrap_or_else(|never| match never {});
                Ok(response.map(Body::new))
            });
        }
        let future = self.inner.call(request);
        Box::pin(async move { Ok(future.await?.map(Body::new)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, page: bool) -> Option<Route> {
        route(&Request::get(path).body(()).unwrap(), page)
    }

    #[test]
    fn every_file_the_page_loads_is_served_with_its_type_on_the_main_port_only() {
        let index = ASSETS[0].2;
        // The picker takes exactly the media table's kinds.
        let accept = index.split("accept=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap();
        assert_eq!(accept, accepted_files());
        assert!(accept.contains("video/mp4") && accept.contains(".mkv") && !accept.contains("video/*"), "{accept}");
        let linked: Vec<&str> = index
            .split(['"', '\''])
            .filter(|piece| piece.starts_with('/') && piece.len() > 1 && !piece.starts_with("/v1/"))
            .collect();
        assert!(linked.len() >= 4, "{linked:?}");
        for path in linked.iter().copied().chain(["/", "/index.html"]) {
            let Some(Route::Page(content_type, content)) = get(path, true) else { panic!("{path} is not served") };
            let expected = if path.ends_with(".css") {
                "text/css"
            } else if path.ends_with(".js") {
                "text/javascript"
            } else {
                "text/html"
            };
            assert!(content_type.starts_with(expected) && !content.is_empty(), "{path}: {content_type}");
            assert!(get(path, false).is_none(), "{path} on the admin listener");
        }
        assert!(get("/page.js.map", true).is_none() && get("/../Cargo.toml", true).is_none());
        assert!(matches!(get("/metrics", false), Some(Route::Metrics)));
    }
}
