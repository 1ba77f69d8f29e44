//! A request's media → the frames its model sees.
//!
//! The work runs off the async runtime's threads (blocking tasks, ffmpeg children) and within the
//! media budget ([`MediaBudget`]): only the frames the model will use are decoded, and each is
//! shrunk to the model's input ([`PreparedFrame`]) as soon as it is decoded, so a request holds
//! its frames at the model's size, not the camera's. Video files and URL downloads are spooled to
//! a temporary file (never held twice in memory) and decoded by [`VideoDecoder`]'s children.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use gitcap_protocol::media_kind::{sniff_image, sniff_video};
use tempfile::{NamedTempFile, TempPath};

use super::image_cache::{ImageCache, ImageKey};
use crate::engine::{Frame, ModelInfo, PreparedFrame};
use crate::error::{GitcapError, Result};
use crate::media::video::{sample_timestamps, Sampling, VideoDecoder};
use crate::media::{
    decode_cost, decode_footprint, decode_image_each, from_raw_rgb, sample_frame_indices, CancelFlag, MediaBudget,
    MediaLimits, UrlFetcher,
};

/// A request's media in the core's terms, whatever door it came through (each door reads its
/// own wire format into this). Error messages name fields as the gRPC protocol does
/// (`media.image`, `media.frames[2]`), which every door documents.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaInput {
    /// An encoded image (an animated GIF or WebP is a video's frames).
    Image(Vec<u8>),
    /// The encoded frames of one video, in order.
    Frames(Vec<Vec<u8>>),
    /// RGB pixels, row by row.
    Raw { width: u32, height: u32, rgb: Vec<u8> },
    /// A video file, and which of its frames to sample.
    Video { bytes: Vec<u8>, sampling: Option<VideoSampling> },
    /// An http(s) URL of an image or a video file.
    Url { url: String, sampling: Option<VideoSampling> },
}

/// Which frames of a video file to sample: evenly within a window (the whole video by default),
/// or at the given times.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VideoSampling {
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    pub timestamps_s: Vec<f64>,
}

/// What a URL turned out to hold.
enum Download {
    Image(Vec<u8>),
    Video(TempPath),
}

/// The frames a request's model will see, and for a video file their timestamps.
pub struct PreparedMedia {
    pub frames: Vec<Frame>,
    pub timestamps_s: Vec<f64>,
}

/// Everything turning media into frames needs; one per server.
pub struct MediaService {
    pub limits: MediaLimits,
    budget: MediaBudget,
    /// The video decoder, or why there is none (with an install hint).
    video: std::result::Result<VideoDecoder, String>,
    fetcher: UrlFetcher,
    /// Where video files and downloads are written: a server's own spool directory
    /// ([`crate::media::spool`], whose start-up removes what killed servers left); `None` = the
    /// system's temporary directory, for uses without a server.
    spool_dir: Option<PathBuf>,
    /// Largest video file accepted, in bytes.
    pub max_video_bytes: u64,
    /// Frames of images sent recently, by their bytes (off unless [`Self::with_image_cache`]).
    images: ImageCache,
}

impl MediaService {
    pub fn new(
        limits: MediaLimits,
        budget_bytes: u64,
        video: std::result::Result<VideoDecoder, String>,
        fetcher: UrlFetcher,
        spool_dir: Option<PathBuf>,
        max_video_bytes: u64,
    ) -> Result<Self> {
        let largest = decode_cost(1, 1, true).saturating_mul(limits.max_pixels);
        if largest > budget_bytes {
            return Err(GitcapError::invalid(
                "media.decode_budget_mb",
                format!(
                    "{} MiB cannot hold one image of limits.max_pixels ({} pixels need {} MiB while decoded)",
                    budget_bytes >> 20,
                    limits.max_pixels,
                    largest.div_ceil(1 << 20)
                ),
            ));
        }
        let budget = MediaBudget::new(budget_bytes);
        let video = video.map(|decoder| decoder.with_media_budget(budget.clone()));
        let fetcher = fetcher.with_spool_dir(spool_dir.as_deref());
        Ok(Self { limits, budget, video, fetcher, spool_dir, max_video_bytes, images: ImageCache::new(0) })
    }

