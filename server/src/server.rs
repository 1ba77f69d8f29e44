//! `gitcap-server serve`: load the configured model on its own thread, then serve.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{self, convert::RequestLimits, ServeOptions};
use crate::device::{parse_device, parse_dtype};
use crate::engine::{ModelInfo, ModelWorker, Pipeline};
use crate::error::Result;
use crate::media::MediaLimits;
use crate::registry::{resolve, HubOptions, Models};
use crate::settings::Settings;

pub async fn run(settings: Settings) -> Result<()> {
    let m = &settings.model;
    if m.threads > 0 {
        tch::set_num_threads(m.threads);
    }
    let hub = HubOptions {
        offline: settings.hub.offline,
        token: Some(settings.hub.token.clone()).filter(|t| !t.is_empty()).or_else(|| std::env::var("HF_TOKEN").ok()),
        cache_dir: None::<PathBuf>,
    };
    let (device, kind) = (parse_device(&m.device)?, parse_dtype(&m.dtype)?);
    let (source, revision) = (m.source.clone(), m.revision.clone());
    let started = Instant::now();
    tracing::info!(model = m.name, source = m.source, "loading");
    let (pipeline, version) = tokio::task::spawn_blocking(move || -> Result<_> {
        let checkpoint = resolve(&source, Some(&revision), &hub)?;
        Ok((Pipeline::load(&checkpoint.dir, kind, device)?, checkpoint.version))
    })
    .await
    .map_err(|e| crate::error::GitcapError::Internal(e.to_string()))??;
    let info = ModelInfo {
        name: m.name.clone(),
        version,
        dtype: m.dtype.clone(),
        device: m.device.clone(),
        max_frames: pipeline.model.config.max_frames() as usize,
        weights_bytes: 0,
    };
    tracing::info!(model = info.name, version = info.version, secs = started.elapsed().as_secs_f64(), "loaded");
    let models = Arc::new(Models::default());
    models.insert(ModelWorker::spawn(pipeline, info, m.queue_capacity));

    let (listener, addr) = api::bind(&settings.server.listen).await?;
    // Tests and scripts read the port from this line.
    println!("gitcap-server listening on {addr}");
    let l = &settings.limits;
    let options = ServeOptions {
        limits: RequestLimits {
            media: MediaLimits { max_pixels: l.max_pixels, max_frames: l.max_frames },
            max_new_tokens: l.max_new_tokens,
            max_beams: l.max_beams,
            max_question_chars: l.max_question_chars,
            max_labels: l.max_labels,
            max_frame_bytes: settings.server.max_message_bytes,
        },
        max_message_bytes: settings.server.max_message_bytes,
        shutdown_grace: Duration::from_secs(settings.server.shutdown_grace_secs),
    };
    api::serve(listener, models, options, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
