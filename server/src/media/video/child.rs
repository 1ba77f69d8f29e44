//! Running `ffmpeg` and `ffprobe` as isolated, bounded children.
//!
//! Each child gets, before it executes (`pre_exec`): `RLIMIT_CPU` (soft = hard, so the kernel
//! sends `SIGKILL` rather than the `SIGXCPU` ffmpeg would catch and exit from gracefully),
//! `RLIMIT_AS`, `RLIMIT_FSIZE = 0` (it may not write a file) and `RLIMIT_CORE = 0`, and its own
//! process group; an empty environment but `LD_LIBRARY_PATH` (no `FFREPORT` log files, no
//! proxies), `/` as its working directory, stdin from `/dev/null`. Its stderr is drained into a
//! bounded tail for error messages. It is killed when dropped (a dropped request kills its
//! decoder), and when a read from it waits past the call's wall-clock budget. A semaphore bounds
//! the children alive at once: a child's slot is given back only once the child has been reaped,
//! so a killed child that has not exited yet still counts.
//!
//! A child may also get a side channel: a pipe on its descriptor 3 (`pipe:3` to ffmpeg), read
//! line by line by a task of its own so that the child never blocks on it.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{ChildStdout, Command};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::VideoLimits;
use crate::error::{GitcapError, Result};
use crate::media::budget::{MediaBudget, OwnedReservation};

/// The most stderr kept for an error message (its end, where ffmpeg says what went wrong).
const STDERR_TAIL_BYTES: usize = 8 << 10;
/// The longest side-channel line accepted (framecrc lines are about 70 bytes).
const SIDE_LINE_BYTES: usize = 1 << 10;

/// What a call may spend on its children, and what it is reported against.
#[derive(Clone)]
pub(crate) struct Budget {
    pub limits: Arc<VideoLimits>,
    pub slots: Arc<Semaphore>,
    /// The request field errors are reported on.
    pub field: Arc<str>,
    /// The file's path, replaced by "the file" in ffmpeg's messages.
    pub file: Arc<Path>,
    /// The media budget decoded frames are reserved in, if any.
    pub room: Option<MediaBudget>,
}

impl Budget {
    /// A process slot, waiting at most `wall_seconds` for one. A call waits only while it holds
    /// no other slot, so that calls cannot deadlock on each other's slots.
    pub async fn wait_for_slot(&self) -> Result<OwnedSemaphorePermit> {
        let limits = &self.limits;
        let wall = Duration::from_secs_f64(limits.wall_seconds.max(0.0));
        tokio::time::timeout(wall, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                GitcapError::ResourceExhausted(format!(
                    "all {} video decoding processes stayed busy for {} s; retry later",
                    limits.max_processes, limits.wall_seconds
                ))
            })?
            .map_err(|_| GitcapError::Internal("the video decoding semaphore was closed".into()))
    }

    /// Room in the media budget for `bytes` of a decoded frame. Called only while the caller
    /// holds the slot of the child writing the frame (never the other way round: see
    /// crate::media::budget).
    pub async fn frame_room(&self, bytes: u64) -> Result<Option<OwnedReservation>> {
        match &self.room {
            Some(budget) => Ok(Some(budget.reserve_owned(bytes, &self.field).await?)),
            None => Ok(None),
        }
    }

    /// A process slot if one is free now.
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    pub fn media_error(&self, message: impl Into<String>) -> GitcapError {
        GitcapError::media(&*self.field, message)
    }
}

/// How much of a buffer [`Child::read_frame`] filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filled {
    Whole,
    /// Stdout ended before the first byte.
    Ended,
    /// Stdout ended after this many bytes.
    Partly(usize),
}

/// A running child.
pub(crate) struct Child {
    /// Taken by `Drop`, which reaps it before giving its slot back.
    child: Option<tokio::process::Child>,
    stdout: BufReader<ChildStdout>,
    side: Option<mpsc::UnboundedReceiver<String>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    clock: WaitClock,
    what: &'static str,
    budget: Budget,
    slot: Option<OwnedSemaphorePermit>,
}

