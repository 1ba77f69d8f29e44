//! The Open Inference Protocol v2 door (KServe's and Triton's protocol), on the shared port:
//! over gRPC, `inference.GRPCInferenceService` (grpc.rs); over REST, `/v2/…` (rest.rs), with the
//! protocol's JSON tensors and Triton's binary tensor data extension. Both read their wire format
//! into GIT's tensor contract (contract.rs: which inputs, parameters and outputs) and run the
//! request through the request core, with the same inference token, priorities, deadlines,
//! route keys, media limits and budget, metrics (`protocol="oip"`) and traces as every door.
//!
//! Model names: the protocol's model name is a gitcap model or alias name, its version a
//! version of it (`name` + `version` = gitcap's `name@version`); an empty version is the one the
//! name's route picks.

pub mod contract;
pub mod grpc;
pub mod rest;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{GitcapError, Result};
use crate::registry::ModelState;
use crate::service::auth::BearerAuth;
use crate::service::request::Tally;
use crate::service::{Ask, Core};
use contract::{Generated, InferRequest, OutputTensor};

/// The protocol extensions gitcap implements (ServerMetadata).
pub const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];

/// What both transports of the door share.
pub struct Oip {
    pub core: Arc<Core>,
    pub auth: BearerAuth,
    /// Set when the server begins to shut down: it is no longer ready.
    pub stopping: Arc<AtomicBool>,
}

/// A model's metadata: the contract, its versions and its frame count.
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub properties: Vec<(String, String)>,
}

/// An answer, as the protocol writes it.
pub struct Inferred {
    pub model_name: String,
    pub model_version: String,
    pub outputs: Vec<OutputTensor>,
}

impl Oip {
    /// Ready: not shutting down, and every alias a caller may name serves (each version of a
    /// split). Versions loading or draining beside them (a hot swap) do not count.
    pub fn server_ready(&self) -> bool {
        if self.stopping.load(Ordering::Relaxed) {
            return false;
        }
        let names = self.core.registry.serving_names();
        let aliases: Vec<bool> = names.into_iter().filter(|(name, _)| !name.contains('@')).map(|(_, r)| r).collect();
        !aliases.is_empty() && aliases.into_iter().all(|ready| ready)
    }

    /// Whether `name` (at `version`) serves; NOT_FOUND for a model that is not loaded.
    pub fn model_ready(&self, name: &str, version: &str) -> Result<bool> {
        let id = model_id(name, version)?;
        if self.stopping.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.core.registry.get(Some(&id)) {
            Ok(_) => Ok(true),
            Err(GitcapError::Unavailable(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `name`'s versions and the tensor contract's details that depend on the model.
    pub fn model_metadata(&self, name: &str, version: &str) -> Result<ModelMetadata> {
        let id = model_id(name, version)?;
        let worker = self.core.registry.get(Some(&id))?;
        let (statuses, _) = self.core.registry.list();
        let routes = self.core.registry.routes();
        let mut versions: Vec<String> = if version.is_empty() && !name.contains('@') {
            let routed = routes.get(name).map(|r| r.targets().to_vec()).unwrap_or_default();
            statuses
                .iter()
                .filter(|s| s.state == ModelState::Ready)
                .filter(|s| s.spec.name == name || routed.iter().any(|(id, _)| *id == s.id))
                .map(|s| s.version.clone())
                .collect()
        } else {
            vec![worker.info.version.clone()]
        };
        versions.sort();
        versions.dedup();
        let properties = vec![
            ("media_inputs".into(), "image | frames | video (exactly one)".into()),
            ("optional_inputs".into(), "question".into()),
            ("parameters".into(), contract::parameter_names().join(",")),
            ("max_frames".into(), worker.info.max_frames.to_string()),
            ("finish_reasons".into(), "eos,length".into()),
        ];
        Ok(ModelMetadata { name: name.to_string(), versions, properties })
    }

    /// Runs one inference of `name` (at `version`) through the request core; `headers` carry
    /// the call's deadline, route key and trace context. `request` is what the transport read,
    /// or why it could not: either way the call is counted.
    pub async fn infer(
        &self,
        name: &str,
        version: &str,
        request: Result<InferRequest>,
        headers: &http::HeaderMap,
    ) -> Result<Inferred> {
        let mut tally = Tally::for_protocol("oip", "ModelInfer", headers);
        let result = match request {
            Ok(request) => self.run(name, version, request, headers, &mut tally).await,
            Err(e) => Err(e),
        };
        tally.outcome_of(result).map_err(contract::in_oip_terms)
    }

    async fn run(
        &self,
        name: &str,
        version: &str,
        request: InferRequest,
        headers: &http::HeaderMap,
        tally: &mut Tally,
    ) -> Result<Inferred> {
        let call = self.core.call(headers)?;
        let model = model_id(name, version)?;
        let reading = contract::read(request, &self.core.limits.media)?;
        let ask = Ask {
            model: Some(model),
            media: reading.media,
            question: reading.question,
            options: reading.options,
            priority: reading.priority,
        };
        let answer = self.core.start(&call, ask, tally).await?.finish().await?;
        let generated = Generated {
            text: &answer.output.text,
            token_ids: &answer.output.token_ids,
            finish_reason: answer.output.finish_reason,
            timestamps_s: &answer.timestamps_s,
        };
        Ok(Inferred {
            model_name: name.to_string(),
            model_version: answer.model.version.clone(),
            outputs: contract::write(&generated, reading.outputs.as_deref()),
        })
    }
}

/// gitcap's name for the protocol's model name and version: `name@version`, or the name alone
/// (an alias, a model name, or already `name@version`) when no version is given.
pub fn model_id(name: &str, version: &str) -> Result<String> {
    if name.is_empty() {
        return Err(GitcapError::invalid("model_name", "give the model's name"));
    }
    match (version.is_empty(), name.contains('@')) {
        (true, _) => Ok(name.to_string()),
        (false, true) => Err(GitcapError::invalid(
            "model_version",
            format!("the model name {name:?} already names a version; give the version in one place"),
        )),
        (false, false) => Ok(crate::registry::models::model_id(name, version)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_and_versions_map_to_gitcap_ids() {
        assert_eq!(model_id("tiny", "").unwrap(), "tiny");
        assert_eq!(model_id("tiny", "v2").unwrap(), "tiny@v2");
        assert_eq!(model_id("tiny@v2", "").unwrap(), "tiny@v2");
        assert!(model_id("tiny@v2", "v3").unwrap_err().to_string().starts_with("model_version:"));
        assert!(model_id("", "").unwrap_err().to_string().starts_with("model_name:"));
    }
}