    /// Keeps up to `max_bytes` of recently sent images' frames, by their bytes
    /// (`media.image_cache_mb`).
    pub fn with_image_cache(self, max_bytes: usize) -> Self {
        Self { images: ImageCache::new(max_bytes), ..self }
    }

    /// The cache of recently sent images.
    pub fn image_cache(&self) -> &ImageCache {
        &self.images
    }

    /// The video decoder, or FAILED_PRECONDITION saying how to install one.
    pub fn video_decoder(&self) -> Result<&VideoDecoder> {
        self.video.as_ref().map_err(|hint| GitcapError::FailedPrecondition(hint.clone()))
    }

    /// Whether media may be named by URL here (`media.url.enabled`).
    pub fn urls_enabled(&self) -> bool {
        self.fetcher.policy().enabled
    }

    /// Whether video files can be decoded here.
    pub fn video_available(&self) -> bool {
        self.video.is_ok()
    }

    /// The frames of `media` that `model` will see.
    pub async fn prepare(&self, media: MediaInput, model: &ModelInfo) -> Result<PreparedMedia> {
        let frames = match media {
            MediaInput::Image(bytes) => self.image(bytes, "media.image".into(), model, true).await?,
            MediaInput::Frames(list) => self.frame_list(list, model).await?,
            MediaInput::Raw { width, height, rgb } => vec![self.raw(width, height, rgb, model).await?],
            MediaInput::Video { bytes, sampling } => {
                let file = self.spool(bytes, "media.video").await?;
                return self.video(&file, sampling.as_ref(), "media.video", model).await;
            }
            MediaInput::Url { url, sampling } => return self.url(&url, sampling.as_ref(), model).await,
        };
        Ok(PreparedMedia { frames, timestamps_s: vec![] })
    }

    /// One encoded image (every frame of an animation when `all_frames`, else its first); an
    /// image sent before comes from the image cache, not decoded again.
    pub async fn image(
        &self,
        bytes: Vec<u8>,
        field: String,
        model: &ModelInfo,
        all_frames: bool,
    ) -> Result<Vec<Frame>> {
        if !self.images.enabled() {
            return self.decode_image(bytes, field, model, all_frames).await;
        }
        let preprocessor = model.preprocessor.clone();
        // Hashing a large image takes milliseconds: off the runtime too.
        let (key, bytes) = blocking(move || Ok((ImageKey::new(&bytes, &preprocessor, all_frames), bytes))).await?;
        if let Some(frames) = self.images.get(key) {
            return Ok(frames);
        }
        let frames = self.decode_image(bytes, field, model, all_frames).await?;
        self.images.insert(key, &frames);
        Ok(frames)
    }

    async fn decode_image(
        &self,
        bytes: Vec<u8>,
        field: String,
        model: &ModelInfo,
        all_frames: bool,
    ) -> Result<Vec<Frame>> {
        // From the headers (every frame's of a GIF); an image over the limits is refused by the
        // decoder before any pixel is decoded: it needs no room (and must get that error).
        let cost = decode_footprint(&bytes, &self.limits);
        let _room = self.budget.reserve(cost, &field).await?;
        let (limits, preprocessor) = (self.limits, model.preprocessor.clone());
        // Dropping this future (the request's deadline, its caller gone) stops the decode.
        let cancel = CancelFlag::new();
        let _cancel_on_drop = cancel.cancel_on_drop();
        blocking(move || {
            let mut frames = Vec::new();
            decode_image_each(&bytes, &field, &limits, &cancel, &mut |image| {
                if all_frames || frames.is_empty() {
                    frames.push(Frame::from_image(&image, &preprocessor)?);
                }
                Ok(())
            })?;
            Ok(frames)
        })
        .await
    }

