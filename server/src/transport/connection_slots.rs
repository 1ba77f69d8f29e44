//! `server.max_connections`: the accept loop takes a slot before it accepts a connection, and the
//! connection gives it back when it closes. At the cap, new connections wait in the kernel's
//! backlog (their clients' connect or first call waits) instead of each taking a file descriptor,
//! buffers and up to `server.max_concurrent_streams` calls.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// The slots of one listener.
#[derive(Clone)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: usize,
}

impl ConnectionSlots {
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self { slots: Arc::new(Semaphore::new(max)), max }
    }

    /// A free slot, waiting for a connection to close when there is none.
    pub async fn take(&self) -> OwnedSemaphorePermit {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return slot;
        }
        warn_at_cap(self.max);
        self.slots.clone().acquire_owned().await.expect("the slots are never closed")
    }
}

/// Says the server is at its cap, once a minute at most (at the cap, every accept waits).
fn warn_at_cap(max: usize) {
    static LAST_WARNED: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST_WARNED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if last.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(max, "at server.max_connections: new connections wait until one closes");
    }
}

/// A connection that holds its slot until it is dropped.
pub struct Slotted<C> {
    connection: C,
    _slot: OwnedSemaphorePermit,
}

impl<C> Slotted<C> {
    pub fn new(connection: C, slot: OwnedSemaphorePermit) -> Self {
        Self { connection, _slot: slot }
    }
}

impl<C: Connected> Connected for Slotted<C> {
    type ConnectInfo = C::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.connection.connect_info()
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Slotted<C> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.connection).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Slotted<C> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.connection).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.connection).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.connection.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.connection).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.connection).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_comes_back_when_its_connection_is_dropped() {
        let slots = ConnectionSlots::new(1);
        let first = Slotted::new((), slots.take().await);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), slots.take()).await;
        assert!(waiting.is_err(), "a second slot out of one");
        drop(first);
        let _second = tokio::time::timeout(std::time::Duration::from_secs(5), slots.take()).await.unwrap();
    }
}
