//! The models this server holds, by `name@version`, the aliases that point at them (one version
//! or a canary split, [`super::route`]), and every change to either: loads, hot swaps,
//! rollbacks, unloads. Requests resolve a name here and keep the worker they got, so a swap never
//! disturbs a request in flight.
//!
//! Changes come from the admin API, or, in declarative mode (`admin.desired_state`), only from
//! the desired-state file ([`super::reconcile`]): the admin API's changes are then refused.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use super::desired::DesiredStatus;
use super::loader::{self, check_root, LoadSpec};
use super::route::{Route, DEFAULT_ALIAS};
use super::source::HubOptions;
use super::state_file::{self, SavedState};
use crate::engine::{EngineOptions, ModelWorker};
use crate::error::{GitcapError, Result};

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
    /// The hub commit a hub model was loaded at (empty for a local directory).
    pub commit: String,
}

/// An alias now sends its requests along `route` (`None`: the alias was removed).
#[derive(Debug, Clone)]
pub struct AliasChange {
    pub alias: String,
    pub route: Option<Route>,
    /// Where it sent them before (the primary version of a split).
    pub previous_id: Option<String>,
}

impl AliasChange {
    /// The version the alias points at (of a split, the one with the largest weight); empty
    /// when the alias was removed.
    pub fn id(&self) -> &str {
        self.route.as_ref().map(Route::primary).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub enum RegistryEvent {
    Model(Box<ModelStatus>),
    Alias(AliasChange),
    /// Declarative mode: where the server stands against its desired-state file.
    DesiredState(Box<DesiredStatus>),
}

/// How models are loaded and kept.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    pub hub: HubOptions,
    /// How each model's thread queues, batches and caches.
    pub engine: EngineOptions,
    /// Local directories the admin API may load from (`None`: no restriction).
    pub model_roots: Option<Vec<PathBuf>>,
    /// Where the models and aliases set through the admin API are saved.
    pub state_file: Option<PathBuf>,
    /// Declarative mode: the desired-state file this server follows; the admin API's changes
    /// are refused.
    pub desired_state: Option<PathBuf>,
    /// How long an unloaded version's requests may take to finish before they are stopped.
    pub drain_timeout: Duration,
}

struct Entry {
    status: ModelStatus,
    worker: Option<ModelWorker>,
}

#[derive(Default)]
pub(super) struct Inner {
    entries: BTreeMap<String, Entry>,
    aliases: BTreeMap<String, Route>,
    /// alias → where it sent requests before its last change (for rollback).
    previous: HashMap<String, Route>,
}

pub struct Registry {
    inner: Mutex<Inner>,
    pub(super) options: RegistryOptions,
    events: broadcast::Sender<RegistryEvent>,
    /// Serialises loads, swaps, unloads and reconciles (requests never wait on it).
    pub(super) admin: tokio::sync::Mutex<()>,
    /// Declarative mode: the last reconcile's outcome.
    pub(super) desired: Mutex<Option<DesiredStatus>>,
    /// Set at shutdown: requests already running finish, new ones are refused.
    stopping: std::sync::atomic::AtomicBool,
}

pub fn model_id(name: &str, version: &str) -> String {
    format!("{name}@{version}")
}

impl Registry {
    pub fn new(options: RegistryOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(256);
        Arc::new(Self {
            inner: Mutex::default(),
            options,
            events,
            admin: tokio::sync::Mutex::new(()),
            desired: Mutex::default(),
            stopping: Default::default(),
        })
    }

    /// From now on every new request gets UNAVAILABLE (the server is shutting down); those
    /// already holding a worker finish. A request that reaches the server on an open connection
    /// before the client has read the GOAWAY is refused here rather than queued.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.events.subscribe()
    }

    /// The worker serving `name`: an alias, a `name@version`, or (`None`) the default.
    pub fn get(&self, name: Option<&str>) -> Result<ModelWorker> {
        self.get_routed(name, None)
    }

