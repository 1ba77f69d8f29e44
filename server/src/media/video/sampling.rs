//! Which moments of a video the model sees.

use super::VideoInfo;
use crate::error::{GitcapError, Result};

/// Where request errors about sampling point (the lead's API names the message `media.sampling`).
pub const SAMPLING_FIELD: &str = "media.sampling";

/// How to choose the timestamps of the frames a model sees.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// Evenly over `[start_s, end_s)` (defaults: the whole video): the centre of each of `count`
    /// equal segments.
    Even { start_s: Option<f64>, end_s: Option<f64> },
    /// These timestamps, in seconds from the start, in increasing order (repeats allowed).
    At(Vec<f64>),
}

/// The timestamps `sampling` picks, in seconds from the video's start, non-decreasing and within
/// `[0, duration)`.
///
/// `Even`: `count` segment centres, `t_i = start + (i + 0.5) * (end - start) / count` (no
/// timestamps for a `count` of 0). `At`: the given timestamps, checked (`count` does not apply).
/// Errors name the field: `media.sampling.start_s`, `media.sampling.end_s`,
/// `media.sampling.timestamps_s[i]`.
pub fn sample_timestamps(info: &VideoInfo, sampling: &Sampling, count: usize) -> Result<Vec<f64>> {
    let duration = info.duration_s;
    match sampling {
        Sampling::Even { start_s, end_s } => {
            let start = start_s.unwrap_or(0.0);
            let end = end_s.unwrap_or(duration);
            if !start.is_finite() || start < 0.0 || start >= duration {
                return Err(GitcapError::invalid(
                    format!("{SAMPLING_FIELD}.start_s"),
                    format!("must be at least 0 and before the end of the video ({duration:.3} s), not {start}"),
                ));
            }
            if !end.is_finite() || end <= start || end > duration {
                return Err(GitcapError::invalid(
                    format!("{SAMPLING_FIELD}.end_s"),
                    format!("must be after start_s ({start} s) and at most the video's duration ({duration:.3} s), not {end}"),
                ));
            }
            let segment = (end - start) / count.max(1) as f64;
            Ok((0..count).map(|i| (start + (i as f64 + 0.5) * segment).min(end)).collect())
        }
        Sampling::At(timestamps) => {
            check_timestamps(timestamps, duration, &format!("{SAMPLING_FIELD}.timestamps_s"))?;
            Ok(timestamps.clone())
        }
    }
}

/// Checks that `timestamps` are finite, non-decreasing and within `[0, duration)`; errors name
/// `field[i]`.
pub(crate) fn check_timestamps(timestamps: &[f64], duration: f64, field: &str) -> Result<()> {
    if timestamps.is_empty() {
        return Err(GitcapError::invalid(field, "give at least one timestamp"));
    }
    let mut previous = 0.0;
    for (i, &t) in timestamps.iter().enumerate() {
        let problem = if !t.is_finite() {
            Some(format!("{t} is not a number of seconds"))
        } else if t < 0.0 || t >= duration {
            Some(format!("{t} s is outside the video (0 to {duration:.3} s)"))
        } else if t < previous {
            Some(format!("{t} s comes before the timestamp ahead of it ({previous} s); give them in increasing order"))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(GitcapError::invalid(format!("{field}[{i}]"), problem));
        }
        previous = t;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::video::TimeBase;

    fn video(duration_s: f64) -> VideoInfo {
        VideoInfo {
            container: "matroska,webm".into(),
            codec: "vp9".into(),
            duration_s,
            start_s: 0.0,
            width: 64,
            height: 48,
            rotation: 0,
            frame_rate: Some(30.0),
            frame_count: None,
            time_base: TimeBase { num: 1, den: 1000 },
            stream_index: 0,
        }
    }

    fn field_of(result: Result<Vec<f64>>) -> String {
        match result {
            Err(GitcapError::InvalidArgument { field, .. }) => field,
            other => panic!("expected an invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn even_sampling_takes_segment_centres() {
        let even = Sampling::Even { start_s: None, end_s: None };
        assert_eq!(sample_timestamps(&video(12.0), &even, 6).unwrap(), vec![1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
        let part = Sampling::Even { start_s: Some(2.0), end_s: Some(4.0) };
        assert_eq!(sample_timestamps(&video(12.0), &part, 2).unwrap(), vec![2.5, 3.5]);
        assert_eq!(sample_timestamps(&video(12.0), &even, 0).unwrap(), Vec::<f64>::new());
        let one_frame = sample_timestamps(&video(1.0 / 30.0), &even, 6).unwrap();
        assert!(one_frame.windows(2).all(|w| w[0] < w[1]) && one_frame[5] < 1.0 / 30.0);
    }

    #[test]
    fn even_sampling_checks_its_range() {
        let at = |start_s, end_s| sample_timestamps(&video(10.0), &Sampling::Even { start_s, end_s }, 6);
        assert_eq!(field_of(at(Some(-1.0), None)), "media.sampling.start_s");
        assert_eq!(field_of(at(Some(10.0), None)), "media.sampling.start_s");
        assert_eq!(field_of(at(Some(f64::NAN), None)), "media.sampling.start_s");
        assert_eq!(field_of(at(Some(5.0), Some(5.0))), "media.sampling.end_s");
        assert_eq!(field_of(at(None, Some(10.5))), "media.sampling.end_s");
        assert_eq!(field_of(at(None, Some(f64::INFINITY))), "media.sampling.end_s");
    }

    #[test]
    fn explicit_timestamps_are_checked() {
        let at = |ts: &[f64]| sample_timestamps(&video(10.0), &Sampling::At(ts.to_vec()), 6);
        assert_eq!(at(&[0.0, 2.0, 2.0, 9.99]).unwrap(), vec![0.0, 2.0, 2.0, 9.99]);
        assert_eq!(field_of(at(&[])), "media.sampling.timestamps_s");
        assert_eq!(field_of(at(&[1.0, f64::NAN])), "media.sampling.timestamps_s[1]");
        assert_eq!(field_of(at(&[1.0, 10.0])), "media.sampling.timestamps_s[1]");
        assert_eq!(field_of(at(&[-0.5])), "media.sampling.timestamps_s[0]");
        assert_eq!(field_of(at(&[3.0, 2.0, 4.0])), "media.sampling.timestamps_s[1]");
    }
}
