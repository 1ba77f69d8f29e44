//! What the fuzz targets share: the limits they run under, the preprocessing configs, and the
//! checks every result must pass (typed errors that map to `INVALID_ARGUMENT`, outputs within
//! the limits).

use std::sync::OnceLock;

use gitcap_server::error::GitcapError;
use gitcap_server::media::{sample_frame_indices, MediaLimits, PixelValues, PreprocessorConfig, VideoLimits};
use gitcap_server::service::validation::RequestLimits;
use image::RgbImage;

/// The server's media limits, made smaller so that the fuzzer reaches them often and spends
/// its time on parsing rather than on decoding 40-megapixel images; the checks are the same code.
pub fn media_limits() -> MediaLimits {
    MediaLimits { max_pixels: 4_000_000, max_frames: 64 }
}

/// The server's request limits, scaled down like [`media_limits`].
pub fn request_limits() -> RequestLimits {
    RequestLimits { media: media_limits(), max_frame_bytes: 64 << 10, ..RequestLimits::default() }
}

/// Limits for the video decoder's children, tight so that a costly input fails fast: 1 megapixel
/// a frame, 60 s of video, 2 s of CPU and 5 s of waiting per child, 1 GiB of address space, one
/// single-threaded child at a time.
pub fn video_limits() -> VideoLimits {
    VideoLimits {
        max_duration_s: 60.0,
        max_pixels: 1_000_000,
        max_frames: 16,
        cpu_seconds: 2,
        wall_seconds: 5.0,
        memory_bytes: 1 << 30,
        max_processes: 2,
        processes_per_call: 1,
        threads_per_process: 1,
        dense: Default::default(),
    }
}

/// The preprocessing of the test checkpoints (CLIP-style image, VideoMAE-style video) and
/// transformers' defaults of both processors (224x224).
pub fn preprocessors() -> &'static [PreprocessorConfig] {
    static CONFIGS: OnceLock<Vec<PreprocessorConfig>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let fixture = |text: &str| PreprocessorConfig::from_json(text).expect("fixture preprocessor_config.json");
        vec![
            fixture(include_str!("../../tests/fixtures/models/tiny-git-image/preprocessor_config.json")),
            fixture(include_str!("../../tests/fixtures/models/tiny-git-video/preprocessor_config.json")),
            PreprocessorConfig::clip(),
            PreprocessorConfig::videomae(),
        ]
    })
}

/// Panics unless `err` is bad input, reported as the API reports it: a request field and a
/// message, mapped to `INVALID_ARGUMENT`.
pub fn expect_bad_input(err: GitcapError) {
    match &err {
        GitcapError::InvalidArgument { field, message } | GitcapError::Media { field, message } => {
            assert!(!field.is_empty() && !message.is_empty(), "an error without field or message: {err:?}");
        }
        other => panic!("bad input must be InvalidArgument or Media, got {other:?}"),
    }
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}

/// Panics unless decoded frames respect the limits they were decoded under.
pub fn check_frames(frames: &[RgbImage], limits: &MediaLimits) {
    assert!(!frames.is_empty(), "decoding succeeded with no frame");
    assert!(frames.len() <= limits.max_frames.max(1), "{} frames over the limit", frames.len());
    let mut total = 0u64;
    for frame in frames {
        let (w, h) = frame.dimensions();
        assert!(w > 0 && h > 0, "an empty {w}x{h} frame");
        assert_eq!(frame.as_raw().len() as u64, u64::from(w) * u64::from(h) * 3);
        total += u64::from(w) * u64::from(h);
    }
    // A still image is checked on its own; an animation's frames together.
    assert!(total <= limits.max_pixels, "{total} pixels over the limit of {}", limits.max_pixels);
}

/// Preprocesses `frame`; panics unless the result is well formed or the error typed.
pub fn check_preprocess(config: &PreprocessorConfig, frame: &RgbImage) {
    match config.preprocess(frame) {
        Ok(PixelValues { data, height, width }) => {
            assert!(height > 0 && width > 0, "{width}x{height} pixel values");
            if config.do_center_crop {
                assert_eq!((height as u32, width as u32), config.crop_size);
            }
            assert_eq!(data.len(), 3 * height * width);
            assert!(data.iter().all(|v| v.is_finite()), "non-finite pixel values");
        }
        Err(err) => expect_bad_input(err),
    }
}