    /// The frames of a list the model will use (a video model samples its count evenly), and
    /// only those are decoded.
    async fn frame_list(&self, frames: Vec<Vec<u8>>, model: &ModelInfo) -> Result<Vec<Frame>> {
        if frames.is_empty() {
            return Err(GitcapError::invalid("media.frames", "no frames were given"));
        }
        if frames.len() > self.limits.max_frames {
            return Err(GitcapError::invalid(
                "media.frames",
                format!("{} frames is more than the limit of {}", frames.len(), self.limits.max_frames),
            ));
        }
        let used = sample_frame_indices(frames.len(), model.max_frames);
        let mut frames: Vec<Option<Vec<u8>>> = frames.into_iter().map(Some).collect();
        // Decoded side by side, one per core (each within the media budget, in order): a
        // follow-up on six cached frames otherwise waited for six decodes in a row.
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
        let decodes: Vec<_> = used
            .into_iter()
            .map(|i| {
                let bytes = frames[i].take().unwrap_or_default();
                self.image(bytes, format!("media.frames[{i}]"), model, false)
            })
            .collect();
        let decoded: Vec<Vec<Frame>> = futures::stream::iter(decodes).buffered(parallel).try_collect().await?;
        Ok(decoded.into_iter().flatten().collect())
    }

    async fn raw(&self, width: u32, height: u32, rgb: Vec<u8>, model: &ModelInfo) -> Result<Frame> {
        let pixels = u64::from(width) * u64::from(height);
        let cost = if pixels <= self.limits.max_pixels { pixels * 3 } else { 0 };
        let _room = self.budget.reserve(cost, "media.raw").await?;
        let (limits, preprocessor) = (self.limits, model.preprocessor.clone());
        blocking(move || {
            let image = from_raw_rgb(width, height, &rgb, "media.raw", &limits)?;
            drop(rgb);
            Frame::from_image(&image, &preprocessor)
        })
        .await
    }

    /// A new temporary file for a video file (an upload's chunks are appended to it).
    pub fn spool_file(&self) -> Result<NamedTempFile> {
        let builder = tempfile::Builder::new().prefix("gitcap-video-").tempfile_in(self.spool_dir());
        builder.map_err(|e| GitcapError::Internal(format!("cannot create a temporary file for a video: {e}")))
    }

