//! The models this server holds, by `name@version`, the aliases that point at them, and every
//! change to either: loads, hot swaps, rollbacks, unloads. Requests resolve a name here and keep
//! the worker they got, so a swap never disturbs a request in flight.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use super::loader::{self, check_root, LoadSpec};
use super::source::HubOptions;
use super::state_file::{self, SavedState};
use crate::engine::{EngineOptions, ModelWorker};
use crate::error::{GitcapError, Result};

/// The alias requests without a model name use.
pub const DEFAULT_ALIAS: &str = "default";

#[derive(Debug, Clone, PartialEq)]
pub enum ModelState {
    Loading,
    Ready,
    Draining,
    Failed(String),
    Unloaded,
}

/// What the admin API reports about one version.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub id: String,
    pub spec: LoadSpec,
    pub version: String,
    pub state: ModelState,
    pub load_seconds: f64,
    pub memory_bytes: u64,
    pub aliases: Vec<String>,
    /// Download progress while loading from the hub, e.g. `model.safetensors: 120.0 of 709.0 MB`.
    pub progress: String,
}

#[derive(Debug, Clone)]
pub struct AliasChange {
    pub alias: String,
    pub id: String,
    pub previous_id: Option<String>,
}

#[derive(Debug, Clone)]
pub enum RegistryEvent {
    Model(Box<ModelStatus>),
    Alias(AliasChange),
}

/// How models are loaded and kept.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    pub hub: HubOptions,
    /// How each model's thread queues, batches and caches.
    pub engine: EngineOptions,
    /// Local directories the admin API may load from (`None`: no restriction).
    pub model_roots: Option<Vec<PathBuf>>,
    /// Where the desired models and aliases are saved.
    pub state_file: Option<PathBuf>,
    /// How long an unloaded version's requests may take to finish before they are stopped.
    pub drain_timeout: Duration,
}

struct Entry {
    status: ModelStatus,
    worker: Option<ModelWorker>,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, Entry>,
    aliases: BTreeMap<String, String>,
    /// alias → what it pointed at before its last change (for rollback).
    previous: HashMap<String, String>,
}

pub struct Registry {
    inner: Mutex<Inner>,
    options: RegistryOptions,
    events: broadcast::Sender<RegistryEvent>,
    /// Serialises loads, swaps and unloads (requests never wait on it).
    admin: tokio::sync::Mutex<()>,
}

pub fn model_id(name: &str, version: &str) -> String {
    format!("{name}@{version}")
}