/// Samples `wanted` of `total` frames; panics unless the indices are what the API promises:
/// `min(total, wanted)` of them, strictly increasing, all below `total`.
pub fn check_sampling(total: usize, wanted: usize) -> Vec<usize> {
    let indices = sample_frame_indices(total, wanted);
    assert_eq!(indices.len(), total.min(wanted), "sample_frame_indices({total}, {wanted})");
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "not increasing: {indices:?}");
    assert!(indices.last().is_none_or(|&last| last < total), "out of range: {indices:?}");
    indices
}

/// The API's media preparation, set up once: a CLIP-preprocessing video model of 6 frames, the
/// fuzz limits, a 1 GiB budget, no video decoder (video has its own target), URLs off.
pub struct MediaHarness {
    pub runtime: tokio::runtime::Runtime,
    pub media: gitcap_server::service::media::MediaService,
    pub model: gitcap_server::engine::ModelInfo,
}

pub fn media_harness() -> &'static MediaHarness {
    static HARNESS: std::sync::OnceLock<MediaHarness> = std::sync::OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let fetcher = gitcap_server::media::UrlFetcher::new(Default::default()).expect("a URL fetcher");
        let media = gitcap_server::service::media::MediaService::new(
            media_limits(),
            1 << 30,
            Err("no video decoding in this target".into()),
            fetcher,
            None,
            1 << 20,
        )
        .expect("the media service");
        let model = gitcap_server::engine::ModelInfo {
            name: "fuzz".into(),
            version: "fuzz".into(),
            dtype: gitcap_server::model::Precision::parse("f32").expect("f32"),
            device: gitcap_server::device::DeviceSpec::CPU,
            max_frames: 6,
            weights_bytes: 0,
            preprocessor: std::sync::Arc::new(PreprocessorConfig::clip()),
            generation: std::sync::Arc::new(gitcap_server::model::generation::GenerationConfig::default()),
        };
        MediaHarness { runtime, media, model }
    })
}

/// Panics unless `error`, an OpenAI door's refusal of `body`, is bad input as that door reports
/// it: 400 (the status of `INVALID_ARGUMENT`) with a message, naming a non-empty parameter, which
/// it must do whenever the body is a JSON object (a refusal without one is for a body that is not).
pub fn expect_bad_request(error: &gitcap_server::openai::ApiError, body: &[u8]) {
    assert_eq!(error.status, gitcap_server::error::http_status(tonic::Code::InvalidArgument), "{error:?}");
    assert!(!error.message.is_empty(), "{error:?}");
    match &error.param {
        Some(param) => assert!(!param.is_empty(), "an empty parameter: {error:?}"),
        None => assert!(
            !serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|json| json.is_object()),
            "a JSON object refused without naming the parameter at fault: {error:?}"
        ),
    }
}

/// Checks `ask` as the core does before it queues it: [`check_question_and_options`], then
/// [`check_media`].
pub fn check_ask(ask: gitcap_server::service::Ask) {
    if check_question_and_options(&ask.question, &ask.options) {
        check_media(ask.media);
    }
}

/// Checks a request's question and options as `Core::admit` does (against the harness model's
/// generation config and the fuzz limits); panics unless a refusal is bad input. Whether they pass.
pub fn check_question_and_options(
    question: &str,
    options: &gitcap_server::model::generation::GenerationOptions,
) -> bool {
    use gitcap_server::service::validation;
    let (harness, limits) = (media_harness(), request_limits());
    let checked = validation::question(question, &limits)
        .and_then(|_| validation::generation(&harness.model.generation, options, &limits));
    checked.map_err(expect_bad_input).is_ok()
}

/// Prepares `media` as the core does (`MediaService::prepare`); panics unless a refusal is bad
/// input. URLs are off here; video files have their own target (video_container).
pub fn check_media(media: gitcap_server::service::media::MediaInput) {
    use gitcap_server::service::media::MediaInput;
    match media {
        MediaInput::Url { .. } => panic!("a URL accepted with URLs off"),
        MediaInput::Video { .. } => {}
        media => {
            let harness = media_harness();
            if let Err(error) = harness.runtime.block_on(harness.media.prepare(media, &harness.model)) {
                expect_bad_input(error);
            }
        }
    }
}
