//! [`GitcapClient`]: connection settings, the calls, and frame chunking.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::error::{Error, Result};
use crate::proto::{
    self, admin_client::AdminClient, caption_event, captioner_client::CaptionerClient, live_message, model_event,
    upload_message, video_upload_message, AliasStatus, FrameChunk, ListResponse, LiveMessage, LiveStart, Media,
    ModelSpec, ModelStatus, ScoreLabelsRequest, SwapResponse, UploadMessage, UploadStart, VideoUploadMessage,
    VideoUploadStart,
};
use crate::{Caption, GenerationOptions, Priority};

/// Frames are sent in chunks of at most this many bytes unless [`ClientConfig::chunk_size`] says otherwise.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;
/// The default limit on a message's size, in both directions (tonic's own default is 4 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// How to reach the server.
///
/// ```
/// use std::time::Duration;
/// use gitcap_client::ClientConfig;
///
/// let config = ClientConfig::new("http://gpu-box:50051")
///     .token("s3cret")
///     .request_timeout(Duration::from_secs(30));
/// assert_eq!(config.url, "http://gpu-box:50051");
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's URL: `http://host:port`, or `https://host:port` for TLS.
    pub url: String,
    /// PEM certificate(s) of the authority that signed the server's certificate, for TLS with a
    /// private CA or a self-signed certificate; without it the public web roots are trusted.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// The name to check the server's certificate against, when it differs from the URL's host.
    pub tls_domain: Option<String>,
    /// Sent as `authorization: Bearer <token>` on every `Captioner` and health call when set.
    pub token: Option<String>,
    /// Sent as `authorization: Bearer <token>` on every `Admin` call (model management) when set.
    pub admin_token: Option<String>,
    /// How long connecting may take.
    pub connect_timeout: Option<Duration>,
    /// How long a call with a single answer (caption, upload, label scoring, health) may take,
    /// enforced here and sent to the server as the call's deadline. Streaming answers
    /// (`caption_stream`, `upload_frames_stream`, `live`) have no deadline.
    pub request_timeout: Option<Duration>,
    /// The largest message the client accepts.
    pub max_decoding_message_size: usize,
    /// The largest message the client sends.
    pub max_encoding_message_size: usize,
    /// The largest frame chunk an upload sends in one message.
    pub chunk_size: usize,
    /// Sent as `x-gitcap-route-key` on every `Captioner` call: of a model alias split between
    /// versions (a canary), the same key always reaches the same version.
    pub route_key: Option<String>,
}

impl ClientConfig {
    /// Defaults: no tokens, a 10 s connect timeout, no request timeout, 64 MiB messages, 1 MiB chunks.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            tls_ca_pem: None,
            tls_domain: None,
            token: None,
            admin_token: None,
            connect_timeout: Some(Duration::from_secs(10)),
            request_timeout: None,
            max_decoding_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_encoding_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            chunk_size: DEFAULT_CHUNK_SIZE,
            route_key: None,
        }
    }

    /// Sets the route key: this client's calls stay on one version of a split alias.
    pub fn route_key(mut self, key: impl Into<String>) -> Self {
        self.route_key = Some(key.into());
        self
    }

    /// Trusts the PEM certificate authority `pem` for `https://` URLs.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Checks the server's certificate against `domain` instead of the URL's host.
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls_domain = Some(domain.into());
        self
    }

    /// Sets the bearer token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the admin bearer token, sent instead of [`Self::token`] on the model management calls.
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Sets the timeout of calls with a single answer.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Sets both message size limits.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_decoding_message_size = bytes;
        self.max_encoding_message_size = bytes;
        self
    }

    /// Sets the upload chunk size (at least one byte).
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes.max(1);
        self
    }
}

/// Adds the bearer token, and the route key where one is set, to every call (the interceptor in
/// [`GitcapClient::raw`]'s type).
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>, Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        if let Some(key) = &self.1 {
            request.metadata_mut().insert(ROUTE_KEY_HEADER, key.clone());
        }
        Ok(request)
    }
}

/// The metadata naming a caller's route key.
const ROUTE_KEY_HEADER: &str = "x-gitcap-route-key";

type Inner = InterceptedService<Channel, Auth>;

/// What to ask and how to decode: the model (empty = the server's default), an optional
/// question (visual question answering), and generation options.
///
/// ```
/// use gitcap_client::CaptionOptions;
///
/// let options = CaptionOptions::default().model("git-base-coco").question("what is on the table?").num_beams(3);
/// assert_eq!(options.generation.num_beams, Some(3));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CaptionOptions {
    /// The model, alias or `name@version` to ask; `None` = the server's default model.
    pub model: Option<String>,
    pub question: String,
    pub generation: GenerationOptions,
    /// Interactive (the default) or batch; live captions are always interactive.
    pub priority: Priority,
}

impl CaptionOptions {
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    pub fn question(mut self, question: impl Into<String>) -> Self {
        self.question = question.into();
        self
    }

    pub fn max_new_tokens(mut self, n: u32) -> Self {
        self.generation.max_new_tokens = Some(n);
        self
    }

