//! The `gitcap.v1.Admin` service: load, unload, list, alias (canary splits too), hot swap, roll
//! back and watch models. Thin: each call converts its message and calls the registry, which
//! refuses changes in declarative mode.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::device::DeviceSpec;
use crate::error::GitcapError;
use crate::model::Precision;
use crate::proto::{self, admin_server::Admin};
use crate::registry::{
    models::AliasChange, DesiredStatus, LoadSpec, ModelState, ModelStatus, Registry, RegistryEvent, Route,
};

pub struct AdminService {
    registry: Arc<Registry>,
    /// Device and dtype for specs that leave them empty.
    default_device: DeviceSpec,
    default_dtype: Precision,
}

impl AdminService {
    pub fn new(registry: Arc<Registry>, default_device: DeviceSpec, default_dtype: Precision) -> Self {
        Self { registry, default_device, default_dtype }
    }

    /// The message's spec, its device and dtype parsed (empty = the server's); off the async
    /// threads, since resolving a first `auto` dtype runs the CPU probe.
    async fn spec(&self, spec: Option<proto::ModelSpec>) -> Result<LoadSpec, GitcapError> {
        let (device, dtype) = (self.default_device, self.default_dtype);
        let read = tokio::task::spawn_blocking(move || read_spec(spec, device, dtype)).await;
        read.map_err(|e| GitcapError::Internal(format!("reading a model spec: {e}")))?
    }
}

/// A spec message read, with the server's device and dtype where it leaves them empty.
fn read_spec(
    spec: Option<proto::ModelSpec>,
    default_device: DeviceSpec,
    default_dtype: Precision,
) -> Result<LoadSpec, GitcapError> {
    let spec = spec.ok_or_else(|| GitcapError::invalid("spec", "missing: say what to load"))?;
    if spec.source.is_empty() {
        return Err(GitcapError::invalid("spec.source", "a checkpoint directory or hub repo id is needed"));
    }
    let device = match spec.device.as_str() {
        "" => default_device,
        text => text.parse().map_err(|e: String| GitcapError::invalid("spec.device", e))?,
    };
    let dtype = match spec.dtype.as_str() {
        "" => default_dtype,
        text => text.parse().map_err(|e: String| GitcapError::invalid("spec.dtype", e))?,
    };
    Ok(LoadSpec {
        name: spec.name,
        source: spec.source,
        revision: Some(spec.revision).filter(|revision| !revision.is_empty()),
        version: Some(spec.version).filter(|version| !version.is_empty()),
        device,
        // `auto` is resolved here, so List and Watch show what is served.
        dtype: dtype.for_device(device.0),
    })
}

fn state(state: &ModelState) -> (proto::ModelState, String) {
    match state {
        ModelState::Loading => (proto::ModelState::Loading, String::new()),
        ModelState::Ready => (proto::ModelState::Ready, String::new()),
        ModelState::Draining => (proto::ModelState::Draining, String::new()),
        ModelState::Failed(why) => (proto::ModelState::Failed, why.clone()),
        ModelState::Unloaded => (proto::ModelState::Unloaded, String::new()),
    }
}

pub fn model_status(status: ModelStatus) -> proto::ModelStatus {
    let (state, error) = state(&status.state);
    proto::ModelStatus {
        id: status.id,
        name: status.spec.name,
        version: status.version,
        state: state as i32,
        error,
        source: status.spec.source,
        device: status.spec.device.to_string(),
        dtype: status.spec.dtype.to_string(),
        load_seconds: status.load_seconds,
        memory_bytes: status.memory_bytes,
        aliases: status.aliases,
        progress: status.progress,
        commit: status.commit,
    }
}

/// A split's weights (empty for an alias with one version).
fn split(route: &Route) -> std::collections::HashMap<String, u32> {
    if route.is_split() {
        route.targets().iter().cloned().collect()
    } else {
        Default::default()
    }
}

fn alias_status(change: AliasChange) -> proto::AliasStatus {
    proto::AliasStatus {
        alias: change.alias.clone(),
        id: change.id().to_string(),
        previous_id: change.previous_id.unwrap_or_default(),
        split: change.route.as_ref().map(split).unwrap_or_default(),
    }
}

