//! Declarative mode: bringing the registry to a [`DesiredState`]. Load (and warm up) the
//! versions that are missing, move each alias only once every version it names is READY, remove
//! the aliases the file no longer has, then drain and unload the versions it no longer has.
//!
//! A version that fails to load leaves every alias that names it where it was (still serving
//! the old version) and is reported: a FAILED entry in List and Watch, and the reconcile's
//! errors in [`DesiredStatus`] (Watch, the `gitcap.v1.DesiredState` health service, the
//! `gitcap_desired_state_in_sync` metric). A version the file dropped while an alias still sends
//! requests to it (because that alias could not move) stays loaded until the alias moves.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::desired::{DesiredState, DesiredStatus};
use super::loader::LoadSpec;
use super::models::{ModelState, Registry};

impl Registry {
    /// Brings the registry to `desired`; the problems met (none: in sync). Loads run one at a
    /// time, so two loads never hold memory at once; requests keep being served throughout.
    pub async fn reconcile(self: &Arc<Self>, desired: &DesiredState) -> Vec<String> {
        let _admin = self.admin.lock().await;
        let mut errors = Vec::new();
        // FAILED entries record the last attempt: this one makes its own.
        for (id, state, _) in self.entries() {
            if matches!(state, ModelState::Failed(_)) {
                self.forget_failed(&id);
            }
        }

        let loaded = self.entries();
        for (id, spec) in &desired.versions {
            match loaded.iter().find(|(loaded_id, _, _)| loaded_id == id) {
                Some((_, ModelState::Ready, current)) if same_source(current, spec) => {}
                Some((_, _, current)) => errors.push(format!(
                    "`{id}` is loaded from {} and the file now says {}: a version id names one source, so give \
                     the new one its own id (and move the aliases to it)",
                    describe(current),
                    describe(spec)
                )),
                None => {
                    if let Err(error) = self.load_locked(spec.clone(), true).await {
                        errors.push(format!("`{id}` failed to load: {error}"));
                    }
                }
            }
        }

        let current = self.routes();
        for (alias, route) in &desired.aliases {
            if current.get(alias) == Some(route) {
                continue;
            }
            if let Err(error) = self.point(alias, route.clone()) {
                let stays = match current.get(alias) {
                    Some(now) => format!("stays on {}", now.target()),
                    None => "is not served".to_string(),
                };
                errors.push(format!("alias `{alias}` {stays}: {error}"));
            }
        }
        for alias in current.keys().filter(|alias| !desired.aliases.contains_key(*alias)) {
            self.remove_alias(alias);
        }

        let routed: BTreeSet<String> =
            self.routes().values().flat_map(|route| route.targets().iter().map(|(id, _)| id.clone())).collect();
        for (id, state, _) in self.entries() {
            if desired.versions.contains_key(&id) || state != ModelState::Ready {
                continue;
            }
            if routed.contains(&id) {
                errors.push(format!("`{id}` is no longer in the file but stays loaded: an alias that could not move still sends requests to it"));
            } else if let Err(error) = self.unload_locked(&id, false) {
                errors.push(format!("unloading `{id}`: {error}"));
            }
        }
        errors
    }

    /// Records and announces where the server stands against its desired-state file.
    pub(super) fn set_desired_status(&self, status: DesiredStatus) {
        crate::metrics::desired_state(status.in_sync);
        let mut current = self.desired.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref() == Some(&status) {
            return;
        }
        *current = Some(status.clone());
        drop(current);
        self.emit(super::models::RegistryEvent::DesiredState(Box::new(status)));
    }
}

/// The same checkpoint, loaded the same way.
fn same_source(a: &LoadSpec, b: &LoadSpec) -> bool {
    (&a.source, &a.revision, a.device, a.dtype) == (&b.source, &b.revision, b.device, b.dtype)
}

fn describe(spec: &LoadSpec) -> String {
    let revision = spec.revision.as_ref().map(|revision| format!(" at {revision}")).unwrap_or_default();
    format!("{}{revision} ({}, {})", spec.source, spec.device, spec.dtype)
}
