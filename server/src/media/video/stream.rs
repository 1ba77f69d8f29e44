//! The frames of a call as a stream: its passes run in order, up to
//! [`VideoLimits::processes_per_call`](super::VideoLimits) children at once, and each frame is
//! read from its child only when the consumer asks for it.

use std::collections::VecDeque;

use futures::Stream;
use image::RgbImage;

use super::pass::{last_frame, PassPlan, RunningPass, Sample, Step};
use super::{Source, TimedFrame};
use crate::error::Result;
use crate::media::budget::OwnedReservation;

/// The stream of `TimedFrame`s for `passes` (in sample order), or of `error` alone.
pub(crate) fn frames(source: Result<Source>, passes: Vec<PassPlan>) -> impl Stream<Item = Result<TimedFrame>> + Send {
    let state = match source {
        Ok(source) => State::Running(Box::new(Frames::new(source, passes))),
        Err(error) => State::Failed(Some(error)),
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = match &mut state {
            State::Running(frames) => frames.next().await,
            State::Failed(error) => error.take().map(Err),
        };
        item.map(|item| (item, state))
    })
}

enum State {
    Running(Box<Frames>),
    Failed(Option<crate::error::GitcapError>),
}

struct Pending {
    image: RgbImage,
    samples: VecDeque<Sample>,
    room: Option<OwnedReservation>,
}

/// Where a call's stream stands.
struct Frames {
    source: Source,
    /// Passes not started yet.
    queued: VecDeque<PassPlan>,
    /// Passes started, in order; the first is the one being read.
    running: VecDeque<RunningPass>,
    /// A frame still owed to some samples (one frame may answer several), and its room in the
    /// media budget, which goes with the last of them.
    pending: Option<Pending>,
    finished: bool,
}

impl Frames {
    fn new(source: Source, passes: Vec<PassPlan>) -> Self {
        Self { source, queued: passes.into(), running: VecDeque::new(), pending: None, finished: false }
    }

    async fn next(&mut self) -> Option<Result<TimedFrame>> {
        loop {
            if let Some(frame) = self.take_pending() {
                return Some(Ok(frame));
            }
            if self.finished {
                return None;
            }
            if let Err(error) = self.advance().await {
                self.finish();
                return Some(Err(error));
            }
        }
    }

    /// Hands out the pending frame to its next sample (a copy while more samples want it).
    fn take_pending(&mut self) -> Option<TimedFrame> {
        let pending = self.pending.as_mut()?;
        let sample = pending.samples.pop_front()?;
        let (image, room) = if pending.samples.is_empty() {
            let last = self.pending.take().expect("pending frame");
            (last.image, last.room)
        } else {
            (pending.image.clone(), None)
        };
        Some(TimedFrame { index: sample.index, timestamp_s: sample.timestamp_s, image, room })
    }

    /// Starts passes up to the window, then reads the front one until it gives a frame or ends.
    async fn advance(&mut self) -> Result<()> {
        self.start_passes().await?;
        let Some(front) = self.running.front_mut() else {
            self.finished = true;
            return Ok(());
        };
        match front.next_step(&self.source).await? {
            Step::Hit(hit) => {
                self.pending = Some(Pending { image: hit.image, samples: hit.samples.into(), room: hit.room })
            }
            Step::Done => {
                self.running.pop_front();
            }
            Step::AfterLastFrame(mut rest) => {
                // Later samples lie after the last frame too: they all get it.
                rest.extend(self.running.iter().skip(1).flat_map(|pass| pass.unanswered().iter().copied()));
                rest.extend(self.queued.iter().flat_map(|plan| plan.samples().iter().copied()));
                self.finish();
                let (image, room) = last_frame(&self.source, rest[0]).await?;
                self.pending = Some(Pending { image, samples: rest.into(), room });
            }
        }
        Ok(())
    }

    /// Starts queued passes while the window has room: waiting for a process slot only when
    /// this call holds none, taking one only if free otherwise.
    async fn start_passes(&mut self) -> Result<()> {
        let window = self.source.budget.limits.processes_per_call.max(1);
        while self.running.len() < window && !self.queued.is_empty() {
            let slot = if self.running.is_empty() {
                self.source.budget.wait_for_slot().await?
            } else {
                match self.source.budget.try_slot() {
                    Some(slot) => slot,
                    None => break,
                }
            };
            let plan = self.queued.pop_front().expect("a queued pass");
            self.running.push_back(RunningPass::start(plan, &self.source, slot)?);
        }
        Ok(())
    }

    /// Stops every child; nothing more is read.
    fn finish(&mut self) {
        for pass in &mut self.running {
            pass.stop();
        }
        self.running.clear();
        self.queued.clear();
        self.finished = true;
    }
}