    pub fn num_beams(mut self, n: u32) -> Self {
        self.generation.num_beams = Some(n);
        self
    }

    /// Runs the request at `priority` (batch work leaves rows free for interactive callers).
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Turns on sampling, reproducible with `seed`.
    pub fn sample(mut self, seed: Option<u64>) -> Self {
        self.generation.do_sample = Some(true);
        self.generation.seed = seed;
        self
    }

    fn wire_priority(&self) -> i32 {
        proto::Priority::from(self.priority) as i32
    }

    fn generation(&self) -> Option<proto::GenerationOptions> {
        (self.generation != GenerationOptions::default()).then(|| self.generation.into())
    }
}

/// How far an upload has got: called after the last chunk of each frame is handed to the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadProgress {
    /// Frames sent so far.
    pub frames: u64,
    /// Bytes of frame data sent so far.
    pub bytes: u64,
}

/// A progress callback for uploads.
pub type ProgressFn = Arc<dyn Fn(UploadProgress) + Send + Sync>;

/// An upload's request options.
#[derive(Clone, Default)]
pub struct UploadOptions {
    pub caption: CaptionOptions,
    /// How many frames will follow, when known (a video model then encodes only those it uses); 0 = unknown.
    pub frame_count: u32,
    pub progress: Option<ProgressFn>,
}

impl UploadOptions {
    pub fn new(caption: CaptionOptions) -> Self {
        Self { caption, ..Default::default() }
    }

    pub fn frame_count(mut self, frame_count: u32) -> Self {
        self.frame_count = frame_count;
        self
    }

    pub fn progress(mut self, progress: impl Fn(UploadProgress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }
}

/// A video upload's options: the caption's, which frames (default: the model's count, evenly over
/// the whole video), the file's size when known (a file over the server's limit is then refused
/// before it is sent), and a progress callback (`frames` stays 0; `bytes` counts the file).
#[derive(Clone, Default)]
pub struct VideoUploadOptions {
    pub caption: CaptionOptions,
    pub sampling: Option<proto::VideoSampling>,
    pub size_bytes: u64,
    pub progress: Option<ProgressFn>,
}

impl VideoUploadOptions {
    pub fn new(caption: CaptionOptions) -> Self {
        Self { caption, ..Default::default() }
    }

    pub fn sampling(mut self, sampling: proto::VideoSampling) -> Self {
        self.sampling = Some(sampling);
        self
    }

    pub fn size_bytes(mut self, bytes: u64) -> Self {
        self.size_bytes = bytes;
        self
    }

    pub fn progress(mut self, progress: impl Fn(UploadProgress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }
}

/// Dense captioning options: a caption of every `window_s` seconds every `stride_s` seconds
/// (0 = the server's defaults: 10 s windows that do not overlap).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DenseOptions {
    pub caption: CaptionOptions,
    pub window_s: f64,
    pub stride_s: f64,
}

/// Live captioning options: every `stride` frames the server captions the latest `window` frames
/// (0 = the model's frame count; stride 0 = `window`).
#[derive(Clone, Default)]
pub struct LiveOptions {
    pub caption: CaptionOptions,
    pub window: u32,
    pub stride: u32,
    pub progress: Option<ProgressFn>,
}

/// One event of a streamed caption.
#[derive(Clone, Debug, PartialEq)]
pub enum CaptionEvent {
    /// A generated token; the `text_delta`s concatenate to the final text.
    Token(proto::TokenEvent),
    /// The end: the complete caption.
    Done(Caption),
}

impl TryFrom<proto::CaptionEvent> for CaptionEvent {
    type Error = Error;

    fn try_from(event: proto::CaptionEvent) -> Result<Self> {
        match event.event {
            Some(caption_event::Event::Token(token)) => Ok(CaptionEvent::Token(token)),
            Some(caption_event::Event::Done(done)) => Ok(CaptionEvent::Done(done)),
            None => Err(Error::protocol("a caption event with neither a token nor the end")),
        }
    }
}

/// One event of [`GitcapClient::watch_models`].
#[derive(Clone, Debug, PartialEq)]
pub enum ModelEvent {
    /// A model version's state (also sent for each version when the watch starts).
    Model(ModelStatus),
    /// An alias now points at `id`, or is split (`split`); `id` empty: the alias was removed. Also
    /// sent for each alias when the watch starts, with no `previous_id`.
    Alias(AliasStatus),
    /// A server following a desired-state file: where it stands (also sent when the watch
    /// starts, when it follows one).
    DesiredState(proto::DesiredStateStatus),
}

impl TryFrom<proto::ModelEvent> for ModelEvent {
    type Error = Error;

    fn try_from(event: proto::ModelEvent) -> Result<Self> {
        match event.event {
            Some(model_event::Event::Model(model)) => Ok(ModelEvent::Model(model)),
            Some(model_event::Event::Alias(alias)) => Ok(ModelEvent::Alias(alias)),
            Some(model_event::Event::DesiredState(status)) => Ok(ModelEvent::DesiredState(status)),
            None => Err(Error::protocol("a model event with neither a model, an alias nor a desired state")),
        }
    }
}

/// How [`GitcapClient::swap_model`] swaps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapOptions {
    /// Unload the old version first, then load the new one (for when two copies do not fit);
    /// the alias is unavailable meanwhile.
    pub replace: bool,
    /// Keep the old version loaded (for a rollback) instead of draining and unloading it.
    pub keep_previous: bool,
}

