//! `gitcap-server bench-video`: how long probing a video file and sampling frames from it take
//! (scripts/bench-video.sh runs it on 10-second and 10-minute 1080p files).

use std::path::PathBuf;
use std::time::Instant;

use futures::StreamExt;

use super::{sample_timestamps, Sampling, VideoDecoder, VideoLimits};
use crate::error::{GitcapError, Result};

/// What to time.
#[derive(Debug, Clone)]
pub struct BenchVideo {
    /// The video files, each timed on its own.
    pub files: Vec<PathBuf>,
    /// Timed runs per file, after one untimed run (which warms the page cache).
    pub runs: usize,
    /// Frames sampled evenly (segment centres) from each file.
    pub frames: usize,
    /// Decoder processes one call runs at once (default: [`VideoLimits::default`]'s).
    pub processes_per_call: Option<usize>,
    /// Decoder threads per process (default: [`VideoLimits::default`]'s).
    pub threads_per_process: Option<usize>,
}

/// Prints one JSON line per file: medians over the runs of the probe, the sampling (every
/// frame decoded and received) and both together, in milliseconds.
pub fn run(bench: BenchVideo) -> Result<()> {
    let defaults = VideoLimits::default();
    let limits = VideoLimits {
        processes_per_call: bench.processes_per_call.unwrap_or(defaults.processes_per_call),
        threads_per_process: bench.threads_per_process.unwrap_or(defaults.threads_per_process),
        ..defaults
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| GitcapError::Internal(e.to_string()))?;
    runtime.block_on(async {
        let decoder = VideoDecoder::detect(None, None, limits.clone()).map_err(GitcapError::FailedPrecondition)?;
        for file in &bench.files {
            let mut probe_ms = Vec::new();
            let mut sample_ms = Vec::new();
            let mut total_ms = Vec::new();
            let mut info = None;
            for run in 0..=bench.runs {
                let started = Instant::now();
                let probed = decoder.probe(file, "file").await?;
                let probed_at = started.elapsed();
                let timestamps =
                    sample_timestamps(&probed, &Sampling::Even { start_s: None, end_s: None }, bench.frames)?;
                let mut frames = std::pin::pin!(decoder.frames_at(file, &probed, &timestamps, "file"));
                let mut received = 0;
                while let Some(frame) = frames.next().await {
                    frame?;
                    received += 1;
                }
                if received != timestamps.len() {
                    return Err(GitcapError::Internal(format!("{received} frames of {}", timestamps.len())));
                }
                let total = started.elapsed();
                if run > 0 {
                    probe_ms.push(probed_at.as_secs_f64() * 1e3);
                    sample_ms.push((total - probed_at).as_secs_f64() * 1e3);
                    total_ms.push(total.as_secs_f64() * 1e3);
                }
                info = Some(probed);
            }
            let info = info.expect("at least one run");
            let line = serde_json::json!({
                "file": file.file_name().map(|name| name.to_string_lossy()).unwrap_or_default(),
                "ffmpeg": decoder.version(),
                "duration_s": info.duration_s,
                "width": info.width,
                "height": info.height,
                "codec": info.codec,
                "frames": bench.frames,
                "runs": bench.runs,
                "probe_ms": median(&mut probe_ms),
                "sample_ms": median(&mut sample_ms),
                "total_ms": median(&mut total_ms),
                "total_ms_min": total_ms.iter().cloned().fold(f64::INFINITY, f64::min),
                "total_ms_max": total_ms.iter().cloned().fold(0.0, f64::max),
                "processes_per_call": limits.processes_per_call,
                "threads_per_process": limits.threads_per_process,
            });
            println!("{line}");
        }
        Ok(())
    })
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
