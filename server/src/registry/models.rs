//! The models this server has loaded, by name, and which one answers when a request names none.

use dashmap::DashMap;

use crate::engine::ModelWorker;
use crate::error::{GitcapError, Result};

#[derive(Default)]
pub struct Models {
    workers: DashMap<String, ModelWorker>,
    default: std::sync::RwLock<Option<String>>,
}

impl Models {
    pub fn insert(&self, worker: ModelWorker) {
        let name = worker.info.name.clone();
        self.default.write().expect("default lock").get_or_insert_with(|| name.clone());
        self.workers.insert(name, worker);
    }

    /// The model `name` (a name or an exact version), or the default one when `name` is empty.
    pub fn get(&self, name: &str) -> Result<ModelWorker> {
        let name = if name.is_empty() {
            self.default
                .read()
                .expect("default lock")
                .clone()
                .ok_or_else(|| GitcapError::ModelNotFound("(default)".into()))?
        } else {
            name.to_string()
        };
        if let Some(worker) = self.workers.get(&name) {
            return Ok(worker.clone());
        }
        self.workers.iter().find(|w| w.info.version == name).map(|w| w.clone()).ok_or(GitcapError::ModelNotFound(name))
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.workers.iter().map(|w| w.key().clone()).collect();
        names.sort();
        names
    }
}
