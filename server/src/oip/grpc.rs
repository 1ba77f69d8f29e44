//! `inference.GRPCInferenceService` on the gRPC port. Tensors arrive in `raw_input_contents`
//! (tritonclient, the kserve SDK) or in each input's typed `contents`; answers are written as
//! `raw_output_contents`, which every client reads. Errors are gRPC statuses with the
//! GitcapError's code and a message naming the input or parameter. ServerLive and ServerReady
//! are open (probes); every other call needs the inference token, when one is set.

use std::sync::Arc;

use gitcap_protocol::inference::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use gitcap_protocol::inference::model_infer_request::InferInputTensor;
use gitcap_protocol::inference::model_infer_response::InferOutputTensor;
use gitcap_protocol::inference::model_metadata_response::TensorMetadata;
use gitcap_protocol::inference::{
    infer_parameter::ParameterChoice, InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ServerLiveRequest,
    ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};
use tonic::{Request, Response, Status};

use super::contract::{self, Elements, InferRequest, InputTensor, Output, Param, TensorSpec};
use super::Oip;
use crate::error::{GitcapError, Result};

/// The service, to add to the gRPC router; messages up to `max_message_bytes`.
pub fn service(oip: Arc<Oip>, max_message_bytes: usize) -> GrpcInferenceServiceServer<OipGrpc> {
    GrpcInferenceServiceServer::new(OipGrpc { oip })
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}

pub struct OipGrpc {
    oip: Arc<Oip>,
}

impl OipGrpc {
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        if self.oip.auth.allows(header) {
            Ok(())
        } else {
            Err(GitcapError::Unauthenticated.into())
        }
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for OipGrpc {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.oip.server_ready() }))
    }

    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let ready = self.oip.model_ready(&request.name, &request.version)?;
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(ServerMetadataResponse {
            name: "gitcap".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: super::EXTENSIONS.map(String::from).to_vec(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let metadata = self.oip.model_metadata(&request.name, &request.version)?;
        let tensor = |spec: TensorSpec| TensorMetadata {
            name: spec.name.into(),
            datatype: spec.datatype.into(),
            shape: spec.shape.to_vec(),
        };
        Ok(Response::new(ModelMetadataResponse {
            name: metadata.name,
            versions: metadata.versions,
            platform: contract::PLATFORM.into(),
            inputs: contract::INPUTS.into_iter().map(tensor).collect(),
            outputs: Output::ALL.into_iter().map(|o| tensor(o.spec())).collect(),
            properties: metadata.properties.into_iter().collect(),
        }))
    }

    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        self.authorize(&request)?;
        let (metadata, _, request) = request.into_parts();
        let headers = metadata.into_headers();
        let (name, version, id) = (request.model_name.clone(), request.model_version.clone(), request.id.clone());
        let read = read_request(request);
        let inferred = self.oip.infer(&name, &version, read, &headers).await?;
        let mut outputs = Vec::with_capacity(inferred.outputs.len());
        let mut raw = Vec::with_capacity(inferred.outputs.len());
        for tensor in inferred.outputs {
            raw.push(contract::encode_raw(&tensor.data));
            outputs.push(InferOutputTensor {
                name: tensor.name.into(),
                datatype: tensor.datatype.into(),
                shape: tensor.shape,
                parameters: Default::default(),
                contents: None,
            });
        }
        Ok(Response::new(ModelInferResponse {
            model_name: inferred.model_name,
            model_version: inferred.model_version,
            id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: raw,
        }))
    }
}

/// A ModelInferRequest as the contract reads it: each input's elements from
/// `raw_input_contents` (one entry per input, in order) or from its typed contents.
pub fn read_request(request: ModelInferRequest) -> Result<InferRequest> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(GitcapError::invalid(
            "raw_input_contents",
            format!("{} entries for {} inputs: give one per input, in order", raw.len(), request.inputs.len()),
        ));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for (i, tensor) in request.inputs.into_iter().enumerate() {
        let InferInputTensor { name, datatype, shape, parameters: _, contents } = tensor;
        let field = contract::input_field(i, &name);
        let elements = match (raw.next(), contents) {
            (Some(_), Some(_)) => {
                return Err(GitcapError::invalid(
                    field,
                    format!("the input {name:?} has both contents and raw_input_contents; give one of them"),
                ))
            }
            (Some(bytes), None) if datatype == "BYTES" => Elements::Bytes(contract::decode_bytes(&field, &bytes)?),
            (Some(bytes), None) => Elements::Other(bytes.len()),
            (None, Some(contents)) if datatype == "BYTES" => Elements::Bytes(contents.bytes_contents),
            (None, Some(contents)) => Elements::Other(typed_count(&contents)),
            (None, None) => Elements::Bytes(vec![]),
        };
        inputs.push(InputTensor { name, datatype, shape, elements });
    }
    let mut parameters: Vec<(String, Param)> =
        request.parameters.into_iter().map(|(name, value)| (name, param(value))).collect();
    // A map's order on the wire is not the caller's: keep errors the same from call to call.
    parameters.sort_by(|a, b| a.0.cmp(&b.0));
    let outputs = request.outputs.into_iter().map(|o| o.name).collect();
    Ok(InferRequest { inputs, parameters, outputs })
}

fn typed_count(contents: &InferTensorContents) -> usize {
    contents.bool_contents.len()
        + contents.int_contents.len()
        + contents.int64_contents.len()
        + contents.uint_contents.len()
        + contents.uint64_contents.len()
        + contents.fp32_contents.len()
        + contents.fp64_contents.len()
        + contents.bytes_contents.len()
}

fn param(value: InferParameter) -> Param {
    match value.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Param::Bool(b),
        Some(ParameterChoice::Int64Param(n)) => Param::Int(n),
        Some(ParameterChoice::Uint64Param(n)) => Param::UInt(n),
        Some(ParameterChoice::DoubleParam(x)) => Param::Double(x),
        Some(ParameterChoice::StringParam(s)) => Param::Str(s),
        None => Param::Str(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(error: GitcapError) -> String {
        match error {
            GitcapError::InvalidArgument { field, .. } => field,
            other => panic!("not an invalid argument: {other:?}"),
        }
    }

    fn input(name: &str, contents: Option<InferTensorContents>) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            parameters: Default::default(),
            contents,
        }
    }

    #[test]
    fn errors_name_an_unknown_or_empty_input_by_position() {
        let both = |name: &str| ModelInferRequest {
            inputs: vec![input(name, Some(InferTensorContents::default()))],
            raw_input_contents: vec![vec![]],
            ..Default::default()
        };
        assert_eq!(field(read_request(both("")).unwrap_err()), "inputs[0]");
        assert_eq!(field(read_request(both("pixels")).unwrap_err()), "inputs[0]");
        assert_eq!(field(read_request(both("image")).unwrap_err()), "image");
        let truncated = |name: &str| ModelInferRequest {
            inputs: vec![input("question", None), input(name, None)],
            raw_input_contents: vec![contract::encode_bytes(&[b"q".to_vec()]), vec![9, 0]],
            ..Default::default()
        };
        assert_eq!(field(read_request(truncated("")).unwrap_err()), "inputs[1]");
        assert_eq!(field(read_request(truncated("frames")).unwrap_err()), "frames");
    }
}
