//! Time arithmetic as the ffmpeg program does it, so that a decoding pass can tell, from a
//! frame's timestamp alone, whether `ffmpeg -ss t` would have written that frame.
//!
//! `-ss t` (an input option) is parsed to whole microseconds and offset by the container's start
//! time (also microseconds); every packet timestamp is then shifted by that amount rescaled to the
//! stream's time base (`av_rescale_q`: nearest, halves away from zero), and a `trim` filter drops
//! the frames whose shifted timestamp is negative. So the frame written for `t` is the first
//! decoded frame whose timestamp, in stream ticks, is at least [`TimeBase::ticks_from_us`] of
//! `t + start`. The module documentation of `media::video` records how this was checked.

/// A stream's time base: one tick is `num / den` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBase {
    /// Numerator (seconds).
    pub num: i64,
    /// Denominator.
    pub den: i64,
}

impl TimeBase {
    /// Parses ffprobe's `num/den`; `None` unless both are positive.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (num, den) = text.trim().split_once('/')?;
        let (num, den) = (num.parse().ok()?, den.parse().ok()?);
        (num > 0 && den > 0).then_some(Self { num, den })
    }

    /// `av_rescale_q(us, 1/1000000, self)`: microseconds to ticks, to the nearest tick, halves
    /// away from zero.
    pub(crate) fn ticks_from_us(self, us: i64) -> i64 {
        let numerator = i128::from(us) * i128::from(self.den);
        let denominator = i128::from(self.num) * 1_000_000;
        let half = denominator / 2;
        let magnitude = (numerator.abs() + half) / denominator;
        let ticks = if numerator < 0 { -magnitude } else { magnitude };
        ticks.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// As ffmpeg's `-enc_time_base` wants it.
    pub(crate) fn ratio_arg(self) -> String {
        format!("{}:{}", self.num, self.den)
    }
}

/// Seconds to whole microseconds, as ffmpeg parses `-ss` (to the nearest microsecond).
pub(crate) fn us_from_seconds(seconds: f64) -> i64 {
    (seconds * 1e6).round() as i64
}

/// A non-negative microsecond count as ffmpeg's `-ss` takes it, exactly: `12.345678`.
pub(crate) fn ss_arg(us: i64) -> String {
    let us = us.max(0);
    format!("{}.{:06}", us / 1_000_000, us % 1_000_000)
}

/// The first timestamp (stream ticks) a frame may have to be the frame `-ss` writes for a
/// time `us` microseconds after the container's start `start_us`.
pub(crate) fn threshold(time_base: TimeBase, start_us: i64, us: i64) -> i64 {
    time_base.ticks_from_us(us + start_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_time_bases() {
        assert_eq!(TimeBase::parse("1/15360"), Some(TimeBase { num: 1, den: 15360 }));
        assert_eq!(TimeBase::parse(" 1001/30000\n"), Some(TimeBase { num: 1001, den: 30000 }));
        for bad in ["0/1", "1/0", "-1/25", "1", "a/b", ""] {
            assert_eq!(TimeBase::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn rescales_to_nearest_with_halves_away_from_zero() {
        let ms = TimeBase { num: 1, den: 1000 };
        assert_eq!(ms.ticks_from_us(33_499), 33);
        assert_eq!(ms.ticks_from_us(33_500), 34);
        assert_eq!(ms.ticks_from_us(-33_500), -34);
        assert_eq!(ms.ticks_from_us(-33_499), -33);
        let mp4 = TimeBase { num: 1, den: 15360 };
        // 1/30 s is 512 ticks; -ss 0.033333 (a third of a microsecond early) still rounds to it.
        assert_eq!(mp4.ticks_from_us(33_333), 512);
        let pal = TimeBase { num: 1, den: 25 };
        assert_eq!(pal.ticks_from_us(19_999), 0);
        assert_eq!(pal.ticks_from_us(20_000), 1);
        let huge = TimeBase { num: 1, den: i64::MAX };
        assert_eq!(huge.ticks_from_us(i64::MAX), i64::MAX);
    }

    #[test]
    fn formats_seek_arguments_exactly() {
        assert_eq!(ss_arg(0), "0.000000");
        assert_eq!(ss_arg(12_345_678), "12.345678");
        assert_eq!(ss_arg(-5), "0.000000");
        assert_eq!(us_from_seconds(2.5), 2_500_000);
        assert_eq!(us_from_seconds(1.0 / 3.0), 333_333);
    }

    #[test]
    fn thresholds_include_the_start_time() {
        let ts = TimeBase { num: 1, den: 90_000 };
        assert_eq!(threshold(ts, 1_466_667, 0), 132_000);
        assert_eq!(threshold(ts, 1_466_667, 33_333), 135_000);
    }
}