    /// Like [`Self::get`]; of an alias split between versions, `route_key` (when given) picks
    /// the version, the same one for the same key (see [`super::route`]).
    pub fn get_routed(&self, name: Option<&str>, route_key: Option<&str>) -> Result<ModelWorker> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(GitcapError::Unavailable("the server is shutting down; retry on another replica".into()));
        }
        let inner = self.lock();
        let wanted = name.unwrap_or(DEFAULT_ALIAS);
        let id = match inner.aliases.get(wanted) {
            Some(route) => route.pick(route_key).to_string(),
            None => wanted.to_string(),
        };
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

    /// Every version's status, and each alias's version (of a split: the primary one).
    pub fn list(&self) -> (Vec<ModelStatus>, BTreeMap<String, String>) {
        let inner = self.lock();
        let statuses = inner.entries.keys().filter_map(|id| status_of(&inner, id)).collect();
        let aliases = inner.aliases.iter().map(|(alias, route)| (alias.clone(), route.primary().to_string())).collect();
        (statuses, aliases)
    }

    /// Every alias's route, splits in full.
    pub fn routes(&self) -> BTreeMap<String, Route> {
        self.lock().aliases.clone()
    }

    /// Declarative mode: where the server stands against its desired-state file.
    pub fn desired_status(&self) -> Option<DesiredStatus> {
        self.desired.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self, id: &str) -> Result<ModelStatus> {
        let inner = self.lock();
        let id = inner.aliases.get(id).map(|route| route.primary().to_string()).unwrap_or_else(|| id.to_string());
        status_of(&inner, &id).ok_or(GitcapError::ModelNotFound(id))
    }

    /// Names of the aliases and versions that can serve now (for health).
    pub fn serving_names(&self) -> Vec<(String, bool)> {
        let inner = self.lock();
        let ready = |id: &str| inner.entries.get(id).is_some_and(|e| e.status.state == ModelState::Ready);
        // An alias is ready when every version it sends requests to is.
        let mut names: Vec<(String, bool)> = inner
            .aliases
            .iter()
            .map(|(a, route)| (a.clone(), route.targets().iter().all(|(id, _)| ready(id))))
            .collect();
        names.extend(inner.entries.iter().map(|(id, e)| (id.clone(), e.status.state == ModelState::Ready)));
        names
    }

    /// Loads `spec` beside what is loaded; points the alias `spec.name` (and `default`, for
    /// the first model) at it if those aliases do not exist yet.
    pub async fn load(&self, spec: LoadSpec, from_admin: bool) -> Result<ModelStatus> {
        self.check_imperative()?;
        let _admin = self.admin.lock().await;
        let status = self.load_locked(spec, from_admin).await?;
        for alias in [status.spec.name.clone(), DEFAULT_ALIAS.to_string()] {
            if !self.lock().aliases.contains_key(&alias) {
                self.point(&alias, Route::one(&status.id))?;
            }
        }
        self.save()?;
        self.status(&status.id)
    }

    pub(super) async fn load_locked(&self, spec: LoadSpec, from_admin: bool) -> Result<ModelStatus> {
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
            commit: String::new(),
        };
        self.lock().entries.insert(pending.clone(), Entry { status: loading.clone(), worker: None });
        self.emit(RegistryEvent::Model(Box::new(loading.clone())));
        tracing::info!(model = spec.name, source = spec.source, "loading");

        let hub = self.options.hub.clone();
        let engine = self.options.engine;
        let to_load = spec.clone();
        let events = self.events.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut report = |p: loader::DownloadProgress| {
                let mb = |b: u64| b as f64 / 1e6;
                let text = format!("{}: {:.1} of {:.1} MB", p.file, mb(p.bytes), mb(p.total));
                let _ = events.send(RegistryEvent::Model(Box::new(ModelStatus { progress: text, ..loading.clone() })));
            };
            loader::load(&to_load, &hub, engine, &mut report)
        })
        .await
        .map_err(|e| GitcapError::Internal(format!("loading task failed: {e}")))?;
        let mut inner = self.lock();
        inner.entries.remove(&pending);
        match result {
            Ok(loaded) => {
                let info = loaded.worker.info.clone();
                let id = model_id(&spec.name, &info.version);
                if inner.entries.get(&id).is_some_and(|e| !matches!(e.status.state, ModelState::Failed(_))) {
                    return Err(GitcapError::AlreadyExists(format!("`{id}` is already loaded")));
                }
                let status = ModelStatus {
                    id: id.clone(),
                    spec,
                    version: info.version.clone(),
                    state: ModelState::Ready,
                    load_seconds: loaded.load_seconds,
                    memory_bytes: info.weights_bytes as u64,
                    aliases: vec![],
                    progress: String::new(),
                    commit: loaded.commit.unwrap_or_default(),
                };
                tracing::info!(model = id, secs = loaded.load_seconds, "ready");
                crate::metrics::model_memory(&info.name, &info.version, Some(info.weights_bytes));
                let worker = loaded.worker;
                inner.entries.insert(id.clone(), Entry { status: status.clone(), worker: Some(worker) });
                drop(inner);
                self.emit(RegistryEvent::Model(Box::new(status.clone())));
                Ok(status)
            }
            Err(error) => {
                // Listed under the id its Load call or desired-state file gave it, so that List
                // and Watch find it; without a version label (the hub commit or `local` would
                // have been it) or where that id serves already, under its source.
                let serving = |id: &String| inner.entries.get(id).is_some_and(|e| e.worker.is_some());
                let given = spec.version.as_ref().map(|version| (model_id(&spec.name, version), version.clone()));
                let (id, version) = match given.filter(|(id, _)| !serving(id)) {
                    Some(given) => given,
                    None => (format!("{}@(failed {})", spec.name, spec.source), String::new()),
                };
                tracing::warn!(model = id, %error, "load failed");
                let status = ModelStatus {
                    id: id.clone(),
                    spec,
                    version,
                    state: ModelState::Failed(error.to_string()),
                    load_seconds: 0.0,
                    memory_bytes: 0,
                    aliases: vec![],
                    progress: String::new(),
                    commit: String::new(),
                };
                inner.entries.insert(id, Entry { status: status.clone(), worker: None });
                drop(inner);
                self.emit(RegistryEvent::Model(Box::new(status)));
                Err(error)
            }
        }
    }

    /// Points `alias` at the READY version `id`, or splits it between READY versions by weight.
    pub async fn set_alias(&self, alias: &str, route: Route) -> Result<AliasChange> {
        self.check_imperative()?;
        let _admin = self.admin.lock().await;
        let change = self.point(alias, route)?;
        self.save()?;
        Ok(change)
    }

    /// Sends `alias`'s requests along `route`, once every version in it is READY.
    pub(super) fn point(&self, alias: &str, route: Route) -> Result<AliasChange> {
        if alias.is_empty() || alias.contains(['@', '(', ')']) {
            return Err(GitcapError::invalid("alias", "an alias is a non-empty name without `@`, `(` or `)`"));
        }
        let mut inner = self.lock();
        for (id, _) in route.targets() {
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
        }
        let previous = inner.aliases.insert(alias.to_string(), route.clone());
        if let Some(previous) = &previous {
            if *previous != route {
                inner.previous.insert(alias.to_string(), previous.clone());
            }
        }
        drop(inner);
        let change = AliasChange {
            alias: alias.to_string(),
            route: Some(route),
            previous_id: previous.map(|p| p.primary().to_string()),
        };
        let target = change.route.as_ref().map_or_else(String::new, |route| route.target().to_string());
        let previous = change.previous_id.as_deref().unwrap_or("");
        tracing::info!(alias, route = %target, previous, "alias set");
        self.emit(RegistryEvent::Alias(change.clone()));
        Ok(change)
    }

    /// Removes `alias`: requests naming it get NOT_FOUND.
    pub(super) fn remove_alias(&self, alias: &str) {
        let mut inner = self.lock();
        let Some(previous) = inner.aliases.remove(alias) else { return };
        inner.previous.remove(alias);
        drop(inner);
        tracing::info!(alias, "alias removed");
        let previous_id = Some(previous.primary().to_string());
        self.emit(RegistryEvent::Alias(AliasChange { alias: alias.to_string(), route: None, previous_id }));
    }

    /// Every entry's id, state and spec (for reconciling).
    pub(super) fn entries(&self) -> Vec<(String, ModelState, LoadSpec)> {
        let inner = self.lock();
        inner.entries.iter().map(|(id, e)| (id.clone(), e.status.state.clone(), e.status.spec.clone())).collect()
    }

    /// Forgets a FAILED entry (a load attempt's record), telling watchers it is gone.
    pub(super) fn forget_failed(&self, id: &str) {
        let mut inner = self.lock();
        if !inner.entries.get(id).is_some_and(|e| matches!(e.status.state, ModelState::Failed(_))) {
            return;
        }
        let Some(entry) = inner.entries.remove(id) else { return };
        drop(inner);
        self.emit(RegistryEvent::Model(Box::new(ModelStatus { state: ModelState::Unloaded, ..entry.status })));
    }

    /// Refuses a change through the admin API when the desired-state file decides.
    fn check_imperative(&self) -> Result<()> {
        match &self.options.desired_state {
            None => Ok(()),
            Some(path) => Err(GitcapError::FailedPrecondition(format!(
                "this server follows the desired-state file {} (admin.desired_state): change models and aliases \
                 there; the admin API only reads (List, Get, Watch)",
                path.display()
            ))),
        }
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
        self.check_imperative()?;
        let _admin = self.admin.lock().await;
        // Refuse a spec that cannot be loaded before touching what serves now.
        check_root(&spec.source, self.options.model_roots.as_deref())?;
        let old: Vec<String> = match self.lock().aliases.get(alias) {
            Some(route) => route.targets().iter().map(|(id, _)| id.clone()).collect(),
            None => vec![],
        };
        if replace {
            for old in &old {
                // The alias keeps pointing at the gone version meanwhile: its requests get
                // UNAVAILABLE and its health NOT_SERVING until the new version is in.
                self.unload_locked(old, true)?;
            }
        }
        let status = self.load_locked(spec, true).await?;
        let change = self.point(alias, Route::one(&status.id))?;
        for old in old.into_iter().filter(|old| !replace && !keep_previous && *old != status.id) {
            let still_used = self.lock().aliases.values().any(|route| route.contains(&old));
            if !still_used {
                self.unload_locked(&old, false)?;
            }
        }
        self.save()?;
        Ok((change, self.status(&status.id)?))
    }

    /// Points `alias` back at the version it pointed at before its last change.
    pub async fn rollback(&self, alias: &str) -> Result<AliasChange> {
        self.check_imperative()?;
        let _admin = self.admin.lock().await;
        let previous = self.lock().previous.get(alias).cloned().ok_or_else(|| {
            GitcapError::FailedPrecondition(format!("`{alias}` has no previous version to roll back to"))
        })?;
        let change = self.point(alias, previous).map_err(|e| match e {
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
        self.check_imperative()?;
        let _admin = self.admin.lock().await;
        let status = self.unload_locked(id, false)?;
        self.save()?;
        Ok(status)
    }

    pub(super) fn unload_locked(self: &Arc<Self>, id: &str, keep_aliases: bool) -> Result<ModelStatus> {
        let mut inner = self.lock();
        let entry = inner.entries.remove(id).ok_or_else(|| GitcapError::ModelNotFound(id.to_string()))?;
        if !keep_aliases {
            // A split loses the version; an alias left with none is removed.
            let routes = std::mem::take(&mut inner.aliases);
            inner.aliases = routes.into_iter().filter_map(|(alias, route)| Some((alias, route.without(id)?))).collect();
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
        for (alias, target) in saved.aliases {
            let failed = |e: GitcapError| {
                GitcapError::model_files(format!("state file {}: alias `{alias}` → {target}: {e}", path.display()))
            };
            let route = Route::from_target(&target, "aliases").map_err(failed)?;
            self.point(&alias, route).map_err(failed)?;
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
                    let commit = Some(e.status.commit.clone()).filter(|commit| !commit.is_empty());
                    let revision = commit.or_else(|| spec.revision.clone());
                    LoadSpec { version: Some(e.status.version.clone()), revision, ..spec.clone() }
                })
                .collect(),
            aliases: inner.aliases.iter().map(|(alias, route)| (alias.clone(), route.target())).collect(),
        };
        drop(inner);
        state_file::write(path, &saved)
    }

    pub(super) fn emit(&self, event: RegistryEvent) {
        let _ = self.events.send(event);
    }
}

