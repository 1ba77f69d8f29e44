//! Where a checkpoint comes from: a local directory, or a Hugging Face Hub repository fetched
//! with `hf-hub` into the cache Python shares (`HF_HOME`, default `~/.cache/huggingface`),
//! or read from that cache alone when offline.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{GitcapError, Result};

/// Files a GIT checkpoint may have; the first must exist, the rest are optional.
const REQUIRED: &[&str] = &["config.json"];
const OPTIONAL: &[&str] = &[
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];
const WEIGHT_FILES: &[&str] = &["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"];

/// How to reach the Hub.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// Read only the local cache (also set by `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    pub token: Option<String>,
    /// The hub cache directory (`$HF_HOME/hub` when unset).
    pub cache_dir: Option<PathBuf>,
}

/// A checkpoint on disk and the version it is.
#[derive(Debug, Clone)]
pub struct ResolvedCheckpoint {
    pub dir: PathBuf,
    /// The hub commit sha, or `local` for a directory.
    pub version: String,
}

/// How far a download has come: `bytes` of `total` of `file`.
#[derive(Debug, Clone)]
pub struct DownloadProgress {
    pub file: String,
    pub bytes: u64,
    pub total: u64,
}

/// `spec` is a directory, or a hub repo id (`microsoft/git-base-vatex`). Downloads are logged.
pub fn resolve(spec: &str, revision: Option<&str>, hub: &HubOptions) -> Result<ResolvedCheckpoint> {
    resolve_with_progress(spec, revision, hub, &mut |_| {})
}

/// Like [`resolve`], also reporting download progress (about every tenth of each file).
pub fn resolve_with_progress(
    spec: &str,
    revision: Option<&str>,
    hub: &HubOptions,
    progress: &mut dyn FnMut(DownloadProgress),
) -> Result<ResolvedCheckpoint> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(ResolvedCheckpoint { dir: path.to_path_buf(), version: "local".into() });
    }
    if spec.starts_with('.') || spec.starts_with('/') || spec.split('/').count() > 2 {
        return Err(GitcapError::model_files(format!("{spec} is not a directory")));
    }
    let revision = revision.unwrap_or("main");
    let offline = hub.offline || std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    let cache = match &hub.cache_dir {
        Some(dir) => Cache::new(dir.clone()),
        None => Cache::from_env(),
    };
    let repo = Repo::with_revision(spec.to_string(), RepoType::Model, revision.to_string());
    let dir = if offline { from_cache(&cache, &repo, spec)? } else { download(&cache, &repo, spec, hub, progress)? };
    let version = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| revision.into());
    Ok(ResolvedCheckpoint { dir, version })
}

fn from_cache(cache: &Cache, repo: &Repo, spec: &str) -> Result<PathBuf> {
    let cached = cache.repo(repo.clone());
    let config = cached.get(REQUIRED[0]).ok_or_else(|| {
        GitcapError::model_files(format!(
            "offline mode: {spec} (revision {}) is not in the hub cache {}; download it once with network access, \
             or pass a local checkpoint directory",
            repo.revision(),
            cache.path().display()
        ))
    })?;
    let dir = config.parent().expect("a cached file lives in a snapshot directory").to_path_buf();
    if !WEIGHT_FILES.iter().any(|f| dir.join(f).exists()) {
        return Err(GitcapError::model_files(format!(
            "offline mode: the cached {spec} has no weights file in {}",
            dir.display()
        )));
    }
    Ok(dir)
}

fn download(
    cache: &Cache,
    repo: &Repo,
    spec: &str,
    hub: &HubOptions,
    progress: &mut dyn FnMut(DownloadProgress),
) -> Result<PathBuf> {
    let unreachable = |e: hf_hub::api::sync::ApiError| {
        GitcapError::model_files(format!(
            "cannot fetch {spec} from the Hugging Face Hub ({e}). Without network access, serve a local checkpoint \
             directory (`--model /path/to/checkpoint`, with config.json, model.safetensors or pytorch_model.bin, \
             tokenizer files and preprocessor_config.json), or use a hub cache that already holds it: \
             HF_HOME=/path/to/hf-home HF_HUB_OFFLINE=1"
        ))
    };
    let mut builder = ApiBuilder::from_cache(cache.clone());
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder
        .with_token(hub.token.clone().or_else(|| cache.token()))
        .with_progress(false)
        .build()
        .map_err(unreachable)?
        .repo(repo.clone());
    let info = api.info().map_err(unreachable)?;
    let has = |name: &str| info.siblings.iter().any(|s| s.rfilename == name);
    let weights = WEIGHT_FILES
        .iter()
        .find(|f| has(f))
        .ok_or_else(|| GitcapError::model_files(format!("{spec} has no model.safetensors or pytorch_model.bin")))?;
    let mut wanted: Vec<String> = REQUIRED.iter().chain(OPTIONAL).filter(|f| has(f)).map(|f| f.to_string()).collect();
    wanted.push(weights.to_string());
    if *weights == "model.safetensors.index.json" {
        let index = api.get(weights).map_err(unreachable)?;
        wanted.extend(shards(&index)?);
    }
    let mut dir = None;
    for file in &wanted {
        let path = match cache.repo(repo.clone()).get(file) {
            Some(cached) => cached,
            None => {
                tracing::info!(model = spec, file, "fetching from the hub");
                let reporter =
                    Reporter { spec, file: file.clone(), total: 0, bytes: 0, reported: 0, sink: &mut *progress };
                api.download_with_progress(file, reporter).map_err(unreachable)?
            }
        };
        dir = path.parent().map(Path::to_path_buf);
    }
    dir.ok_or_else(|| GitcapError::model_files(format!("{spec}: nothing to download")))
}

fn shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| GitcapError::model_files(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| GitcapError::model_files(e.to_string()))?;
    let mut files: Vec<String> = value["weight_map"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    files.sort();
    files.dedup();
    Ok(files)
}

/// hf-hub's progress callbacks → logs and [`DownloadProgress`] about every tenth of a file.
struct Reporter<'a> {
    spec: &'a str,
    file: String,
    total: u64,
    bytes: u64,
    reported: u64,
    sink: &'a mut dyn FnMut(DownloadProgress),
}

impl Reporter<'_> {
    fn report(&mut self) {
        self.reported = self.bytes;
        tracing::info!(model = self.spec, file = self.file, bytes = self.bytes, total = self.total, "downloading");
        (self.sink)(DownloadProgress { file: self.file.clone(), bytes: self.bytes, total: self.total });
    }
}

impl hf_hub::api::Progress for Reporter<'_> {
    fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
    }

    fn update(&mut self, size: usize) {
        self.bytes += size as u64;
        if self.bytes - self.reported >= (self.total / 10).max(1) {
            self.report();
        }
    }

    fn finish(&mut self) {
        self.report();
    }
}
