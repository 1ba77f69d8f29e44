//! The browser page: `GET /` and `GET /index.html` answer with a small self-contained page
//! (`index.html`, embedded at build time) that captions an image or frames over gRPC-Web on the
//! same port. Every other request goes on to the gRPC services unchanged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, Method, Request, Response, StatusCode};
use tonic::body::Body;
use tonic::codegen::Service;

/// The page, HTML + CSS + JavaScript in one file.
pub const INDEX_HTML: &str = include_str!("index.html");

/// Whether a request asks for the page.
fn wants_page<B>(request: &Request<B>) -> bool {
    matches!(*request.method(), Method::GET | Method::HEAD) && matches!(request.uri().path(), "/" | "/index.html")
}

fn page_response(head_only: bool) -> Response<Body> {
    let body = if head_only { Body::empty() } else { Body::new(tonic::service::AxumBody::from(INDEX_HTML)) };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CONTENT_LENGTH, INDEX_HTML.len())
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .expect("a valid response")
}

/// Serves the page in front of the gRPC router.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageLayer;

impl<S> tower_layer::Layer<S> for PageLayer {
    type Service = PageService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PageService { inner }
    }
}

#[derive(Clone, Debug)]
pub struct PageService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PageService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
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

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if wants_page(&request) {
            let head_only = request.method() == Method::HEAD;
            return Box::pin(async move { Ok(page_response(head_only)) });
        }
        let future = self.inner.call(request);
        Box::pin(async move { Ok(future.await?.map(Body::new)) })
    }
}
