//! The protocol over REST, under `/v2`: health, server and model metadata, model readiness and
//! inference, with the protocol's JSON tensors and Triton's binary tensor data extension as
//! tritonclient's and the kserve SDK's HTTP clients send and read it: a body of JSON followed by
//! the tensors' raw bytes, the JSON's length in the `Inference-Header-Content-Length` header,
//! each binary input's size in its `binary_data_size` parameter. Outputs are binary when asked
//! (`binary_data` on an output, or `binary_data_output` on the request), else JSON. In JSON, a
//! media input's BYTES elements are base64 strings (JSON strings cannot hold arbitrary bytes); the
//! question is plain text. Errors: `{"error": "..."}` with the HTTP status of the error's gRPC
//! code. The health routes are open (probes); the others need the inference token, when one is
//! set, checked before any of the body is read.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::contract::{self, Elements, InferRequest, InputTensor, Output, OutputData, Param, TensorSpec};
use super::{Inferred, Oip};
use crate::error::GitcapError;
use crate::service::body::BodyError;

/// The header giving the length of a binary request's (or response's) JSON part.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

struct Served {
    oip: Arc<Oip>,
    max_body_bytes: usize,
}

/// The path every route of the protocol is under.
pub const PREFIX: &str = "/v2";

/// The routes, to nest under [`PREFIX`]; request bodies up to `max_body_bytes`.
pub fn router(oip: Arc<Oip>, max_body_bytes: usize) -> Router {
    let state = Arc::new(Served { oip, max_body_bytes });
    let guarded = Router::new()
        .route("/", get(server_metadata))
        .route("/models/{model}", get(model_metadata))
        .route("/models/{model}/versions/{version}", get(model_metadata_at))
        .route("/models/{model}/ready", get(model_ready))
        .route("/models/{model}/versions/{version}/ready", get(model_ready_at))
        .route("/models/{model}/infer", post(infer))
        .route("/models/{model}/versions/{version}/infer", post(infer_at))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/health/live", get(|| async { Json(json!({ "live": true })) }))
        .route("/health/ready", get(server_ready))
        .merge(guarded)
        .fallback(|| async {
            let error =
                GitcapError::invalid("path", "no such endpoint of the Open Inference Protocol (see docs/oip.md)");
            RestError::with_status(error, StatusCode::NOT_FOUND)
        })
        .layer(tower_http::cors::CorsLayer::very_permissive())
        .with_state(state)
}

/// An error as the protocol writes it: `{"error": "..."}`, with the HTTP status of its gRPC
/// code, or one of HTTP's own (413, 408) for a body too large or too slow.
pub struct RestError {
    error: GitcapError,
    status: Option<StatusCode>,
}

impl RestError {
    fn with_status(error: GitcapError, status: StatusCode) -> Self {
        Self { error, status: Some(status) }
    }
}

impl From<GitcapError> for RestError {
    fn from(error: GitcapError) -> Self {
        Self { error: contract::in_oip_terms(error), status: None }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or_else(|| crate::error::http_status(self.error.code()));
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.error, "internal error");
        }
        (status, Json(json!({ "error": self.error.to_string() }))).into_response()
    }
}

async fn authorize(State(state): State<Arc<Served>>, request: Request, next: Next) -> Response {
    let header = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if state.oip.auth.allows(header) {
        next.run(request).await
    } else {
        RestError::from(GitcapError::Unauthenticated).into_response()
    }
}

