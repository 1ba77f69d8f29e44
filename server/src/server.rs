//! `gitcap-server serve`: follow the desired-state file (declarative mode), or restore the saved
//! models (or load the configured one); then serve.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use crate::error::{GitcapError, Result};
use crate::media::spool::{self, Spool};
use crate::media::video::{VideoDecoder, VideoLimits};
use crate::media::{MediaLimits, UrlFetcher};
use crate::registry::{FollowOptions, HubOptions, LoadSpec, Registry, RegistryOptions};
use crate::service::media::MediaService;
use crate::settings::Settings;
use crate::transport::{self, ServeOptions};

pub async fn run(settings: Settings) -> Result<()> {
    // Before the first load, so that its memory is reported.
    if settings.metrics.enabled {
        crate::metrics::install(&settings.metrics)?;
    }
    let telemetry = crate::telemetry::init(&settings.telemetry)?;
    // Held until the server stops (the directory goes with it): media files are spooled there.
    let spool = start_spool(&settings).await?;
    let m = &settings.model;
    if m.threads > 0 {
        tch::set_num_threads(m.threads);
    }
    let hub = HubOptions {
        offline: settings.hub.offline,
        token: settings.hub.token.clone().or_else(|| std::env::var("HF_TOKEN").ok()),
        cache_dir: None::<PathBuf>,
    };
    let admin = &settings.admin;
    let desired_state = admin.desired_state()?;
    let registry = Registry::new(RegistryOptions {
        hub,
        engine: settings.engine_options(),
        model_roots: Some(admin.model_roots.clone()),
        state_file: admin.state_file.clone(),
        desired_state: desired_state.as_ref().map(|(path, _)| path.clone()),
        drain_timeout: Duration::from_secs(admin.drain_timeout_secs),
    });
    if let Some((path, poll)) = desired_state {
        let follow = FollowOptions { path, poll, default_device: m.device, default_dtype: m.dtype };
        crate::registry::follow::start(registry.clone(), follow).await?;
    } else if !registry.restore().await? {
        let spec = LoadSpec {
            name: m.name.clone(),
            source: m.source.clone(),
            revision: Some(m.revision.clone()).filter(|revision| !revision.is_empty()),
            version: None,
            device: m.device,
            dtype: m.dtype.for_device(m.device.0),
        };
        registry.load(spec, false).await?;
    }

    let (listener, addr) = transport::bind(&settings.server.listen).await?;
    let admin_listener = match &admin.listen {
        None => None,
        Some(address) => {
            let (listener, admin_addr) = transport::bind(address).await?;
            println!("gitcap-server admin listening on {admin_addr}");
            Some(listener)
        }
    };
    let limits = settings.request_limits();
    let media = Arc::new(media_service(&settings, limits.media, spool.dir())?);
    let batch = crate::openai::batch::Batches::open(&settings.batch)?;
    let options = ServeOptions {
        media,
        limits,
        max_message_bytes: settings.server.max_message_bytes,
        shutdown_grace: Duration::from_secs(settings.server.shutdown_grace_secs),
        inference_token: settings.auth.inference_token.clone(),
        admin_token: settings.auth.admin_token()?,
        admin_listener,
        default_device: m.device,
        default_dtype: m.dtype,
        tls: settings.server.tls_identity()?,
        max_connection_age: settings.server.max_connection_age()?,
        max_concurrent_streams: settings.server.max_concurrent_streams.max(1),
        max_connections: settings.server.max_connections,
        http1_body_timeout: settings.server.http1_body_timeout()?,
        stored_responses: settings.response_store_limits(),
        batch,
    };
    // Before the port is announced: a SIGTERM from then on stops the server cleanly, even one
    // that comes before serving begins (the default action would kill it, leaving its spool).
    let shutdown = shutdown_signal()?;
    // Tests and scripts read the port from this line, printed once every setting has been read:
    // a misconfigured server announces nothing before it stops.
    println!("gitcap-server listening on {addr}");
    let served = transport::serve(listener, registry, options, shutdown).await;
    // The spans of the last calls, before the process ends.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    served
}

/// Media decoding as the settings say: the budget, the video decoder (or why there is none),
/// URL fetching.
fn media_service(settings: &Settings, limits: MediaLimits, spool_dir: &Path) -> Result<MediaService> {
    let m = &settings.media;
    let v = &m.video;
    let video_limits = VideoLimits {
        max_duration_s: v.max_duration_secs,
        max_pixels: limits.max_pixels,
        cpu_seconds: v.cpu_secs,
        wall_seconds: v.wall_secs,
        memory_bytes: v.memory_mb << 20,
        max_processes: v.max_processes.max(1),
        dense: m.dense.clone(),
        ..VideoLimits::default()
    };
    let video = VideoDecoder::detect(v.ffmpeg.as_deref(), v.ffprobe.as_deref(), video_limits);
    match &video {
        Ok(decoder) => tracing::info!(ffmpeg = decoder.version(), "video decoding available"),
        Err(why) => tracing::warn!("video decoding unavailable: {why}"),
    }
    let fetcher = UrlFetcher::new(m.url.clone())?;
    let service = MediaService::new(
        limits,
        m.decode_budget_mb << 20,
        video,
        fetcher,
        Some(spool_dir.to_path_buf()),
        v.max_bytes,
    )?;
    Ok(service.with_image_cache(m.image_cache_mb << 20))
}

/// Removes what killed servers left in `media.spool_dir` and creates this process's directory
/// there (file system work: off the runtime's threads).
async fn start_spool(settings: &Settings) -> Result<Spool> {
    let root = settings.media.spool_dir.clone();
    let shown = root.as_ref().map_or_else(|| "the system's temporary directory".into(), |r| r.display().to_string());
    tokio::task::spawn_blocking(move || spool::start(root.as_deref()))
        .await
        .map_err(|e| GitcapError::Internal(format!("the spool's start-up task failed: {e}")))?
        .map_err(|e| GitcapError::invalid("media.spool_dir", format!("cannot spool media files in {shown}: {e}")))
}

/// SIGTERM or SIGINT; both are caught from this call on.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let catch = |kind| signal(kind).map_err(|e| GitcapError::Internal(format!("catching signals: {e}")));
        let (mut term, mut int) = (catch(SignalKind::terminate())?, catch(SignalKind::interrupt())?);
        Ok(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
