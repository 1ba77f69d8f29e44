//! The Open Inference Protocol v2 door against a real server, raw: every RPC of
//! `inference.GRPCInferenceService` and every REST route, JSON and binary tensors, answers equal
//! to the transformers goldens, and each mistake (wrong datatype or shape, unknown input or
//! parameter, oversize tensor, missing model or version, no token) answered in the protocol's
//! shape, naming what is wrong, with the server still serving; route keys on a canary split,
//! deadlines, priorities and the `protocol="oip"` metrics, as every door has them. One server for
//! the binary.

mod common;

use std::collections::HashMap;

use base64::Engine;
use gitcap_protocol::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gitcap_protocol::inference::infer_parameter::ParameterChoice;
use gitcap_protocol::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use gitcap_protocol::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelReadyRequest, ServerLiveRequest, ServerMetadataRequest, ServerReadyRequest,
};
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

use common::fixtures::{cases, Case};
use common::oip::{bytes_tensor, media, start, TOKEN};
use common::openai::http;
use common::probe::{finished_at_priority, http_get, scrape_until, sum_with_label};

type Client = GrpcInferenceServiceClient<Channel>;

fn case(name: &str) -> Case {
    cases().into_iter().find(|c| c.name == name).unwrap()
}

fn with_token<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

fn grpc_param(value: &Value) -> InferParameter {
    let choice = match value {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::Number(n) if n.is_i64() => ParameterChoice::Int64Param(n.as_i64().unwrap()),
        Value::Number(n) => ParameterChoice::DoubleParam(n.as_f64().unwrap()),
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        other => panic!("not a parameter: {other}"),
    };
    InferParameter { parameter_choice: Some(choice) }
}

fn bytes_input(name: &str, count: usize) -> InferInputTensor {
    InferInputTensor { name: name.into(), datatype: "BYTES".into(), shape: vec![count as i64], ..Default::default() }
}