async fn server_ready(State(state): State<Arc<Served>>) -> Response {
    let ready = state.oip.server_ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn server_metadata() -> Json<Value> {
    Json(json!({ "name": "gitcap", "version": env!("CARGO_PKG_VERSION"), "extensions": super::EXTENSIONS }))
}

async fn model_metadata(State(state): State<Arc<Served>>, Path(model): Path<String>) -> Result<Json<Value>, RestError> {
    metadata(&state, &model, "")
}

async fn model_metadata_at(
    State(state): State<Arc<Served>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, RestError> {
    metadata(&state, &model, &version)
}

fn metadata(state: &Served, model: &str, version: &str) -> Result<Json<Value>, RestError> {
    let metadata = state.oip.model_metadata(model, version)?;
    let tensor = |spec: TensorSpec| json!({ "name": spec.name, "datatype": spec.datatype, "shape": spec.shape });
    let properties: Map<String, Value> = metadata.properties.into_iter().map(|(k, v)| (k, v.into())).collect();
    Ok(Json(json!({
        "name": metadata.name,
        "versions": metadata.versions,
        "platform": contract::PLATFORM,
        "inputs": contract::INPUTS.map(tensor),
        "outputs": Output::ALL.map(|o| tensor(o.spec())),
        "properties": properties,
    })))
}

async fn model_ready(State(state): State<Arc<Served>>, Path(model): Path<String>) -> Result<Response, RestError> {
    ready(&state, &model, "")
}

async fn model_ready_at(
    State(state): State<Arc<Served>>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Response, RestError> {
    ready(&state, &model, &version)
}

/// 200 when ready, 503 when loaded but not serving (loading, draining, shutting down).
fn ready(state: &Served, model: &str, version: &str) -> Result<Response, RestError> {
    let ready = state.oip.model_ready(model, version)?;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(json!({ "name": model, "ready": ready }))).into_response())
}

async fn infer(
    State(state): State<Arc<Served>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    run(&state, &model, "", headers, body).await
}

async fn infer_at(
    State(state): State<Arc<Served>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    run(&state, &model, &version, headers, body).await
}

async fn run(
    state: &Served,
    model: &str,
    version: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    let (read, id, binary) = match read_body(state, &headers, body).await {
        Ok((read, id, binary)) => (Ok(read), id, binary),
        // Counted as the call's outcome; a body too large or too slow keeps its HTTP status.
        Err(RestError { error, status: Some(status) }) => return Err(RestError::with_status(error, status)),
        Err(RestError { error, status: None }) => (Err(error), None, Binary { all: false, named: vec![] }),
    };
    let inferred = state.oip.infer(model, version, read, &headers).await?;
    Ok(respond(inferred, id, &binary))
}

/// Reads a request's body within the size limit and the media budget, and parses it off the
/// async threads (crate::service::body).
async fn read_body(state: &Served, headers: &HeaderMap, body: Body) -> Result<Parsed, RestError> {
    if headers.get(header::CONTENT_ENCODING).is_some_and(|v| v != "identity") {
        return Err(GitcapError::invalid("content-encoding", "compressed request bodies are not accepted").into());
    }
    let json_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| {
            GitcapError::invalid(HEADER_LENGTH, "must be the length of the request's JSON part, in bytes")
        })?),
    };
    let budget = state.oip.core.media.budget();
    let parse = move |bytes: Vec<u8>| parse(&bytes, json_length);
    crate::service::body::read_and_parse(body, headers, state.max_body_bytes, budget, parse).await
}

impl From<BodyError> for RestError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge { limit } => {
                let message = format!(
                    "the request body is larger than the {limit} bytes this server accepts (server.max_message_bytes × 2)"
                );
                RestError::with_status(GitcapError::invalid("body", message), StatusCode::PAYLOAD_TOO_LARGE)
            }
            BodyError::TimedOut(message) => {
                RestError::with_status(GitcapError::invalid("body", message), StatusCode::REQUEST_TIMEOUT)
            }
            BodyError::Unreadable(message) => GitcapError::invalid("body", message).into(),
            BodyError::Refused(error) => error.into(),
        }
    }
}

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Vec<JsonOutput>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// A parsed request: what the contract reads, its `id`, and which outputs to write as binary.
pub type Parsed = (InferRequest, Option<String>, Binary);

/// Which outputs to write as binary data: those asked for by name, else all or none.
pub struct Binary {
    all: bool,
    named: Vec<(String, bool)>,
}

impl Binary {
    fn of(&self, name: &str) -> bool {
        self.named.iter().find(|(n, _)| n == name).map_or(self.all, |(_, binary)| *binary)
    }
}