impl Registry {
    pub fn new(options: RegistryOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Self { inner: Mutex::default(), options, events, admin: tokio::sync::Mutex::new(()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }

    /// The worker serving `name`: an alias, a `name@version`, or the default when empty.
    pub fn get(&self, name: &str) -> Result<ModelWorker> {
        let inner = self.lock();
        let wanted = if name.is_empty() { DEFAULT_ALIAS } else { name };
        let id = inner.aliases.get(wanted).cloned().unwrap_or_else(|| wanted.to_string());
        match inner.entries.get(&id) {
            Some(Entry { worker: Some(worker), status }) if status.state == ModelState::Ready => Ok(worker.clone()),
            Some(Entry { status, .. }) => {
                Err(GitcapError::Unavailable(format!("model `{id}` is {}; retry shortly", state_name(&status.state))))
            }
            None if inner.aliases.contains_key(wanted) => {
                Err(GitcapError::Unavailable(format!("`{wanted}` is being replaced; retry shortly")))
            }
            None => Err(GitcapError::ModelNotFound(wanted.to_string())),
        }
    }

    pub fn list(&self) -> (Vec<ModelStatus>, BTreeMap<String, String>) {
        let inner = self.lock();
        let statuses = inner.entries.keys().filter_map(|id| status_of(&inner, id)).collect();
        (statuses, inner.aliases.clone())
    }

    pub fn status(&self, id: &str) -> Result<ModelStatus> {
        let inner = self.lock();
        let id = inner.aliases.get(id).cloned().unwrap_or_else(|| id.to_string());
        status_of(&inner, &id).ok_or(GitcapError::ModelNotFound(id))
    }

    /// Names of the aliases and versions that can serve now (for health).
    pub fn serving_names(&self) -> Vec<(String, bool)> {
        let inner = self.lock();
        let ready = |id: &str| inner.entries.get(id).is_some_and(|e| e.status.state == ModelState::Ready);
        let mut names: Vec<(String, bool)> = inner.aliases.iter().map(|(a, id)| (a.clone(), ready(id))).collect();
        names.extend(inner.entries.iter().map(|(id, e)| (id.clone(), e.status.state == ModelState::Ready)));
        names
    }

    /// Loads `spec` beside what is loaded; points the alias `spec.name` (and `default`, for
    /// the first model) at it if those aliases do not exist yet.
    pub async fn load(&self, spec: LoadSpec, from_admin: bool) -> Result<ModelStatus> {
        let _admin = self.admin.lock().await;
        let status = self.load_locked(spec, from_admin).await?;
        for alias in [status.spec.name.clone(), DEFAULT_ALIAS.to_string()] {
            if !self.lock().aliases.contains_key(&alias) {
                self.point(&alias, &status.id)?;
            }
        }
        self.save()?;
        self.status(&status.id)
    }

    async fn load_locked(&self, spec: LoadSpec, from_admin: bool) -> Result<ModelStatus> {
        if spec.name.is_empty() || spec.name.contains('@') {
            return Err(GitcapError::invalid("spec.name", "a model needs a name without `@`"));
        }
        if from_admin {
            check_root(&spec.source, self.options.model_roots.as_deref())?;
        }
        let pending = format!("{}@(loading {})", spec.name, spec.source);
        let loading = ModelStatus {
            id: pending.clone(),
            spec: spec.clone(),
            version: String::new(),
            state: ModelState::Loading,
            load_seconds: 0.0,
            memory_bytes: 0,
            aliases: vec![],
            progress: String::new(),
        };
        self.lock().entries.insert(pending.clone(), Entry { status: loading.clone(), worker: None });
        self.emit(RegistryEvent::Model(Box::new(loading.clone())));
        tracing::info!(model = spec.name, source = spec.source, "loading");

        let hub = self.options.hub.clone();
        let to_load = spec.clone();
        let events = self.events.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut report = |p: loader::DownloadProgress| {
                let mb = |b: u64| b as f64 / 1e6;
                let text = format!("{}: {:.1} of {:.1} MB", p.file, mb(p.bytes), mb(p.total));
                let _ = events.send(RegistryEvent::Model(Box::new(ModelStatus { progress: text, ..loading.clone() })));
            };
            loader::load(&to_load, &hub, &mut report)
        })
        .await
        .map_err(|e| GitcapError::Internal(format!("loading task failed: {e}")))?;
        let mut inner = self.lock();
        inner.entries.remove(&pending);
        match result {
            Ok(loaded) => {
                let id = model_id(&spec.name, &loaded.info.version);
                if inner.entries.get(&id).is_some_and(|e| !matches!(e.status.state, ModelState::Failed(_))) {
                    return Err(GitcapError::AlreadyExists(format!("`{id}` is already loaded")));
                }
                let status = ModelStatus {
                    id: id.clone(),
                    spec,
                    version: loaded.info.version.clone(),
                    state: ModelState::Ready,
                    load_seconds: loaded.load_seconds,
                    memory_bytes: loaded.info.weights_bytes as u64,
                    aliases: vec![],
                    progress: String::new(),
                };
                tracing::info!(model = id, secs = loaded.load_seconds, "ready");
                crate::metrics::model_memory(&loaded.info.name, &loaded.info.version, Some(loaded.info.weights_bytes));
                let worker = ModelWorker::spawn(loaded.pipeline, loaded.info, self.options.engine);
                inner.entries.insert(id.clone(), Entry { status: status.clone(), worker: Some(worker) });
                drop(inner);
                self.emit(RegistryEvent::Model(Box::new(status.clone())));
                Ok(status)
            }
            Err(error) => {
                let id = format!("{}@(failed {})", spec.name, spec.source);
                tracing::warn!(model = spec.name, %error, "load failed");
                let status = ModelStatus {
                    id: id.clone(),
                    spec,
                    version: String::new(),
                    state: ModelState::Failed(error.to_string()),
                    load_seconds: 0.0,
                    memory_bytes: 0,
                    aliases: vec![],
                    progress: String::new(),
                };
                inner.entries.insert(id, Entry { status: status.clone(), worker: None });
                drop(inner);
                self.emit(RegistryEvent::Model(Box::new(status)));
                Err(error)
            }
        }
    }

