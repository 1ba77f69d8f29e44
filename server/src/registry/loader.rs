//! Loading one model version: resolve its checkpoint, load it on its own thread's terms, and
//! warm it up with a real inference before it may serve.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use serde::{Deserialize, Serialize};

pub use super::source::DownloadProgress;
use super::source::{resolve_with_progress, HubOptions};
use crate::device::DeviceSpec;
use crate::engine::{EngineOptions, Frame, InferenceRequest, ModelWorker, Priority};
use crate::error::{GitcapError, Result};
use crate::media::PreprocessorConfig;
use crate::model::generation::GenerationOptions;
use crate::model::Precision;

/// What to load (the admin API's `ModelSpec`, with defaults filled in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSpec {
    pub name: String,
    pub source: String,
    /// The hub branch, tag or commit; `None` = the repository's default branch (and nothing for
    /// a directory). (State files written with `revision = ""` read as `None`.)
    #[serde(default, deserialize_with = "crate::optional_setting::optional")]
    pub revision: Option<String>,
    /// The version label (the `version` of the id `name@version`); `None` = the hub commit, or
    /// `local` for a directory. (State files written with `version = ""` read as `None`.)
    #[serde(default, deserialize_with = "crate::optional_setting::optional")]
    pub version: Option<String>,
    pub device: DeviceSpec,
    pub dtype: Precision,
}

/// A loaded, warmed-up model on its own thread.
pub struct Loaded {
    pub worker: ModelWorker,
    pub load_seconds: f64,
    /// The hub commit loaded (`None` for a local directory).
    pub commit: Option<String>,
}

/// Local directories the admin API may load from; `None` = any (only the operator's own
/// configuration and command line use that).
pub fn check_root(source: &str, roots: Option<&[PathBuf]>) -> Result<()> {
    let (Some(roots), true) = (roots, Path::new(source).exists()) else { return Ok(()) };
    let path = Path::new(source)
        .canonicalize()
        .map_err(|e| GitcapError::invalid("spec.source", format!("cannot resolve {source}: {e}")))?;
    let allowed = roots.iter().filter_map(|r| r.canonicalize().ok()).any(|root| path.starts_with(root));
    if allowed {
        Ok(())
    } else {
        Err(GitcapError::PermissionDenied(format!(
            "{source} is outside the model roots this server may load from (admin.model_roots)"
        )))
    }
}

/// Loads `spec` (blocking: call it off the async runtime), reporting download progress, starts
/// its thread and warms it up.
pub fn load(
    spec: &LoadSpec,
    hub: &HubOptions,
    engine: EngineOptions,
    progress: &mut dyn FnMut(DownloadProgress),
) -> Result<Loaded> {
    let started = Instant::now();
    spec.device.available()?; // before any download: a missing device fails at once
    let checkpoint = resolve_with_progress(&spec.source, spec.revision.as_deref(), hub, progress)?;
    let from_hub = checkpoint.version != "local";
    let commit = from_hub.then(|| checkpoint.version.clone());
    let version = spec.version.clone().unwrap_or(checkpoint.version);
    let worker = ModelWorker::load_checkpoint(checkpoint.dir, &spec.name, &version, spec.dtype, spec.device, engine)?;
    let preprocessor = worker.info.preprocessor.clone();
    warm_up(&worker, &preprocessor)?;
    Ok(Loaded { worker, load_seconds: started.elapsed().as_secs_f64(), commit })
}

/// One real inference through the model's thread (a gray image, one token), so the first caller
/// does not pay for libtorch's lazy initialisation and a model that cannot run never serves.
fn warm_up(worker: &ModelWorker, preprocessor: &PreprocessorConfig) -> Result<()> {
    let gray = RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
    let request = InferenceRequest {
        frames: vec![Frame::from_image(&gray, preprocessor)?],
        question: None,
        options: GenerationOptions { max_new_tokens: Some(1), num_beams: Some(1), ..Default::default() },
        priority: Priority::Interactive,
    };
    worker
        .run_blocking(request, |_| {})
        .map(|_| ())
        .map_err(|e| GitcapError::model_files(format!("warm-up inference failed: {e}")))
}