/// A raw ModelInferRequest for a golden case: its media (one image, or frames) and question.
fn grpc_request(model: &str, case: &Case) -> ModelInferRequest {
    let files: Vec<Vec<u8>> = case.media.iter().map(|m| media(m)).collect();
    let (name, files) = if files.len() == 1 { ("image", files) } else { ("frames", files) };
    let elements: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let mut inputs = vec![bytes_input(name, elements.len())];
    let mut raw = vec![bytes_tensor(&elements)];
    if let Some(question) = &case.question {
        inputs.push(bytes_input("question", 1));
        raw.push(bytes_tensor(&[question.as_bytes()]));
    }
    ModelInferRequest {
        model_name: model.into(),
        id: format!("req-{}", case.name),
        parameters: case.generate_kwargs.iter().map(|(k, v)| (k.clone(), grpc_param(v))).collect(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

/// The BYTES elements of a raw tensor.
fn elements(mut raw: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let length = u32::from_le_bytes(raw[..4].try_into().unwrap()) as usize;
        out.push(raw[4..4 + length].to_vec());
        raw = &raw[4 + length..];
    }
    out
}

/// Output name → its raw bytes.
fn raw_outputs(response: &ModelInferResponse) -> HashMap<String, Vec<u8>> {
    response.outputs.iter().map(|o| o.name.clone()).zip(response.raw_output_contents.iter().cloned()).collect()
}

fn int64s(raw: &[u8]) -> Vec<i64> {
    raw.chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

fn assert_golden_grpc(response: &ModelInferResponse, case: &Case) {
    let outputs = raw_outputs(response);
    assert_eq!(elements(&outputs["text"]), vec![case.text.as_bytes().to_vec()], "{}", case.name);
    assert_eq!(int64s(&outputs["token_ids"]), case.generated_ids, "{}", case.name);
    let reason = if case.finished_by_eos { "eos" } else { "length" };
    assert_eq!(elements(&outputs["finish_reason"]), vec![reason.as_bytes().to_vec()], "{}", case.name);
    assert_eq!(response.id, format!("req-{}", case.name));
}

/// The field a gRPC error names: its message starts with it.
fn assert_status(result: Result<tonic::Response<ModelInferResponse>, tonic::Status>, code: Code, names: &str) {
    let status = result.expect_err("an error");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(names), "the message should name {names}: {:?}", status.message());
}

async fn grpc_every_rpc(client: &mut Client) {
    // Probes are open; the rest needs the token.
    assert!(client.server_live(ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(client.server_ready(ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let refused = client.server_metadata(ServerMetadataRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let metadata = client.server_metadata(with_token(ServerMetadataRequest {})).await.unwrap().into_inner();
    assert_eq!(metadata.name, "gitcap");
    assert!(metadata.extensions.contains(&"binary_tensor_data".to_string()));

    let model = ModelMetadataRequest { name: "video".into(), version: String::new() };
    let model = client.model_metadata(with_token(model)).await.unwrap().into_inner();
    assert_eq!((model.name.as_str(), model.versions.as_slice()), ("video", &["v1".to_string()][..]));
    let inputs: Vec<(&str, &str, &[i64])> =
        model.inputs.iter().map(|t| (t.name.as_str(), t.datatype.as_str(), t.shape.as_slice())).collect();
    assert_eq!(
        inputs,
        [
            ("image", "BYTES", &[1][..]),
            ("frames", "BYTES", &[-1][..]),
            ("video", "BYTES", &[1][..]),
            ("question", "BYTES", &[1][..])
        ]
    );
    let outputs: Vec<&str> = model.outputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(outputs, ["text", "token_ids", "finish_reason", "frame_timestamps_s"]);
    assert_eq!(model.properties["max_frames"], "6");
    assert!(model.properties["parameters"].contains("no_repeat_ngram_size"), "{:?}", model.properties);

    let ready = |name: &str, version: &str| ModelReadyRequest { name: name.into(), version: version.into() };
    assert!(client.model_ready(with_token(ready("image", ""))).await.unwrap().into_inner().ready);
    assert!(client.model_ready(with_token(ready("image", "v1"))).await.unwrap().into_inner().ready);
    let missing = client.model_ready(with_token(ready("image", "v9"))).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // Answers equal to the goldens: an image with a question, six frames, beam search.
    for (model, name) in
        [("image", "image_vqa_greedy"), ("video", "video_caption_greedy"), ("image", "image_caption_beam3")]
    {
        let case = case(name);
        let response = client.model_infer(with_token(grpc_request(model, &case))).await.unwrap().into_inner();
        assert_golden_grpc(&response, &case);
        assert_eq!((response.model_name.as_str(), response.model_version.as_str()), (model, "v1"));
    }
    // The same through typed contents, at an explicit version, asking for two outputs.
    let case = case("video_3frames_greedy");
    let mut request = grpc_request("video", &case);
    request.model_version = "v1".into();
    let files: Vec<Vec<u8>> = case.media.iter().map(|m| media(m)).collect();
    request.inputs[0].contents = Some(InferTensorContents { bytes_contents: files, ..Default::default() });
    request.raw_input_contents.clear();
    request.outputs = ["token_ids", "text"]
        .map(|name| InferRequestedOutputTensor { name: name.into(), ..Default::default() })
        .to_vec();
    let response = client.model_infer(with_token(request)).await.unwrap().into_inner();
    let names: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["token_ids", "text"]);
    assert_eq!(int64s(&response.raw_output_contents[0]), case.generated_ids);
}

async fn grpc_mistakes(client: &mut Client) {
    let good = || grpc_request("image", &case("image_caption_greedy"));
    let mut wrong_type = good();
    wrong_type.inputs[0].datatype = "FP32".into();
    assert_status(client.model_infer(with_token(wrong_type)).await, Code::InvalidArgument, "image");
    let mut wrong_shape = good();
    wrong_shape.inputs[0].shape = vec![1, 1];
    assert_status(client.model_infer(with_token(wrong_shape)).await, Code::InvalidArgument, "image");
    let mut unknown_input = good();
    unknown_input.inputs.push(bytes_input("pixels", 1));
    unknown_input.raw_input_contents.push(bytes_tensor(&[b"x"]));
    assert_status(client.model_infer(with_token(unknown_input)).await, Code::InvalidArgument, "pixels");
    let mut unknown_parameter = good();
    unknown_parameter.parameters.insert("beams".into(), grpc_param(&json!(3)));
    assert_status(client.model_infer(with_token(unknown_parameter)).await, Code::InvalidArgument, "parameters.beams");
    let mut bad_value = good();
    bad_value.parameters.insert("num_beams".into(), grpc_param(&json!(99)));
    assert_status(client.model_infer(with_token(bad_value)).await, Code::InvalidArgument, "parameters.num_beams");
    // Oversize: more frames than the limit, a BYTES element longer than its tensor, a message
    // over server.max_message_bytes.
    let mut frames = good();
    frames.inputs[0] = bytes_input("frames", 65);
    frames.raw_input_contents[0] = bytes_tensor(&[&b"x"[..]; 65]);
    assert_status(client.model_infer(with_token(frames)).await, Code::InvalidArgument, "frames");
    let mut truncated = good();
    truncated.raw_input_contents[0].truncate(100);
    assert_status(client.model_infer(with_token(truncated)).await, Code::InvalidArgument, "image");
    let mut huge = good();
    huge.raw_input_contents[0] = bytes_tensor(&[&vec![0u8; 2 << 20]]);
    assert_status(client.model_infer(with_token(huge)).await, Code::ResourceExhausted, "");
    // Models and versions that are not loaded; no token.
    let mut missing = good();
    missing.model_name = "nope".into();
    assert_status(client.model_infer(with_token(missing)).await, Code::NotFound, "nope");
    let mut missing_version = good();
    missing_version.model_version = "v9".into();
    assert_status(client.model_infer(with_token(missing_version)).await, Code::NotFound, "image@v9");
    assert_status(client.model_infer(good()).await, Code::Unauthenticated, "");
    // Still serving.
    let response = client.model_infer(with_token(good())).await.unwrap().into_inner();
    assert_golden_grpc(&response, &case("image_caption_greedy"));
}

/// A canary split's version follows the route key, the same for the same key; a deadline
/// that passes before the answer is DEADLINE_EXCEEDED; a malformed one is refused by name.
async fn grpc_route_keys_and_deadlines(client: &mut Client) {
    let case = case("image_caption_greedy");
    let mut seen = std::collections::BTreeSet::new();
    for key in 0..20 {
        let mut versions = Vec::new();
        for _ in 0..2 {
            let mut request = with_token(grpc_request("canary", &case));
            request.metadata_mut().insert("x-gitcap-route-key", format!("tenant-{key}").parse().unwrap());
            let response = client.model_infer(request).await.unwrap().into_inner();
            assert_golden_grpc(&response, &case);
            assert_eq!(response.model_name, "canary");
            versions.push(response.model_version);
        }
        assert_eq!(versions[0], versions[1], "route key tenant-{key} reached two versions");
        seen.insert(versions[0].clone());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["v1", "v2"], "20 route keys over a 50/50 split");
    let mut late = with_token(grpc_request("image", &case));
    late.metadata_mut().insert("x-gitcap-timeout-ms", "1".parse().unwrap());
    assert_status(client.model_infer(late).await, Code::DeadlineExceeded, "");
    let mut malformed = with_token(grpc_request("image", &case));
    malformed.metadata_mut().insert("x-gitcap-timeout-ms", "soon".parse().unwrap());
    assert_status(client.model_infer(malformed).await, Code::InvalidArgument, "x-gitcap-timeout-ms");
}

/// Posts to `path` with the token: (status, headers, body bytes).
async fn post(
    addr: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = http().post(format!("http://{addr}{path}")).bearer_auth(TOKEN).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// Sends only the headers of a POST declaring `length` bytes of body: (status, body).
fn declare_body(addr: &str, path: &str, length: usize) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\n\
         Content-Type: application/json\r\nConnection: close\r\n\r\n{{"
    )
    .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // A body of fixed length; chunked answers are not expected here.
    (status, body.as_bytes().to_vec())
}

async fn get(addr: &str, path: &str) -> (u16, Value) {
    let response = http().get(format!("http://{addr}{path}")).bearer_auth(TOKEN).send().await.unwrap();
    let status = response.status().as_u16();
    (status, serde_json::from_slice(&response.bytes().await.unwrap()).unwrap())
}

/// A JSON inference request for a golden case, media base64.
fn json_request(case: &Case) -> Value {
    let b64 = |m: &String| Value::from(base64::engine::general_purpose::STANDARD.encode(media(m)));
    let name = if case.media.len() == 1 { "image" } else { "frames" };
    let mut inputs = vec![json!({
        "name": name, "datatype": "BYTES", "shape": [case.media.len()], "data": case.media.iter().map(b64).collect::<Vec<_>>(),
    })];
    if let Some(question) = &case.question {
        inputs.push(json!({ "name": "question", "datatype": "BYTES", "shape": [1], "data": [question] }));
    }
    json!({ "id": case.name, "inputs": inputs, "parameters": case.generate_kwargs })
}

fn assert_error(status: u16, body: &[u8], expected: u16, names: &str) {
    let body: Value = serde_json::from_slice(body).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(body)));
    assert_eq!(status, expected, "{body}");
    let message = body["error"].as_str().unwrap_or_else(|| panic!("no error string: {body}"));
    assert!(message.contains(names), "the error should name {names}: {message}");
}

async fn rest_every_route(addr: &str) {
    assert_eq!(http_get(addr, "/v2/health/live"), (200, "application/json".into(), r#"{"live":true}"#.into()));
    assert_eq!(http_get(addr, "/v2/health/ready").0, 200);
    let (status, _, body) = http_get(addr, "/v2");
    assert_error(status, body.as_bytes(), 401, "token");
    let (status, server) = get(addr, "/v2").await;
    assert_eq!((status, server["name"].as_str()), (200, Some("gitcap")), "{server}");
    let (status, model) = get(addr, "/v2/models/image").await;
    assert_eq!((status, &model["versions"]), (200, &json!(["v1", "v2"])), "{model}");
    assert_eq!(model["inputs"][0], json!({"name": "image", "datatype": "BYTES", "shape": [1]}));
    assert_eq!(model["outputs"][1], json!({"name": "token_ids", "datatype": "INT64", "shape": [-1]}));
    assert_eq!(get(addr, "/v2/models/image/versions/v1").await.0, 200);
    assert_eq!(get(addr, "/v2/models/video/ready").await, (200, json!({"name": "video", "ready": true})));
    assert_eq!(get(addr, "/v2/models/video/versions/v1/ready").await.0, 200);
    let (status, body) = get(addr, "/v2/models/image/versions/v9").await;
    assert_error(status, body.to_string().as_bytes(), 404, "image@v9");
    let (status, body) = get(addr, "/v2/models/nope/ready").await;
    assert_error(status, body.to_string().as_bytes(), 404, "nope");

    // JSON tensors: an image with a question, the answer in JSON.
    let vqa = case("image_vqa_greedy");
    let (status, headers, body) =
        post(addr, "/v2/models/image/infer", &[], json_request(&vqa).to_string().into()).await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, headers["content-type"].to_str().unwrap()), (200, "application/json"), "{answer}");
    assert_eq!(answer["id"], vqa.name.as_str());
    assert_eq!((answer["model_name"].as_str(), answer["model_version"].as_str()), (Some("image"), Some("v1")));
    assert_eq!(answer["outputs"][0], json!({"name": "text", "datatype": "BYTES", "shape": [1], "data": [vqa.text]}));
    assert_eq!(answer["outputs"][1]["data"], json!(vqa.generated_ids));

    // Binary tensors, as tritonclient sends them: six frames, every output binary.
    let case = case("video_caption_greedy");
    let files: Vec<Vec<u8>> = case.media.iter().map(|m| media(m)).collect();
    let raw = bytes_tensor(&files.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let mut parameters = json!(case.generate_kwargs);
    parameters["binary_data_output"] = true.into();
    let header = json!({
        "inputs": [{"name": "frames", "datatype": "BYTES", "shape": [6], "parameters": {"binary_data_size": raw.len()}}],
        "parameters": parameters,
    })
    .to_string();
    let length = header.len();
    let body = [header.into_bytes(), raw].concat();
    let (status, headers, body) = post(
        addr,
        "/v2/models/video/versions/v1/infer",
        &[("inference-header-content-length", length.to_string())],
        body,
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let json_length: usize = headers["inference-header-content-length"].to_str().unwrap().parse().unwrap();
    let answer: Value = serde_json::from_slice(&body[..json_length]).unwrap();
    let mut rest = &body[json_length..];
    let mut binary = HashMap::new();
    for output in answer["outputs"].as_array().unwrap() {
        let size = output["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        binary.insert(output["name"].as_str().unwrap().to_string(), rest[..size].to_vec());
        rest = &rest[size..];
    }
    assert!(rest.is_empty());
    assert_eq!(elements(&binary["text"]), vec![case.text.as_bytes().to_vec()]);
    assert_eq!(int64s(&binary["token_ids"]), case.generated_ids);
}

async fn rest_mistakes(addr: &str) {
    let case = case("image_caption_greedy");
    let infer = |body: Value| post(addr, "/v2/models/image/infer", &[], body.to_string().into_bytes());
    let mut wrong_type = json_request(&case);
    wrong_type["inputs"][0]["datatype"] = "UINT8".into();
    let (status, _, body) = infer(wrong_type).await;
    assert_error(status, &body, 400, "image");
    let mut wrong_shape = json_request(&case);
    wrong_shape["inputs"][0]["shape"] = json!([3]);
    let (status, _, body) = infer(wrong_shape).await;
    assert_error(status, &body, 400, "image");
    let mut unknown_input = json_request(&case);
    let pixels = json!({"name": "pixels", "datatype": "BYTES", "shape": [1], "data": ["eA=="]});
    unknown_input["inputs"].as_array_mut().unwrap().push(pixels);
    let (status, _, body) = infer(unknown_input).await;
    assert_error(status, &body, 400, "pixels");
    let mut unknown_parameter = json_request(&case);
    unknown_parameter["parameters"]["beams"] = 3.into();
    let (status, _, body) = infer(unknown_parameter).await;
    assert_error(status, &body, 400, "parameters.beams");
    let mut not_base64 = json_request(&case);
    not_base64["inputs"][0]["data"] = json!(["not base64!"]);
    let (status, _, body) = infer(not_base64).await;
    assert_error(status, &body, 400, "image[0]");
    let (status, _, body) = infer(json!({"inputs": []})).await;
    assert_error(status, &body, 400, "inputs");
    // Oversize: a body over server.max_message_bytes × 2, a binary size past the body's end.
    // (Declared, not sent: the server answers from the headers, and a client still writing a body
    // the server will not read may see the connection close first.)
    let (status, body) = declare_body(addr, "/v2/models/image/infer", (2 << 20) + 1024);
    assert_error(status, &body, 413, "max_message_bytes");
    let header = json!({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 1000}}]});
    let header = header.to_string();
    let length = header.len().to_string();
    let (status, _, body) =
        post(addr, "/v2/models/image/infer", &[("inference-header-content-length", length)], header.into_bytes()).await;
    assert_error(status, &body, 400, "image");
    // Models and versions that are not loaded; no token; a malformed deadline.
    let (status, _, body) = post(addr, "/v2/models/nope/infer", &[], json_request(&case).to_string().into()).await;
    assert_error(status, &body, 404, "nope");
    let (status, _, body) =
        post(addr, "/v2/models/image/versions/v9/infer", &[], json_request(&case).to_string().into()).await;
    assert_error(status, &body, 404, "image@v9");
    let response = http().post(format!("http://{addr}/v2/models/image/infer")).body("{}").send().await.unwrap();
    let status = response.status().as_u16();
    assert_error(status, &response.bytes().await.unwrap(), 401, "token");
    let (status, _, body) = post(
        addr,
        "/v2/models/image/infer",
        &[("x-gitcap-timeout-ms", "soon".into())],
        json_request(&case).to_string().into(),
    )
    .await;
    assert_error(status, &body, 400, "x-gitcap-timeout-ms");
    let (status, _, body) = post(addr, "/v2/nothing", &[], vec![]).await;
    assert_error(status, &body, 404, "path");
    // Still serving, at batch priority.
    let mut batch = json_request(&case);
    batch["parameters"]["priority"] = "batch".into();
    let (status, _, body) = infer(batch).await;
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, &answer["outputs"][0]["data"][0]), (200, &json!(case.text)), "{answer}");
}

#[tokio::test]
async fn the_open_inference_protocol_over_grpc_and_rest() {
    let oip = start(&[("GITCAP__SERVER__MAX_MESSAGE_BYTES", "1048576")]);
    let addr = oip.server.addr.clone();
    let mut client = GrpcInferenceServiceClient::connect(oip.server.url()).await.unwrap();
    grpc_every_rpc(&mut client).await;
    grpc_mistakes(&mut client).await;
    grpc_route_keys_and_deadlines(&mut client).await;
    rest_every_route(&addr).await;
    rest_mistakes(&addr).await;

    // Every call counted under protocol="oip"; the batch request at batch priority.
    let metrics = scrape_until(&addr, |m| finished_at_priority(m, "batch") >= 1.0);
    assert!(finished_at_priority(&metrics, "batch") >= 1.0, "{metrics}");
    let ok = sum_with_label(&metrics, "gitcap_requests_total", "protocol=\"oip\",rpc=\"ModelInfer\",code=\"OK\"");
    assert!(ok >= 48.0, "{ok} OK ModelInfer calls counted:\n{metrics}");
    let late = sum_with_label(&metrics, "gitcap_requests_total", "code=\"DEADLINE_EXCEEDED\"");
    assert!(late >= 1.0, "{metrics}");
    let refused = sum_with_label(&metrics, "gitcap_requests_total", "code=\"INVALID_ARGUMENT\"");
    assert!(refused >= 5.0, "{metrics}");
}