    /// Points `alias` at the READY version `id`.
    pub async fn set_alias(&self, alias: &str, id: &str) -> Result<AliasChange> {
        let _admin = self.admin.lock().await;
        let change = self.point(alias, id)?;
        self.save()?;
        Ok(change)
    }

    fn point(&self, alias: &str, id: &str) -> Result<AliasChange> {
        if alias.is_empty() || alias.contains('@') {
            return Err(GitcapError::invalid("alias", "an alias is a non-empty name without `@`"));
        }
        let mut inner = self.lock();
        match inner.entries.get(id) {
            Some(e) if e.status.state == ModelState::Ready => {}
            Some(e) => {
                return Err(GitcapError::FailedPrecondition(format!(
                    "`{id}` is {}, not ready",
                    state_name(&e.status.state)
                )))
            }
            None => return Err(GitcapError::ModelNotFound(id.to_string())),
        }
        let previous_id = inner.aliases.insert(alias.to_string(), id.to_string());
        if let Some(previous) = &previous_id {
            if previous != id {
                inner.previous.insert(alias.to_string(), previous.clone());
            }
        }
        drop(inner);
        let change = AliasChange { alias: alias.to_string(), id: id.to_string(), previous_id };
        tracing::info!(alias, id, previous = ?change.previous_id, "alias set");
        self.emit(RegistryEvent::Alias(change.clone()));
        Ok(change)
    }

    /// Hot swap (see the admin API): load `spec` beside the alias's current version, warm it,
    /// repoint the alias, then drain and unload the old version unless `keep_previous`.
    /// With `replace`, the old version is unloaded first.
    pub async fn swap(
        self: &Arc<Self>,
        alias: &str,
        spec: LoadSpec,
        replace: bool,
        keep_previous: bool,
    ) -> Result<(AliasChange, ModelStatus)> {
        let _admin = self.admin.lock().await;
        // Refuse a spec that cannot be loaded before touching what serves now.
        check_root(&spec.source, self.options.model_roots.as_deref())?;
        let old = self.lock().aliases.get(alias).cloned();
        if replace {
            if let Some(old) = &old {
                // The alias keeps pointing at the gone version meanwhile: its requests get
                // UNAVAILABLE and its health NOT_SERVING until the new version is in.
                self.unload_locked(old, true)?;
            }
        }
        let status = self.load_locked(spec, true).await?;
        let change = self.point(alias, &status.id)?;
        if let Some(old) = old.filter(|old| !replace && !keep_previous && *old != status.id) {
            let still_used = self.lock().aliases.values().any(|id| *id == old);
            if !still_used {
                self.unload_locked(&old, false)?;
            }
        }
        self.save()?;
        Ok((change, self.status(&status.id)?))
    }

    /// Points `alias` back at the version it pointed at before its last change.
    pub async fn rollback(&self, alias: &str) -> Result<AliasChange> {
        let _admin = self.admin.lock().await;
        let previous = self.lock().previous.get(alias).cloned().ok_or_else(|| {
            GitcapError::FailedPrecondition(format!("`{alias}` has no previous version to roll back to"))
        })?;
        let change = self.point(alias, &previous).map_err(|e| match e {
            GitcapError::ModelNotFound(id) => {
                GitcapError::FailedPrecondition(format!("the previous version `{id}` is no longer loaded"))
            }
            other => other,
        })?;
        self.save()?;
        Ok(change)
    }