/// A health check's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthStatus {
    Unknown,
    Serving,
    NotServing,
    ServiceUnknown,
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthStatus::Unknown => "UNKNOWN",
            HealthStatus::Serving => "SERVING",
            HealthStatus::NotServing => "NOT_SERVING",
            HealthStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        })
    }
}

/// Splits one encoded frame into chunks of at most `chunk_size` bytes; the last has `end_of_frame`
/// set. An empty frame is one empty chunk.
///
/// ```
/// let chunks = gitcap_client::frame_chunks(&[1, 2, 3, 4, 5], 2);
/// assert_eq!(chunks.len(), 3);
/// assert!(chunks[2].end_of_frame && !chunks[1].end_of_frame);
/// ```
pub fn frame_chunks(frame: &[u8], chunk_size: usize) -> Vec<FrameChunk> {
    if frame.is_empty() {
        return vec![FrameChunk { data: vec![], end_of_frame: true }];
    }
    let pieces: Vec<&[u8]> = frame.chunks(chunk_size.max(1)).collect();
    let last = pieces.len() - 1;
    pieces.into_iter().enumerate().map(|(i, p)| FrameChunk { data: p.to_vec(), end_of_frame: i == last }).collect()
}

/// The chunks of each frame in turn, reporting progress after each frame.
fn chunk_stream<S>(frames: S, chunk_size: usize, progress: Option<ProgressFn>) -> impl Stream<Item = FrameChunk> + Send
where
    S: Stream<Item = Vec<u8>> + Send + 'static,
{
    let sent_frames = Arc::new(AtomicU64::new(0));
    let sent_bytes = Arc::new(AtomicU64::new(0));
    frames.flat_map(move |frame| {
        let chunks = frame_chunks(&frame, chunk_size);
        let (progress, sent_frames, sent_bytes) = (progress.clone(), sent_frames.clone(), sent_bytes.clone());
        futures::stream::iter(chunks).map(move |chunk| {
            let bytes = sent_bytes.fetch_add(chunk.data.len() as u64, Ordering::Relaxed) + chunk.data.len() as u64;
            if chunk.end_of_frame {
                let frames = sent_frames.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(progress) = &progress {
                    progress(UploadProgress { frames, bytes });
                }
            }
            chunk
        })
    })
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T>> + Send>>;

/// A file read piece by piece as it is sent: the pieces, the file's size, and where a read error
/// is left (the stream then ends early, and the call must fail).
struct FileChunks {
    chunks: Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>,
    size: u64,
    error: Arc<std::sync::Mutex<Option<String>>>,
}

impl FileChunks {
    async fn open(path: &std::path::Path, chunk_size: usize) -> Result<Self> {
        let io = |e: std::io::Error| Error::Io(format!("reading {}: {e}", path.display()));
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        let error = Arc::new(std::sync::Mutex::new(None));
        let (slot, display) = (error.clone(), path.display().to_string());
        let chunks = futures::stream::unfold(Some(file), move |file| {
            let (slot, display) = (slot.clone(), display.clone());
            async move {
                use tokio::io::AsyncReadExt;
                let mut file = file?;
                let mut buffer = vec![0u8; chunk_size.max(1)];
                match file.read(&mut buffer).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buffer.truncate(n);
                        Some((buffer, Some(file)))
                    }
                    Err(e) => {
                        *slot.lock().unwrap() = Some(format!("reading {display}: {e}"));
                        None
                    }
                }
            }
        });
        Ok(Self { chunks: Box::pin(chunks), size, error })
    }

    /// The call's result, unless reading the file failed on the way.
    fn checked<T>(error: &std::sync::Mutex<Option<String>>, result: Result<T>) -> Result<T> {
        match error.lock().unwrap().take() {
            Some(message) => Err(Error::Io(message)),
            None => result,
        }
    }
}

/// The endpoint `config` names: its URL, connect timeout and TLS settings.
pub(crate) fn endpoint(config: &ClientConfig) -> Result<Endpoint> {
    let mut endpoint = Endpoint::from_shared(config.url.clone())
        .map_err(|e| Error::Config(format!("invalid server URL {:?}: {e}", config.url)))?;
    if let Some(timeout) = config.connect_timeout {
        endpoint = endpoint.connect_timeout(timeout);
    }
    if config.url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
        if let Some(pem) = &config.tls_ca_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        if let Some(domain) = &config.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| Error::Config(format!("TLS settings: {e}")))?;
    }
    Ok(endpoint)
}

/// A connection to a gitcap server. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct GitcapClient {
    captioner: CaptionerClient<Inner>,
    health: HealthClient<Inner>,
    admin: AdminClient<Inner>,
    request_timeout: Option<Duration>,
    chunk_size: usize,
}

