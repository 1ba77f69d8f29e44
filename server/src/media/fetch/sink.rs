//! Where a response body goes while it streams in: a temporary file (videos may be hundreds of
//! megabytes) or, for small media such as images, memory. Either way the body is held once.

use std::io::{self, Seek, Write};
use std::path::Path;
use std::sync::Arc;

use tempfile::NamedTempFile;

/// File writes are batched to this size and done on the blocking pool, off the async workers.
const FILE_BATCH_BYTES: usize = 1 << 20;

pub(super) enum Sink {
    File(FileSink),
    Memory(Vec<u8>),
}

impl Sink {
    /// A new, empty temporary file in `dir` (`None`: the system's temporary directory).
    pub fn temp_file(dir: Option<&Path>) -> io::Result<Self> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("gitcap-url-");
        let file = match dir {
            Some(dir) => builder.tempfile_in(dir)?,
            None => builder.tempfile()?,
        };
        let writer = Arc::new(file.as_file().try_clone()?);
        Ok(Self::File(FileSink { file, writer, pending: Vec::new() }))
    }

    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        match self {
            Self::File(sink) => sink.write(chunk).await,
            Self::Memory(bytes) => {
                bytes.extend_from_slice(chunk);
                Ok(())
            }
        }
    }
}

pub(super) struct FileSink {
    file: NamedTempFile,
    /// A second handle on the same open file, shared with the blocking writes.
    writer: Arc<std::fs::File>,
    pending: Vec<u8>,
}

impl FileSink {
    async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.pending.extend_from_slice(chunk);
        if self.pending.len() >= FILE_BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let writer = self.writer.clone();
        let mut batch = std::mem::take(&mut self.pending);
        self.pending = tokio::task::spawn_blocking(move || {
            (&*writer).write_all(&batch)?;
            batch.clear();
            Ok::<_, io::Error>(batch)
        })
        .await
        .map_err(io::Error::other)??;
        Ok(())
    }

    /// The file with everything written, positioned at its start for reading.
    pub async fn finish(mut self) -> io::Result<NamedTempFile> {
        self.flush().await?;
        drop(self.writer);
        self.file.as_file_mut().rewind()?;
        Ok(self.file)
    }
}