    fn spool_dir(&self) -> PathBuf {
        self.spool_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Writes a video file's bytes to a temporary file (and drops them).
    async fn spool(&self, bytes: Vec<u8>, field: &str) -> Result<TempPath> {
        self.video_decoder()?;
        if bytes.len() as u64 > self.max_video_bytes {
            return Err(self.too_large(field, bytes.len() as u64));
        }
        if bytes.is_empty() {
            return Err(GitcapError::media(field, "empty: no video bytes were sent"));
        }
        let file = self.spool_file()?;
        blocking(move || {
            use std::io::Write;
            let mut file = file;
            file.write_all(&bytes).map_err(|e| GitcapError::Internal(format!("writing a video to disk: {e}")))?;
            Ok(file.into_temp_path())
        })
        .await
    }

    /// The error for a video file over the size limit.
    pub fn too_large(&self, field: &str, bytes: u64) -> GitcapError {
        GitcapError::invalid(
            field,
            format!(
                "the video file is {} MiB, more than the {} MiB this server accepts (media.video.max_bytes)",
                bytes.div_ceil(1 << 20),
                self.max_video_bytes >> 20
            ),
        )
    }

    /// The frames of a video file the model sees: `sampling` (default: the model's frame count,
    /// evenly over the whole video), decoded by ffmpeg, each shrunk as it arrives.
    pub async fn video(
        &self,
        file: &Path,
        sampling: Option<&VideoSampling>,
        field: &str,
        model: &ModelInfo,
    ) -> Result<PreparedMedia> {
        let decoder = self.video_decoder()?;
        let info = decoder.probe(file, field).await?;
        let sampling = video_sampling(sampling, model.max_frames)?;
        let timestamps = sample_timestamps(&info, &sampling, model.max_frames)?;
        // Each frame comes with its room in the media budget, reserved by the decoder.
        let mut stream = std::pin::pin!(decoder.frames_at(file, &info, &timestamps, field));
        let mut frames = Vec::with_capacity(timestamps.len());
        let mut used = Vec::with_capacity(timestamps.len());
        while let Some(frame) = stream.next().await {
            let frame = frame?;
            used.push(frame.timestamp_s);
            frames.push(self.shrink(frame.image, model).await?);
            drop(frame.room);
        }
        Ok(PreparedMedia { frames, timestamps_s: used })
    }

    /// A decoded frame as the model's input (off the runtime).
    pub async fn shrink(&self, image: image::RgbImage, model: &ModelInfo) -> Result<Frame> {
        let preprocessor = model.preprocessor.clone();
        blocking(move || Ok(Frame::Pixels(PreparedFrame::new(&image, &preprocessor)?))).await
    }

    /// An image or video the server fetches itself (where the URL policy allows it).
    async fn url(&self, url: &str, sampling: Option<&VideoSampling>, model: &ModelInfo) -> Result<PreparedMedia> {
        match self.download(url).await? {
            Download::Image(bytes) => {
                if sampling.is_some() {
                    return Err(GitcapError::invalid("media.sampling", "the URL is an image, not a video"));
                }
                let frames = self.image(bytes, "media.url".into(), model, true).await?;
                Ok(PreparedMedia { frames, timestamps_s: vec![] })
            }
            Download::Video(path) => self.video(&path, sampling, "media.url", model).await,
        }
    }

    /// Fetches `url` and tells an image (read into memory) from a video file (left on disk).
    async fn download(&self, url: &str) -> Result<Download> {
        let fetched = self.fetcher.fetch(url, "media.url").await?;
        let mut file = fetched.file;
        let mut head = [0u8; 16];
        let n = {
            use std::io::Read;
            file.read(&mut head).map_err(|e| GitcapError::Internal(format!("reading a download: {e}")))?
        };
        let head = &head[..n];
        let path = file.into_temp_path();
        if sniff_image(head).is_some() {
            let bytes = blocking(move || {
                std::fs::read(&path).map_err(|e| GitcapError::Internal(format!("reading a download: {e}")))
            })
            .await?;
            return Ok(Download::Image(bytes));
        }
        if sniff_video(head).is_none() {
            let what = fetched.content_type.unwrap_or_else(|| "no content type".into());
            return Err(GitcapError::media(
                "media.url",
                format!(
                    "{url} is neither an image ({}) nor a video file ({}): {what}",
                    gitcap_protocol::media_kind::image_names(),
                    gitcap_protocol::media_kind::video_names()
                ),
            ));
        }
        self.video_decoder()?;
        if fetched.bytes > self.max_video_bytes {
            return Err(self.too_large("media.url", fetched.bytes));
        }
        Ok(Download::Video(path))
    }

    /// The video file `media` holds or names (`media.video`, `media.url`), on disk.
    pub async fn video_file(&self, media: MediaInput) -> Result<TempPath> {
        match media {
            MediaInput::Video { bytes, .. } => self.spool(bytes, "media.video").await,
            MediaInput::Url { url, .. } => match self.download(&url).await? {
                Download::Video(path) => Ok(path),
                Download::Image(_) => Err(GitcapError::invalid("media.url", "names an image; a video file is needed")),
            },
            _ => Err(GitcapError::invalid("media", "a video file is needed: set media.video or media.url")),
        }
    }

    /// Bytes of decoded pixels not reserved now (for tests and metrics).
    pub fn budget(&self) -> &MediaBudget {
        &self.budget
    }
}

/// The protocol's sampling as the video decoder's; explicit timestamps at most `max_frames`.
pub fn video_sampling(sampling: Option<&VideoSampling>, max_frames: usize) -> Result<Sampling> {
    let Some(sampling) = sampling else { return Ok(Sampling::Even { start_s: None, end_s: None }) };
    if sampling.timestamps_s.is_empty() {
        return Ok(Sampling::Even { start_s: sampling.start_s, end_s: sampling.end_s });
    }
    if sampling.start_s.is_some() || sampling.end_s.is_some() {
        return Err(GitcapError::invalid(
            "media.sampling.timestamps_s",
            "give either timestamps or a window (start_s, end_s), not both",
        ));
    }
    if sampling.timestamps_s.len() > max_frames {
        return Err(GitcapError::invalid(
            "media.sampling.timestamps_s",
            format!("{} timestamps, but this model sees at most {max_frames} frames", sampling.timestamps_s.len()),
        ));
    }
    Ok(Sampling::At(sampling.timestamps_s.clone()))
}

/// Runs CPU work off the async runtime.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| GitcapError::Internal(format!("a media task failed: {e}")))?
}

/// A shared handle.
pub type SharedMedia = Arc<MediaService>;