impl GitcapClient {
    /// Connects to the server.
    ///
    /// ```no_run
    /// # async fn run() -> gitcap_client::Result<()> {
    /// use gitcap_client::{ClientConfig, GitcapClient};
    /// let client = GitcapClient::connect(ClientConfig::new("http://127.0.0.1:50051").token("s3cret")).await?;
    /// println!("{}", client.health("").await?);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(config: ClientConfig) -> Result<Self> {
        let channel = endpoint(&config)?.connect().await?;
        Self::with_channel(channel, config)
    }

    /// Uses an existing channel (the URL and connect timeout in `config` are ignored).
    pub fn with_channel(channel: Channel, config: ClientConfig) -> Result<Self> {
        let token = bearer(config.token.as_deref(), "the token")?;
        let admin_token = bearer(config.admin_token.as_deref(), "the admin token")?;
        let route_key = config
            .route_key
            .as_deref()
            .map(|key| key.parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| Error::Config("the route key must be printable ASCII".into()))?;
        let admin = AdminClient::new(InterceptedService::new(channel.clone(), Auth(admin_token, None)))
            .max_decoding_message_size(config.max_decoding_message_size)
            .max_encoding_message_size(config.max_encoding_message_size);
        let service = InterceptedService::new(channel, Auth(token, route_key));
        let captioner = CaptionerClient::new(service.clone())
            .max_decoding_message_size(config.max_decoding_message_size)
            .max_encoding_message_size(config.max_encoding_message_size);
        let health = HealthClient::new(service)
            .max_decoding_message_size(config.max_decoding_message_size)
            .max_encoding_message_size(config.max_encoding_message_size);
        Ok(Self {
            captioner,
            health,
            admin,
            request_timeout: config.request_timeout,
            chunk_size: config.chunk_size.max(1),
        })
    }

    /// The generated stub, for calls this wrapper does not cover.
    pub fn raw(&self) -> CaptionerClient<InterceptedService<Channel, Auth>> {
        self.captioner.clone()
    }

    /// The generated `gitcap.v1.Admin` stub (sending the admin token), for calls this wrapper does not cover.
    pub fn raw_admin(&self) -> AdminClient<InterceptedService<Channel, Auth>> {
        self.admin.clone()
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(timeout) = self.request_timeout {
            request.set_timeout(timeout);
        }
        request
    }

    /// Runs a call with a single answer under the request timeout.
    async fn unary<T>(&self, call: impl Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T> {
        let response = match self.request_timeout {
            Some(timeout) => tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| Error::DeadlineExceeded(format!("no answer within {timeout:?}")))?,
            None => call.await,
        };
        Ok(response?.into_inner())
    }

    fn caption_request(media: Media, options: &CaptionOptions) -> proto::CaptionRequest {
        proto::CaptionRequest {
            model: options.model.clone().unwrap_or_default(),
            media: Some(media),
            question: options.question.clone(),
            options: options.generation(),
            priority: options.wire_priority(),
        }
    }

    /// Captions an image or the frames of a video (or answers `options.question` about it).
    pub async fn caption(&self, media: Media, options: &CaptionOptions) -> Result<Caption> {
        let request = self.request(Self::caption_request(media, options));
        let mut stub = self.captioner.clone();
        self.unary(stub.caption(request)).await
    }

    /// The same, streaming each token as it is generated and then the complete caption.
    ///
    /// ```no_run
    /// # async fn run(client: gitcap_client::GitcapClient, image: Vec<u8>) -> gitcap_client::Result<()> {
    /// use futures::StreamExt;
    /// use gitcap_client::{CaptionEvent, CaptionOptions, Media};
    ///
    /// let mut events = client.caption_stream(Media::image(image), &CaptionOptions::default()).await?;
    /// while let Some(event) = events.next().await {
    ///     match event? {
    ///         CaptionEvent::Token(token) => print!("{}", token.text_delta),
    ///         CaptionEvent::Done(caption) => println!("\n({} tokens)", caption.token_ids.len()),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn caption_stream(&self, media: Media, options: &CaptionOptions) -> Result<BoxStream<CaptionEvent>> {
        let request = Request::new(Self::caption_request(media, options));
        let events = self.captioner.clone().caption_stream(request).await?.into_inner();
        Ok(Box::pin(events.map(|event| CaptionEvent::try_from(event?))))
    }

    fn upload_messages<S>(&self, frames: S, upload: &UploadOptions) -> impl Stream<Item = UploadMessage> + Send
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let caption = &upload.caption;
        let start = UploadStart {
            model: caption.model.clone().unwrap_or_default(),
            question: caption.question.clone(),
            options: caption.generation(),
            frame_count: upload.frame_count,
            priority: caption.wire_priority(),
        };
        futures::stream::once(async move { UploadMessage { message: Some(upload_message::Message::Start(start)) } })
            .chain(
                chunk_stream(frames, self.chunk_size, upload.progress.clone())
                    .map(|chunk| UploadMessage { message: Some(upload_message::Message::Chunk(chunk)) }),
            )
    }

    /// Uploads encoded frames one after the other, each split into chunks, and captions them.
    /// The server encodes each frame as soon as it is complete.
    ///
    /// ```no_run
    /// # async fn run(client: gitcap_client::GitcapClient) -> gitcap_client::Result<()> {
    /// use gitcap_client::{CaptionOptions, UploadOptions};
    ///
    /// let frames: Vec<Vec<u8>> = (0..6).map(|i| std::fs::read(format!("frame_{i}.png")).unwrap()).collect();
    /// let options = UploadOptions::new(CaptionOptions::default())
    ///     .frame_count(frames.len() as u32)
    ///     .progress(|p| eprintln!("{} frames sent", p.frames));
    /// let caption = client.upload_frames(futures::stream::iter(frames), &options).await?;
    /// println!("{}", caption.text);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn upload_frames<S>(&self, frames: S, upload: &UploadOptions) -> Result<Caption>
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let request = self.request(self.upload_messages(frames, upload));
        let mut stub = self.captioner.clone();
        self.unary(stub.upload_frames(request)).await
    }

    /// The same upload, streaming the tokens back as they are generated.
    pub async fn upload_frames_stream<S>(&self, frames: S, upload: &UploadOptions) -> Result<BoxStream<CaptionEvent>>
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let request = Request::new(self.upload_messages(frames, upload));
        let events = self.captioner.clone().upload_frames_stream(request).await?.into_inner();
        Ok(Box::pin(events.map(|event| CaptionEvent::try_from(event?))))
    }

    fn video_messages<S>(&self, chunks: S, upload: &VideoUploadOptions) -> impl Stream<Item = VideoUploadMessage> + Send
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let caption = &upload.caption;
        let start = VideoUploadStart {
            model: caption.model.clone().unwrap_or_default(),
            question: caption.question.clone(),
            options: caption.generation(),
            sampling: upload.sampling.clone(),
            size_bytes: upload.size_bytes,
            priority: caption.wire_priority(),
        };
        let (progress, sent) = (upload.progress.clone(), Arc::new(AtomicU64::new(0)));
        let chunk_size = self.chunk_size.max(1);
        let chunks = chunks.flat_map(move |piece| {
            let pieces: Vec<Vec<u8>> = piece.chunks(chunk_size).map(<[u8]>::to_vec).collect();
            futures::stream::iter(pieces)
        });
        let start = VideoUploadMessage { message: Some(video_upload_message::Message::Start(start)) };
        futures::stream::once(async move { start }).chain(chunks.map(move |chunk| {
            let bytes = sent.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
            if let Some(progress) = &progress {
                progress(UploadProgress { frames: 0, bytes });
            }
            VideoUploadMessage { message: Some(video_upload_message::Message::Chunk(chunk)) }
        }))
    }

    /// Uploads one video file (its bytes as a stream of pieces, sent in chunks) and captions it:
    /// the server samples and decodes it. For files of any size up to the server's limit.
    ///
    /// ```no_run
    /// # async fn run(client: gitcap_client::GitcapClient) -> gitcap_client::Result<()> {
    /// use gitcap_client::{CaptionOptions, VideoUploadOptions};
    ///
    /// let options = VideoUploadOptions::new(CaptionOptions::default());
    /// let caption = client.upload_video_file("clip.mp4", &options).await?;
    /// println!("{} (frames at {:?} s)", caption.text, caption.frame_timestamps_s);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn upload_video<S>(&self, chunks: S, upload: &VideoUploadOptions) -> Result<Caption>
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let request = self.request(self.video_messages(chunks, upload));
        let mut stub = self.captioner.clone();
        self.unary(stub.upload_video(request)).await
    }

    /// The same upload, streaming the tokens back as they are generated.
    pub async fn upload_video_stream<S>(
        &self,
        chunks: S,
        upload: &VideoUploadOptions,
    ) -> Result<BoxStream<CaptionEvent>>
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let request = Request::new(self.video_messages(chunks, upload));
        let events = self.captioner.clone().upload_video_stream(request).await?.into_inner();
        Ok(Box::pin(events.map(|event| CaptionEvent::try_from(event?))))
    }

    /// [`Self::upload_video`] of a file on disk, read as it is sent (never whole in memory).
    pub async fn upload_video_file(
        &self,
        path: impl AsRef<std::path::Path>,
        upload: &VideoUploadOptions,
    ) -> Result<Caption> {
        let file = FileChunks::open(path.as_ref(), self.chunk_size).await?;
        let upload = VideoUploadOptions { size_bytes: file.size, ..upload.clone() };
        let result = self.upload_video(file.chunks, &upload).await;
        FileChunks::checked(&file.error, result)
    }

    /// [`Self::upload_video_stream`] of a file on disk.
    pub async fn upload_video_file_stream(
        &self,
        path: impl AsRef<std::path::Path>,
        upload: &VideoUploadOptions,
    ) -> Result<BoxStream<CaptionEvent>> {
        let file = FileChunks::open(path.as_ref(), self.chunk_size).await?;
        let upload = VideoUploadOptions { size_bytes: file.size, ..upload.clone() };
        let result = self.upload_video_stream(file.chunks, &upload).await;
        FileChunks::checked(&file.error, result)
    }

    /// Dense captioning of a video (`Media::video` or `Media::url`): a timestamped caption of
    /// every window, as each is ready.
    ///
    /// ```no_run
    /// # async fn run(client: gitcap_client::GitcapClient) -> gitcap_client::Result<()> {
    /// use futures::StreamExt;
    /// use gitcap_client::{DenseOptions, Media};
    ///
    /// let video = std::fs::read("clip.mp4").expect("reading the video");
    /// let options = DenseOptions { window_s: 6.0, stride_s: 3.0, ..Default::default() };
    /// let mut windows = client.dense_caption(Media::video(video), &options).await?;
    /// while let Some(window) = windows.next().await {
    ///     let window = window?;
    ///     println!("{:.1}-{:.1} s: {}", window.start_s, window.end_s, window.caption.unwrap_or_default().text);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn dense_caption(
        &self,
        media: Media,
        options: &DenseOptions,
    ) -> Result<BoxStream<proto::DenseCaptionEvent>> {
        let caption = &options.caption;
        let request = proto::DenseCaptionRequest {
            model: caption.model.clone().unwrap_or_default(),
            media: Some(media),
            question: caption.question.clone(),
            options: caption.generation(),
            window_s: options.window_s,
            stride_s: options.stride_s,
            priority: caption.wire_priority(),
        };
        let events = self.captioner.clone().dense_caption(Request::new(request)).await?.into_inner();
        Ok(Box::pin(events.map(|event| Ok(event?))))
    }

    /// Live captioning: streams frames as they come (from a camera, say) and yields a caption
    /// of the latest `window` frames every `stride` frames.
    ///
    /// ```no_run
    /// # async fn run(client: gitcap_client::GitcapClient, frames: Vec<Vec<u8>>) -> gitcap_client::Result<()> {
    /// use futures::StreamExt;
    /// use gitcap_client::LiveOptions;
    ///
    /// let options = LiveOptions { window: 6, stride: 3, ..Default::default() };
    /// let mut events = client.live(futures::stream::iter(frames), &options).await?;
    /// while let Some(event) = events.next().await {
    ///     let event = event?;
    ///     let text = event.caption.map(|c| c.text).unwrap_or_default();
    ///     println!("frames {}-{}: {text}", event.first_frame, event.last_frame);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn live<S>(&self, frames: S, options: &LiveOptions) -> Result<BoxStream<proto::LiveEvent>>
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let caption = &options.caption;
        let start = LiveStart {
            model: caption.model.clone().unwrap_or_default(),
            question: caption.question.clone(),
            options: caption.generation(),
            window: options.window,
            stride: options.stride,
        };
        let messages =
            futures::stream::once(async move { LiveMessage { message: Some(live_message::Message::Start(start)) } })
                .chain(
                    chunk_stream(frames, self.chunk_size, options.progress.clone())
                        .map(|chunk| LiveMessage { message: Some(live_message::Message::Chunk(chunk)) }),
                );
        let events = self.captioner.clone().live_caption(Request::new(messages)).await?.into_inner();
        Ok(Box::pin(events.map(|event| Ok(event?))))
    }

    /// Ranks candidate labels by the model's log-probability of each after the media (and the
    /// optional `prompt`), best first.
    ///
    /// ```no_run
    /// # async fn run(client: gitcap_client::GitcapClient, image: Vec<u8>) -> gitcap_client::Result<()> {
    /// use gitcap_client::Media;
    ///
    /// let ranked = client.score_labels(Media::image(image), ["a dog", "a cat"], "", "").await?;
    /// println!("best: {}", ranked.scores[0].label);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn score_labels<I, L>(
        &self,
        media: Media,
        labels: I,
        prompt: &str,
        model: &str,
    ) -> Result<proto::ScoreLabelsResponse>
    where
        I: IntoIterator<Item = L>,
        L: Into<String>,
    {
        let request = self.request(ScoreLabelsRequest {
            model: model.to_string(),
            media: Some(media),
            labels: labels.into_iter().map(Into::into).collect(),
            prompt: prompt.to_string(),
        });
        let mut stub = self.captioner.clone();
        self.unary(stub.score_labels(request)).await
    }

    /// Checks the server's health (`grpc.health.v1`); `service` empty = the server as a whole,
    /// or e.g. `gitcap.v1.Captioner`. An unknown service is [`Error::NotFound`].
    pub async fn health(&self, service: &str) -> Result<HealthStatus> {
        let request = self.request(HealthCheckRequest { service: service.to_string() });
        let mut stub = self.health.clone();
        let reply = self.unary(stub.check(request)).await?;
        Ok(match ServingStatus::try_from(reply.status) {
            Ok(ServingStatus::Serving) => HealthStatus::Serving,
            Ok(ServingStatus::NotServing) => HealthStatus::NotServing,
            Ok(ServingStatus::ServiceUnknown) => HealthStatus::ServiceUnknown,
            _ => HealthStatus::Unknown,
        })
    }

    /// Loads a model version beside the others (`Admin.Load`) and answers once it is READY (or
    /// failed). The alias `spec.name` is pointed at it if it does not exist yet. Loading may
    /// download from the Hub, so this call has no request timeout; watch
    /// [`Self::watch_models`] for progress.
    ///
    /// ```no_run
    /// # async fn run() -> gitcap_client::Result<()> {
    /// use gitcap_client::{proto::ModelSpec, ClientConfig, GitcapClient};
    ///
    /// let config = ClientConfig::new("http://127.0.0.1:50051").admin_token("admin-s3cret");
    /// let client = GitcapClient::connect(config).await?;
    /// let status = client.load_model(ModelSpec::new("large", "microsoft/git-large-coco")).await?;
    /// println!("{} is {:?}", status.id, status.state());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn load_model(&self, spec: ModelSpec) -> Result<ModelStatus> {
        let request = Request::new(proto::LoadRequest { spec: Some(spec) });
        Ok(self.admin.clone().load(request).await?.into_inner())
    }

    /// Unloads a version (`name@version`): new requests for it get NOT_FOUND, requests in flight
    /// finish. Answers its state (DRAINING while requests finish, or UNLOADED).
    pub async fn unload_model(&self, id: &str) -> Result<ModelStatus> {
        let request = self.request(proto::UnloadRequest { id: id.to_string() });
        let mut stub = self.admin.clone();
        let reply = self.unary(stub.unload(request)).await?;
        reply.status.ok_or_else(|| Error::protocol("an unload answer without a status"))
    }

    /// Every loaded (or failed) model version and every alias.
    pub async fn list_models(&self) -> Result<ListResponse> {
        let request = self.request(proto::ListRequest {});
        let mut stub = self.admin.clone();
        self.unary(stub.list(request)).await
    }

    /// One model version by `name@version`.
    pub async fn get_model(&self, id: &str) -> Result<ModelStatus> {
        let request = self.request(proto::GetRequest { id: id.to_string() });
        let mut stub = self.admin.clone();
        self.unary(stub.get(request)).await
    }

    /// Points `alias` at a loaded, READY version (`name@version`).
    pub async fn set_alias(&self, alias: &str, id: &str) -> Result<AliasStatus> {
        let request =
            self.request(proto::SetAliasRequest { alias: alias.to_string(), id: id.to_string(), ..Default::default() });
        let mut stub = self.admin.clone();
        self.unary(stub.set_alias(request)).await
    }

    /// Splits `alias` between READY versions by weight (a canary: `[("coco@v1", 90), ("coco@v2",
    /// 10)]`); promoting is another split, or [`Self::set_alias`]. Callers that send the metadata
    /// `x-gitcap-route-key` always reach the same version for the same key.
    pub async fn set_alias_split<I, S>(&self, alias: &str, weights: I) -> Result<AliasStatus>
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        let split = weights.into_iter().map(|(id, weight)| (id.into(), weight)).collect();
        let request = self.request(proto::SetAliasRequest { alias: alias.to_string(), split, ..Default::default() });
        let mut stub = self.admin.clone();
        self.unary(stub.set_alias(request)).await
    }

    /// Hot swap: loads and warms `spec`, then repoints `alias` at it; if it fails to load the
    /// alias stays where it was. No request timeout, as for [`Self::load_model`].
    ///
    /// ```no_run
    /// # async fn run(client: gitcap_client::GitcapClient) -> gitcap_client::Result<()> {
    /// use gitcap_client::{proto::ModelSpec, SwapOptions};
    ///
    /// let spec = ModelSpec::new("captions", "/models/git-base-coco").version("v2");
    /// let swapped = client.swap_model("captions", spec, SwapOptions { keep_previous: true, ..Default::default() }).await?;
    /// let alias = swapped.alias.unwrap_or_default();
    /// println!("{} now {} (was {})", alias.alias, alias.id, alias.previous_id);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn swap_model(&self, alias: &str, spec: ModelSpec, options: SwapOptions) -> Result<SwapResponse> {
        let request = Request::new(proto::SwapRequest {
            alias: alias.to_string(),
            spec: Some(spec),
            replace: options.replace,
            keep_previous: options.keep_previous,
        });
        Ok(self.admin.clone().swap(request).await?.into_inner())
    }

    /// Points `alias` back at the version it pointed at before the last swap, if still loaded.
    pub async fn rollback(&self, alias: &str) -> Result<AliasStatus> {
        let request = self.request(proto::RollbackRequest { alias: alias.to_string() });
        let mut stub = self.admin.clone();
        self.unary(stub.rollback(request)).await
    }

    /// State changes of every model version and alias, starting with the current state; the
    /// stream does not end until the server goes away (or the stream is dropped).
    ///
    /// ```no_run
    /// # async fn run(client: gitcap_client::GitcapClient) -> gitcap_client::Result<()> {
    /// use futures::StreamExt;
    /// use gitcap_client::ModelEvent;
    ///
    /// let mut events = client.watch_models().await?;
    /// while let Some(event) = events.next().await {
    ///     match event? {
    ///         ModelEvent::Model(m) => println!("{} {:?} {}", m.id, m.state(), m.progress),
    ///         ModelEvent::Alias(a) => println!("{} -> {}", a.alias, a.id),
    ///         ModelEvent::DesiredState(d) => println!("{} in sync: {}", d.path, d.in_sync),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn watch_models(&self) -> Result<BoxStream<ModelEvent>> {
        let events = self.admin.clone().watch(Request::new(proto::WatchRequest {})).await?.into_inner();
        Ok(Box::pin(events.map(|event| ModelEvent::try_from(event?))))
    }
}