/// Parses a request body: JSON, followed by binary tensor data when `json_length` is given.
/// CPU work proportional to the body: call it off the async threads.
pub fn parse(body: &[u8], json_length: Option<usize>) -> Result<Parsed, RestError> {
    let (json, mut binary) = match json_length {
        Some(n) if n > body.len() => {
            return Err(GitcapError::invalid(
                HEADER_LENGTH,
                format!("{n} bytes of JSON, but the body has {} bytes", body.len()),
            )
            .into())
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    let request: JsonRequest = serde_json::from_slice(json)
        .map_err(|e| GitcapError::invalid("body", format!("not an inference request of the protocol: {e}")))?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for (i, input) in request.inputs.into_iter().enumerate() {
        let field = contract::input_field(i, &input.name);
        let elements = match (input.parameters.get("binary_data_size"), input.data) {
            (Some(size), None) => {
                let size = size.as_u64().filter(|n| *n <= binary.len() as u64).ok_or_else(|| {
                    GitcapError::invalid(
                        &field,
                        format!(
                            "binary_data_size {size} is more than the {} binary bytes left in the body",
                            binary.len()
                        ),
                    )
                })?;
                let (data, rest) = binary.split_at(size as usize);
                binary = rest;
                if input.datatype == "BYTES" {
                    Elements::Bytes(contract::decode_bytes(&field, data)?)
                } else {
                    Elements::Other(data.len())
                }
            }
            (Some(_), Some(_)) => {
                return Err(GitcapError::invalid(&field, "the input has both data and binary_data_size").into())
            }
            (None, Some(data)) => json_elements(&field, &input.name, &input.datatype, data)?,
            (None, None) => return Err(GitcapError::invalid(&field, "the input has no data").into()),
        };
        inputs.push(InputTensor { name: input.name, datatype: input.datatype, shape: input.shape, elements });
    }
    if !binary.is_empty() {
        return Err(GitcapError::invalid(
            "body",
            format!("{} bytes of binary data past the inputs' binary_data_size", binary.len()),
        )
        .into());
    }
    let mut parameters = Vec::with_capacity(request.parameters.len());
    let mut all_binary = false;
    for (name, value) in request.parameters {
        if name == "binary_data_output" {
            all_binary = value
                .as_bool()
                .ok_or_else(|| GitcapError::invalid("parameters.binary_data_output", "must be true or false"))?;
            continue;
        }
        parameters.push((name.clone(), param(&name, value)?));
    }
    let named = request
        .outputs
        .iter()
        .map(|o| (o.name.clone(), o.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(all_binary)))
        .collect();
    let outputs = request.outputs.into_iter().map(|o| o.name).collect();
    Ok((InferRequest { inputs, parameters, outputs }, request.id, Binary { all: all_binary, named }))
}

/// A JSON tensor's elements (nested arrays flattened); BYTES elements of the media inputs are
/// base64, those of the question text.
fn json_elements(field: &str, name: &str, datatype: &str, data: Value) -> Result<Elements, GitcapError> {
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    if datatype != "BYTES" {
        return Ok(Elements::Other(flat.len()));
    }
    let text = name == contract::QUESTION.name;
    let elements = flat
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let Value::String(s) = value else {
                return Err(GitcapError::invalid(format!("{field}[{i}]"), "a BYTES element in JSON is a string"));
            };
            if text {
                return Ok(s.into_bytes());
            }
            base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map_err(|e| {
                GitcapError::invalid(
                    format!("{field}[{i}]"),
                    format!("not base64 ({e}); in JSON, media bytes are base64"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Elements::Bytes(elements))
}

fn flatten(value: Value, into: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.into_iter().for_each(|item| flatten(item, into)),
        other => into.push(other),
    }
}

fn param(name: &str, value: Value) -> Result<Param, GitcapError> {
    Ok(match value {
        Value::Bool(b) => Param::Bool(b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Param::Int(i),
            (_, Some(u), _) => Param::UInt(u),
            (_, _, Some(x)) => Param::Double(x),
            _ => return Err(GitcapError::invalid(format!("parameters.{name}"), "not a number this server reads")),
        },
        Value::String(s) => Param::Str(s),
        other => {
            return Err(GitcapError::invalid(
                format!("parameters.{name}"),
                format!("a parameter is a string, a number or a boolean, not {other}"),
            ))
        }
    })
}

/// The answer: JSON, or JSON followed by the binary outputs.
fn respond(inferred: Inferred, id: Option<String>, binary: &Binary) -> Response {
    let mut raw = Vec::new();
    let outputs: Vec<Value> = inferred
        .outputs
        .iter()
        .map(|tensor| {
            let mut output = json!({ "name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape });
            if binary.of(tensor.name) {
                let bytes = contract::encode_raw(&tensor.data);
                output["parameters"] = json!({ "binary_data_size": bytes.len() });
                raw.extend_from_slice(&bytes);
            } else {
                output["data"] = match &tensor.data {
                    OutputData::Bytes(elements) => {
                        elements.iter().map(|e| Value::from(String::from_utf8_lossy(e).into_owned())).collect()
                    }
                    OutputData::Int64(values) => json!(values),
                    OutputData::Fp64(values) => json!(values),
                };
            }
            output
        })
        .collect();
    let mut answer = json!({
        "model_name": inferred.model_name,
        "model_version": inferred.model_version,
        "outputs": outputs,
    });
    if let Some(id) = id {
        answer["id"] = id.into();
    }
    if raw.is_empty() {
        return Json(answer).into_response();
    }
    let mut body = serde_json::to_vec(&answer).expect("an answer serialises");
    let json_length = body.len();
    body.extend_from_slice(&raw);
    let mut response = Response::new(Body::from(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(HEADER_LENGTH, HeaderValue::from(json_length));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> String {
        match parse(body.as_bytes(), None) {
            Err(RestError { error: GitcapError::InvalidArgument { field, .. }, .. }) => field,
            Err(other) => panic!("not an invalid argument: {:?}", other.error),
            Ok(_) => panic!("{body} was accepted"),
        }
    }

    #[test]
    fn errors_name_an_unknown_or_empty_input_by_position() {
        let no_data = |name: &str| format!(r#"{{"inputs":[{{"name":"{name}","datatype":"BYTES","shape":[1]}}]}}"#);
        assert_eq!(field(&no_data("")), "inputs[0]");
        assert_eq!(field(&no_data("pixels")), "inputs[0]");
        assert_eq!(field(&no_data("image")), "image");
        let not_a_string = r#"{"inputs":[{"name":"","datatype":"BYTES","shape":[1],"data":[1]}]}"#;
        assert_eq!(field(not_a_string), "inputs[0][0]");
    }
}
