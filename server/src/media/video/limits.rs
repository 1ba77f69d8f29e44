//! What a video, and each decoder process working on it, may cost.

/// Bounds on the videos accepted and on the `ffmpeg`/`ffprobe` children that read them.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoLimits {
    /// The longest video accepted, in seconds.
    pub max_duration_s: f64,
    /// The most pixels a frame may have (displayed width × height).
    pub max_pixels: u64,
    /// The most frames one call may ask for (timestamps given, or grid points).
    pub max_frames: usize,
    /// CPU time each child may use (all its threads together), in seconds; it is killed when
    /// it reaches it (`RLIMIT_CPU`).
    pub cpu_seconds: u64,
    /// How long a call may wait on one child, in seconds (time the child spends blocked because
    /// the consumer of the frames is slow does not count); the child is killed after it.
    pub wall_seconds: f64,
    /// Address space of each child, in bytes (`RLIMIT_AS`): memory it cannot grow past.
    pub memory_bytes: u64,
    /// The most children running at once, over all calls.
    pub max_processes: usize,
    /// The most children one call runs at once (decoding different parts of the video).
    pub processes_per_call: usize,
    /// Decoder threads in each child (`-threads`; 0 lets ffmpeg choose, one per core).
    pub threads_per_process: usize,
    /// What one dense captioning request may ask for.
    pub dense: DenseLimits,
}

/// Bounds on one dense captioning request (`DenseCaption`), checked before anything is decoded;
/// read straight from the settings' `[media.dense]` table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseLimits {
    /// The shortest window and stride accepted, in seconds.
    pub min_window_secs: f64,
    pub min_stride_secs: f64,
    /// The most windows (captions) and grid frames one request may cover.
    pub max_windows: usize,
    pub max_frames: usize,
    /// How long a request waits for its client to take the next caption, in seconds, before it
    /// stops; it holds no decoder process meanwhile.
    pub send_timeout_secs: f64,
}

impl Default for DenseLimits {
    /// Windows and strides of at least 1 s, at most 1024 windows and 4320 frames (two hours at
    /// the default 10 s windows of a 6-frame model), 60 s for a client to read.
    fn default() -> Self {
        Self {
            min_window_secs: 1.0,
            min_stride_secs: 1.0,
            max_windows: 1024,
            max_frames: 4320,
            send_timeout_secs: 60.0,
        }
    }
}

impl Default for VideoLimits {
    /// One hour, 4K (3840x2160), 4096 frames a call, 60 s of CPU and of waiting and 2 GiB per
    /// child; children: 2 per core in all, up to 2 a call, 2 decoder threads each.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            max_duration_s: 3600.0,
            max_pixels: 3840 * 2160,
            max_frames: 4096,
            cpu_seconds: 60,
            wall_seconds: 60.0,
            memory_bytes: 2 << 30,
            max_processes: 2 * cores,
            processes_per_call: 2,
            threads_per_process: 2,
            dense: DenseLimits::default(),
        }
    }
}