/// `Bearer <token>` as a header value.
fn bearer(token: Option<&str>, what: &str) -> Result<Option<MetadataValue<Ascii>>> {
    token
        .map(|token| {
            format!("Bearer {token}")
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| Error::Config(format!("{what} must be printable ASCII")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn frames_split_into_chunks_that_concatenate_back() {
        let frame: Vec<u8> = (0..=255).collect();
        for size in [1, 7, 100, 256, 1000] {
            let chunks = frame_chunks(&frame, size);
            assert_eq!(chunks.len(), frame.len().div_ceil(size), "chunk size {size}");
            assert!(chunks.iter().all(|c| c.data.len() <= size && !c.data.is_empty()));
            assert!(chunks.iter().rev().skip(1).all(|c| !c.end_of_frame));
            assert!(chunks.last().unwrap().end_of_frame);
            assert_eq!(chunks.iter().flat_map(|c| c.data.clone()).collect::<Vec<_>>(), frame);
        }
        assert_eq!(frame_chunks(&[], 10), vec![FrameChunk { data: vec![], end_of_frame: true }]);
        // A chunk size of 0 is treated as 1 instead of looping forever.
        assert_eq!(frame_chunks(&[1, 2], 0).len(), 2);
    }

    #[tokio::test]
    async fn chunk_stream_reports_progress_per_frame() {
        let seen = Arc::new(Mutex::new(vec![]));
        let record = seen.clone();
        let progress: ProgressFn = Arc::new(move |p| record.lock().unwrap().push(p));
        let frames = vec![vec![0u8; 10], vec![1u8; 3], vec![2u8; 4]];
        let chunks: Vec<FrameChunk> = chunk_stream(futures::stream::iter(frames), 4, Some(progress)).collect().await;
        assert_eq!(chunks.len(), 3 + 1 + 1);
        assert_eq!(chunks.iter().filter(|c| c.end_of_frame).count(), 3);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                UploadProgress { frames: 1, bytes: 10 },
                UploadProgress { frames: 2, bytes: 13 },
                UploadProgress { frames: 3, bytes: 17 }
            ]
        );
    }

    #[test]
    fn default_options_send_no_generation_options() {
        assert_eq!(CaptionOptions::default().generation(), None);
        let options = CaptionOptions::default().max_new_tokens(5).sample(Some(7));
        let generation = options.generation().unwrap();
        assert_eq!((generation.max_new_tokens, generation.do_sample, generation.seed), (Some(5), Some(true), Some(7)));
    }

    #[tokio::test]
    async fn a_token_that_is_not_ascii_is_a_config_error() {
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let result = GitcapClient::with_channel(channel.clone(), ClientConfig::new("").token("bad\ntoken"));
        assert!(matches!(result, Err(Error::Config(_))));
        let result = GitcapClient::with_channel(channel, ClientConfig::new("").admin_token("bad\ntoken"));
        assert!(matches!(result, Err(Error::Config(m)) if m.contains("admin token")));
    }

    #[test]
    fn the_token_goes_in_the_authorization_header() {
        use tonic::service::Interceptor;
        let value = "Bearer s3cret".parse().unwrap();
        let request = Auth(Some(value), Some("tenant-7".parse().unwrap())).call(Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer s3cret");
        assert_eq!(request.metadata().get("x-gitcap-route-key").unwrap(), "tenant-7");
        let request = Auth(None, None).call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn model_events_convert() {
        let model = proto::ModelEvent { event: Some(model_event::Event::Model(ModelStatus::default())) };
        assert_eq!(ModelEvent::try_from(model).unwrap(), ModelEvent::Model(ModelStatus::default()));
        let alias = proto::ModelEvent { event: Some(model_event::Event::Alias(AliasStatus::default())) };
        assert_eq!(ModelEvent::try_from(alias).unwrap(), ModelEvent::Alias(AliasStatus::default()));
        let desired = proto::DesiredStateStatus { in_sync: true, ..Default::default() };
        let event = proto::ModelEvent { event: Some(model_event::Event::DesiredState(desired.clone())) };
        assert_eq!(ModelEvent::try_from(event).unwrap(), ModelEvent::DesiredState(desired));
        assert!(ModelEvent::try_from(proto::ModelEvent { event: None }).is_err());
    }

    #[test]
    fn caption_events_convert() {
        let done = proto::CaptionEvent { event: Some(caption_event::Event::Done(Caption::default())) };
        assert_eq!(CaptionEvent::try_from(done).unwrap(), CaptionEvent::Done(Caption::default()));
        assert!(CaptionEvent::try_from(proto::CaptionEvent { event: None }).is_err());
    }
}