impl Child {
    /// Starts `program args` in `slot` (see [`Budget::wait_for_slot`]). `what` names the child
    /// in error messages ("the video decoder").
    pub fn spawn(
        program: &Path,
        args: Vec<OsString>,
        side_channel: bool,
        what: &'static str,
        budget: &Budget,
        slot: OwnedSemaphorePermit,
    ) -> Result<Self> {
        let limits = &budget.limits;
        let wall = Duration::from_secs_f64(limits.wall_seconds.max(0.0));
        let side_pipe = if side_channel { Some(pipe().map_err(spawn_error)?) } else { None };
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("AV_LOG_FORCE_NOCOLOR", "1")
            // glibc reserves 64 MiB of address space per thread arena; a few arenas keep the
            // children well inside RLIMIT_AS without costing them speed.
            .env("MALLOC_ARENA_MAX", "2")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let rlimits = ChildRlimits {
            cpu_seconds: limits.cpu_seconds.max(1),
            memory_bytes: limits.memory_bytes,
            side_fd: side_pipe.as_ref().map(|(_, write)| write.as_raw_fd()),
        };
        // SAFETY: the closure only calls async-signal-safe functions (setrlimit, dup2, fcntl)
        // and allocates nothing.
        unsafe {
            command.pre_exec(move || rlimits.apply());
        }
        // An ffmpeg installed outside the system's library paths may need this one variable.
        if let Some(library_path) = std::env::var_os("LD_LIBRARY_PATH") {
            command.env("LD_LIBRARY_PATH", library_path);
        }
        let mut child = command.spawn().map_err(spawn_error)?;
        let side = match side_pipe {
            Some((read, write)) => {
                // Our copy of the write end must close, or the reader never sees the end.
                drop(write);
                Some(read_lines(read).map_err(spawn_error)?)
            }
            None => None,
        };
        let stdout = child.stdout.take().ok_or_else(|| GitcapError::Internal("child without stdout".into()))?;
        let stderr = child.stderr.take().map(|stderr| tokio::spawn(stderr_tail(stderr)));
        Ok(Self {
            child: Some(child),
            stdout: BufReader::with_capacity(64 << 10, stdout),
            side,
            stderr,
            clock: WaitClock { left: wall },
            what,
            budget: budget.clone(),
            slot: Some(slot),
        })
    }

    /// Fills `buf` from stdout, unless stdout ends first.
    pub async fn read_frame(&mut self, buf: &mut [u8]) -> Result<Filled> {
        let mut filled = 0;
        while filled < buf.len() {
            let read = self.clock.run(self.stdout.read(&mut buf[filled..])).await;
            let n = self.checked(read)?.map_err(|e| self.read_error(e))?;
            if n == 0 {
                return Ok(if filled == 0 { Filled::Ended } else { Filled::Partly(filled) });
            }
            filled += n;
        }
        Ok(Filled::Whole)
    }