fn status_of(inner: &Inner, id: &str) -> Option<ModelStatus> {
    let entry = inner.entries.get(id)?;
    let mut status = entry.status.clone();
    status.aliases = inner.aliases.iter().filter(|(_, route)| route.contains(id)).map(|(a, _)| a.clone()).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Arc<Registry> {
        Registry::new(RegistryOptions {
            hub: Default::default(),
            engine: Default::default(),
            model_roots: None,
            state_file: None,
            desired_state: None,
            drain_timeout: Duration::from_secs(1),
        })
    }

    #[tokio::test]
    async fn a_version_that_fails_to_load_is_listed_under_the_id_it_was_given() {
        let registry = registry();
        let missing = tempfile::tempdir().unwrap();
        let spec = |version: &str| LoadSpec {
            name: "hcap".into(),
            source: missing.path().join("nothing-here").display().to_string(),
            revision: Some("main".into()),
            version: Some(version.to_string()).filter(|v| !v.is_empty()),
            device: crate::device::DeviceSpec::CPU,
            dtype: crate::model::Precision::Uniform(tch::Kind::Float),
        };
        registry.load(spec("bad"), true).await.unwrap_err();
        let (statuses, _) = registry.list();
        let failed = statuses.iter().find(|s| s.id == "hcap@bad").expect("listed as hcap@bad");
        assert_eq!(failed.version, "bad");
        assert!(matches!(failed.state, ModelState::Failed(ref error) if !error.is_empty()), "{:?}", failed.state);
        // Without a version label the id would have come from the checkpoint: the source names it.
        registry.load(spec(""), true).await.unwrap_err();
        let (statuses, _) = registry.list();
        assert!(statuses.iter().any(|s| s.id.starts_with("hcap@(failed ") && s.version.is_empty()), "{statuses:?}");
    }

    #[test]
    fn after_stop_accepting_every_request_is_refused_unavailable() {
        let registry = registry();
        assert!(matches!(registry.get(Some("nothing-loaded")), Err(GitcapError::ModelNotFound(_))));
        registry.stop_accepting();
        for name in [None, Some("nothing-loaded"), Some("tiny@local")] {
            match registry.get_routed(name, Some("key")) {
                Err(GitcapError::Unavailable(message)) => assert!(message.contains("shutting down"), "{message}"),
                Err(other) => panic!("{name:?}: {other}"),
                Ok(_) => panic!("{name:?}: a worker after stop_accepting"),
            }
        }
    }
}
