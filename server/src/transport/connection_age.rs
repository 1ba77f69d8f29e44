//! `server.max_connection_age_secs`: each connection is asked to go away (HTTP/2 GOAWAY) once it
//! is that old, so that long-lived clients reconnect, resolve the name again and spread onto
//! replicas added since; calls already running get `max_connection_age_grace_secs` to finish,
//! after which the connection is closed whatever it is doing.
//!
//! The GOAWAY is tonic's `Server::max_connection_age`; the grace is enforced here, by the
//! connection itself, because tonic 0.14 given both an age and a grace sends no GOAWAY at all:
//! it drops the connection, calls and all, at age + grace.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted connection that fails every read and write once its `deadline` (age + grace) has
/// passed, which makes the server drop it.
pub struct AgedConnection {
    stream: TcpStream,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl AgedConnection {
    /// `stream`, to be closed `limit` after now (`None`: never).
    pub fn new(stream: TcpStream, limit: Option<Duration>) -> Self {
        Self { stream, deadline: limit.map(|limit| Box::pin(tokio::time::sleep(limit))) }
    }

    /// An error once the deadline has passed; otherwise wakes the task when it does.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let deadline = self.deadline.as_mut()?;
        deadline.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "connection closed: past server.max_connection_age_secs and its grace",
            )
        })
    }
}

impl Connected for AgedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for AgedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(error) = self.expired(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(error) = self.expired(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(error) = self.expired(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_connection_fails_once_its_time_is_up_and_not_before() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut aged = AgedConnection::new(accepted, Some(Duration::from_millis(200)));
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        aged.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // A read waiting for data ends when the time is up, not when data comes.
        let started = std::time::Instant::now();
        let error = aged.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
        assert_eq!(aged.write(b"x").await.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