fn desired_status(status: DesiredStatus) -> proto::DesiredStateStatus {
    proto::DesiredStateStatus {
        path: status.path.display().to_string(),
        content_hash: status.content_hash,
        applied_hash: status.applied_hash,
        in_sync: status.in_sync,
        errors: status.errors,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::ModelEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn load(&self, request: Request<proto::LoadRequest>) -> Result<Response<proto::ModelStatus>, Status> {
        let spec = self.spec(request.into_inner().spec).await?;
        Ok(Response::new(model_status(self.registry.load(spec, true).await?)))
    }

    async fn unload(&self, request: Request<proto::UnloadRequest>) -> Result<Response<proto::UnloadResponse>, Status> {
        let status = self.registry.unload(&request.into_inner().id).await?;
        Ok(Response::new(proto::UnloadResponse { status: Some(model_status(status)) }))
    }

    async fn list(&self, _: Request<proto::ListRequest>) -> Result<Response<proto::ListResponse>, Status> {
        let (models, aliases) = self.registry.list();
        let splits = self
            .registry
            .routes()
            .into_iter()
            .filter(|(_, route)| route.is_split())
            .map(|(alias, route)| (alias, proto::AliasSplit { weights: split(&route) }))
            .collect();
        Ok(Response::new(proto::ListResponse {
            models: models.into_iter().map(model_status).collect(),
            aliases: aliases.into_iter().collect(),
            splits,
            desired_state: self.registry.desired_status().map(desired_status),
        }))
    }

    async fn get(&self, request: Request<proto::GetRequest>) -> Result<Response<proto::ModelStatus>, Status> {
        Ok(Response::new(model_status(self.registry.status(&request.into_inner().id)?)))
    }

    async fn set_alias(
        &self,
        request: Request<proto::SetAliasRequest>,
    ) -> Result<Response<proto::AliasStatus>, Status> {
        let request = request.into_inner();
        let route = match (request.id.is_empty(), request.split.is_empty()) {
            (false, true) => Route::one(&request.id),
            (true, false) => Route::split(&request.split.into_iter().collect(), "split")?,
            (false, false) => return Err(GitcapError::invalid("split", "give either `id` or `split`, not both").into()),
            (true, true) => return Err(GitcapError::invalid("id", "missing: a version id, or a `split`").into()),
        };
        Ok(Response::new(alias_status(self.registry.set_alias(&request.alias, route).await?)))
    }

    async fn swap(&self, request: Request<proto::SwapRequest>) -> Result<Response<proto::SwapResponse>, Status> {
        let request = request.into_inner();
        let spec = self.spec(request.spec).await?;
        let (alias, model) = self.registry.swap(&request.alias, spec, request.replace, request.keep_previous).await?;
        Ok(Response::new(proto::SwapResponse { alias: Some(alias_status(alias)), model: Some(model_status(model)) }))
    }

    async fn rollback(&self, request: Request<proto::RollbackRequest>) -> Result<Response<proto::AliasStatus>, Status> {
        Ok(Response::new(alias_status(self.registry.rollback(&request.into_inner().alias).await?)))
    }

    type WatchStream = EventStream;

    async fn watch(&self, _: Request<proto::WatchRequest>) -> Result<Response<EventStream>, Status> {
        use proto::model_event::Event;
        let mut events = self.registry.subscribe();
        let (models, _) = self.registry.list();
        let routes = self.registry.routes();
        let desired = self.registry.desired_status();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let snapshot = models
                .into_iter()
                .map(|m| Event::Model(model_status(m)))
                .chain(routes.into_iter().map(|(alias, route)| {
                    Event::Alias(alias_status(AliasChange { alias, route: Some(route), previous_id: None }))
                }))
                .chain(desired.map(|d| Event::DesiredState(desired_status(d))));
            for event in snapshot {
                if tx.send(Ok(proto::ModelEvent { event: Some(event) })).await.is_err() {
                    return;
                }
            }
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    _ = tx.closed() => return,
                };
                let event = match event {
                    Ok(RegistryEvent::Model(status)) => Event::Model(model_status(*status)),
                    Ok(RegistryEvent::Alias(change)) => Event::Alias(alias_status(change)),
                    Ok(RegistryEvent::DesiredState(status)) => Event::DesiredState(desired_status(*status)),
                    Err(RecvError::Lagged(missed)) => {
                        let _ = tx
                            .send(
                                Err(GitcapError::DataLoss(format!("{missed} events were missed; watch again")).into()),
                            )
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                if tx.send(Ok(proto::ModelEvent { event: Some(event) })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