    /// The next line of stdout, at most `max_bytes` long; `None` at its end.
    pub async fn stdout_line(&mut self, max_bytes: usize) -> Result<Option<String>> {
        let mut line = Vec::new();
        let mut limited = (&mut self.stdout).take(max_bytes as u64 + 1);
        let read = self.clock.run(limited.read_until(b'\n', &mut line)).await;
        self.checked(read)?.map_err(|e| self.read_error(e))?;
        if line.len() > max_bytes {
            return Err(GitcapError::Internal(format!("{} wrote a line longer than {max_bytes} bytes", self.what)));
        }
        Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).trim_end().to_string()))
    }

    /// The next line of the side channel; `None` once the child closed it (or has none).
    pub async fn side_line(&mut self) -> Result<Option<String>> {
        let Some(side) = self.side.as_mut() else { return Ok(None) };
        let line = self.clock.run(side.recv()).await;
        self.checked(line)
    }

    /// Waits for the child to exit; an error saying why if it failed.
    pub async fn finish(self) -> Result<()> {
        let budget = self.budget.clone();
        match self.finish_plainly().await? {
            None => Ok(()),
            Some(said) => Err(budget.media_error(format!("the file could not be decoded: {said}"))),
        }
    }

    /// Waits for the child to exit: `None` if it succeeded, what it said on stderr if it failed
    /// on its own (an exit status), an error if a limit stopped it or it crashed.
    pub async fn finish_plainly(mut self) -> Result<Option<String>> {
        let child = self.child.as_mut().expect("a running child");
        let status = self.clock.run(child.wait()).await;
        let status = self.checked(status)?;
        let status = status.map_err(|e| GitcapError::Internal(format!("waiting for {}: {e}", self.what)))?;
        if status.success() {
            return Ok(None);
        }
        let stderr = match self.stderr.take() {
            Some(task) => task.await.unwrap_or_default(),
            None => Vec::new(),
        };
        let said = ffmpeg_message(&stderr, &self.budget.file);
        match self.limit_failure(status, &said) {
            Some(error) => Err(error),
            None if said.is_empty() => Ok(Some(format!("exit status {}", status.code().unwrap_or(-1)))),
            None => Ok(Some(said)),
        }
    }

    /// Kills the child now (it is also killed when dropped).
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }

    /// The value, or the wall-clock error after killing the child.
    fn checked<T>(&mut self, waited: Option<T>) -> Result<T> {
        waited.ok_or_else(|| {
            self.kill();
            self.budget.media_error(format!(
                "{} ran past its time limit of {} s and was stopped",
                self.what, self.budget.limits.wall_seconds
            ))
        })
    }

    fn read_error(&self, error: io::Error) -> GitcapError {
        GitcapError::Internal(format!("reading from {}: {error}", self.what))
    }

    /// The error for a child stopped by a limit, killed, or crashed; `None` for one that exited
    /// with a status of its own (bad input, said on stderr).
    fn limit_failure(&self, status: ExitStatus, said: &str) -> Option<GitcapError> {
        let limits = &self.budget.limits;
        let out_of_memory = ["Cannot allocate memory", "failed to map segment", "out of memory", "bad_alloc"]
            .iter()
            .any(|needle| said.contains(needle));
        let message = match status.signal() {
            Some(libc::SIGKILL) | Some(libc::SIGXCPU) => format!(
                "{} was stopped after using its {} s of CPU time; the video is too costly to decode",
                self.what, limits.cpu_seconds
            ),
            Some(libc::SIGXFSZ) => format!("{} tried to write a file and was stopped", self.what),
            _ if out_of_memory => format!(
                "{} ran out of its {} MiB memory limit; the video is too costly to decode",
                self.what,
                limits.memory_bytes >> 20
            ),
            Some(signal) => format!("{} crashed (signal {signal}) reading the file", self.what),
            None => return None,
        };
        Some(self.budget.media_error(message))
    }
}

impl Drop for Child {
    /// Kills the child if it still runs, and gives its slot back only once it is reaped: until
    /// then it is still a process, and the limit on children alive at once counts it.
    fn drop(&mut self) {
        let (Some(mut child), slot) = (self.child.take(), self.slot.take()) else { return };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = child.start_kill();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = child.wait().await;
                    drop(slot);
                });
            }
            // No runtime to wait on: kill_on_drop and tokio's orphan reaping take over.
            Err(_) => drop((child, slot)),
        }
    }
}

/// The wall-clock time a call may still spend waiting on a child.
struct WaitClock {
    left: Duration,
}

impl WaitClock {
    /// `waited`'s value, or `None` if the time ran out first; only time spent here counts.
    async fn run<T>(&mut self, waited: impl std::future::Future<Output = T>) -> Option<T> {
        let started = Instant::now();
        let value = tokio::time::timeout(self.left, waited).await.ok();
        self.left = self.left.saturating_sub(started.elapsed());
        value
    }
}

/// What the child is limited to, applied between fork and exec.
#[derive(Clone, Copy)]
struct ChildRlimits {
    cpu_seconds: u64,
    memory_bytes: u64,
    side_fd: Option<RawFd>,
}