    /// Unloads `id`: new requests get NOT_FOUND at once; requests in flight finish (within the
    /// drain timeout), then the memory is freed.
    pub async fn unload(self: &Arc<Self>, id: &str) -> Result<ModelStatus> {
        let _admin = self.admin.lock().await;
        let status = self.unload_locked(id, false)?;
        self.save()?;
        Ok(status)
    }

    fn unload_locked(self: &Arc<Self>, id: &str, keep_aliases: bool) -> Result<ModelStatus> {
        let mut inner = self.lock();
        let entry = inner.entries.remove(id).ok_or_else(|| GitcapError::ModelNotFound(id.to_string()))?;
        if !keep_aliases {
            inner.aliases.retain(|_, target| target != id);
        }
        drop(inner);
        let mut status = entry.status;
        status.state = ModelState::Draining;
        status.aliases.clear();
        self.emit(RegistryEvent::Model(Box::new(status.clone())));
        if let Some(worker) = entry.worker {
            let (events, deadline, mut unloaded) = (self.events.clone(), self.options.drain_timeout, status.clone());
            let mut drain = worker.into_drain();
            let registry = Arc::downgrade(self);
            tokio::spawn(async move {
                if tokio::time::timeout(deadline, drain.stopped()).await.is_err() {
                    tracing::warn!(model = unloaded.id, "drain timeout: stopping the requests still running");
                    drain.close();
                    drain.stopped().await;
                }
                unloaded.state = ModelState::Unloaded;
                unloaded.memory_bytes = 0;
                // Unless the same version was loaded again meanwhile (a swap with `replace`).
                if registry.upgrade().is_none_or(|r| !r.lock().entries.contains_key(&unloaded.id)) {
                    crate::metrics::model_memory(&unloaded.spec.name, &unloaded.version, None);
                }
                tracing::info!(model = unloaded.id, "unloaded");
                let _ = events.send(RegistryEvent::Model(Box::new(unloaded)));
            });
        }
        Ok(status)
    }

    /// Restores the models and aliases saved in the state file; returns false when there is none.
    pub async fn restore(&self) -> Result<bool> {
        let Some(path) = &self.options.state_file else { return Ok(false) };
        let Some(saved) = state_file::read(path)? else { return Ok(false) };
        let _admin = self.admin.lock().await;
        for spec in saved.models {
            self.load_locked(spec, false).await?;
        }
        for (alias, id) in saved.aliases {
            self.point(&alias, &id).map_err(|e| {
                GitcapError::model_files(format!("state file {}: alias `{alias}` → `{id}`: {e}", path.display()))
            })?;
        }
        Ok(true)
    }

    fn save(&self) -> Result<()> {
        let Some(path) = &self.options.state_file else { return Ok(()) };
        let inner = self.lock();
        let saved = SavedState {
            models: inner
                .entries
                .values()
                .filter(|e| e.status.state == ModelState::Ready)
                .map(|e| {
                    let spec = &e.status.spec;
                    // A hub model restarts at the commit it runs now.
                    let from_hub = !std::path::Path::new(&spec.source).exists();
                    let revision = if from_hub { e.status.version.clone() } else { spec.revision.clone() };
                    LoadSpec { version: e.status.version.clone(), revision, ..spec.clone() }
                })
                .collect(),
            aliases: inner.aliases.clone(),
        };
        drop(inner);
        state_file::write(path, &saved)
    }

    fn emit(&self, event: RegistryEvent) {
        let _ = self.events.send(event);
    }
}

fn status_of(inner: &Inner, id: &str) -> Option<ModelStatus> {
    let entry = inner.entries.get(id)?;
    let mut status = entry.status.clone();
    status.aliases = inner.aliases.iter().filter(|(_, target)| *target == id).map(|(a, _)| a.clone()).collect();
    Some(status)
}

fn state_name(state: &ModelState) -> &'static str {
    match state {
        ModelState::Loading => "loading",
        ModelState::Ready => "ready",
        ModelState::Draining => "draining",
        ModelState::Failed(_) => "failed",
        ModelState::Unloaded => "unloaded",
    }
}