impl ChildRlimits {
    fn apply(self) -> io::Result<()> {
        set_rlimit(libc::RLIMIT_CPU, self.cpu_seconds)?;
        set_rlimit(libc::RLIMIT_AS, self.memory_bytes)?;
        set_rlimit(libc::RLIMIT_FSIZE, 0)?;
        set_rlimit(libc::RLIMIT_CORE, 0)?;
        if let Some(fd) = self.side_fd {
            // dup2 onto itself would keep close-on-exec set; clear it instead.
            // SAFETY: plain descriptor calls on descriptors this process owns.
            let result =
                if fd == 3 { unsafe { libc::fcntl(3, libc::F_SETFD, 0) } } else { unsafe { libc::dup2(fd, 3) } };
            if result < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit { rlim_cur: value as libc::rlim_t, rlim_max: value as libc::rlim_t };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pipe whose two ends close on exec (the child gets the write end as descriptor 3 only).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads the side channel's lines on a task of its own, so the child never blocks writing them.
fn read_lines(read: OwnedFd) -> io::Result<mpsc::UnboundedReceiver<String>> {
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    let (sender, lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(receiver);
        loop {
            let mut line = Vec::new();
            match (&mut reader).take(SIDE_LINE_BYTES as u64).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    if sender.send(text).is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok(lines)
}

/// Drains stderr to its end, keeping the last [`STDERR_TAIL_BYTES`].
async fn stderr_tail(mut stderr: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stderr.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&chunk[..n]);
        if tail.len() > 2 * STDERR_TAIL_BYTES {
            tail.drain(..tail.len() - STDERR_TAIL_BYTES);
        }
    }
    if tail.len() > STDERR_TAIL_BYTES {
        tail.drain(..tail.len() - STDERR_TAIL_BYTES);
    }
    tail
}

/// ffmpeg's last few distinct error lines, without `[demuxer @ 0x…]` prefixes and with the
/// file's path replaced, at most 300 characters.
pub(crate) fn ffmpeg_message(stderr: &[u8], file: &Path) -> String {
    let text = String::from_utf8_lossy(stderr);
    let path = file.display().to_string();
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = strip_context(line.trim());
        let line = line.replace(&format!("file:{path}"), "the file").replace(&path, "the file");
        if !line.is_empty() && !lines.contains(&line) {
            lines.push(line);
        }
    }
    let start = lines.len().saturating_sub(3);
    let mut message = lines[start..].join("; ");
    if message.len() > 300 {
        let cut = (0..=300).rev().find(|&i| message.is_char_boundary(i)).unwrap_or(0);
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// `[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d0c0a0] moov atom not found` → `moov atom not found`.
fn strip_context(line: &str) -> &str {
    match (line.starts_with('['), line.find("] ")) {
        (true, Some(end)) if line[..end].contains(" @ ") => &line[end + 2..],
        _ => line,
    }
}

fn spawn_error(error: io::Error) -> GitcapError {
    GitcapError::Internal(format!("could not start a video decoding process: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ffmpeg_messages_lose_their_context_and_paths() {
        let stderr = b"[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d0c0a0] moov atom not found\n\
            file:/tmp/upload-1/video.mp4: Invalid data found when processing input\n\
            [mov,mp4,m4a,3gp,3g2,mj2 @ 0x55d0c0a0] moov atom not found\n";
        assert_eq!(
            ffmpeg_message(stderr, Path::new("/tmp/upload-1/video.mp4")),
            "moov atom not found; the file: Invalid data found when processing input"
        );
        assert_eq!(ffmpeg_message(b"", Path::new("/x")), "");
        let long = "é".repeat(400);
        assert!(ffmpeg_message(long.as_bytes(), Path::new("/x")).len() <= 304);
    }

    #[test]
    fn keeps_brackets_that_are_not_context() {
        assert_eq!(strip_context("[error] something"), "[error] something");
        assert_eq!(strip_context("[h264 @ 0x1] co located POCs unavailable"), "co located POCs unavailable");
    }
}
