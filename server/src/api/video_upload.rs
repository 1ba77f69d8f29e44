//! A video file uploaded in chunks (`UploadVideo`): appended to a temporary file as it arrives,
//! within the size limit, so that a file of hundreds of MB is never held in memory; then it is
//! sampled and decoded as `Media.video` is. The file is opened when the first bytes arrive, not
//! when the call opens: a call that sends nothing holds no file descriptor.

use tempfile::TempPath;
use tokio::io::AsyncWriteExt;
use tonic::{Status, Streaming};

use crate::error::GitcapError;
use crate::proto::{self, video_upload_message::Message};
use crate::service::media::MediaService;

/// Receives the chunks after the start message into a temporary file; `declared` is the size
/// the start message announced (0 = not announced).
pub(super) async fn receive(
    stream: &mut Streaming<proto::VideoUploadMessage>,
    media: &MediaService,
    declared: u64,
) -> Result<TempPath, Status> {
    media.video_decoder()?;
    if declared > media.max_video_bytes {
        return Err(media.too_large("start.size_bytes", declared).into());
    }
    let write_error = |e: std::io::Error| GitcapError::Internal(format!("writing an uploaded video to disk: {e}"));
    let mut spooled: Option<(tokio::fs::File, TempPath)> = None;
    let mut received: u64 = 0;
    while let Some(message) = stream.message().await? {
        let Some(Message::Chunk(chunk)) = message.message else {
            return Err(GitcapError::invalid("start", "only the first message may be `start`").into());
        };
        if chunk.is_empty() {
            continue;
        }
        received += chunk.len() as u64;
        if received > media.max_video_bytes {
            return Err(media.too_large("chunk", received).into());
        }
        let file = match &mut spooled {
            Some((file, _)) => file,
            none => {
                let (file, path) = media.spool_file()?.into_parts();
                &mut none.insert((tokio::fs::File::from_std(file), path)).0
            }
        };
        file.write_all(&chunk).await.map_err(write_error)?;
    }
    let Some((mut file, path)) = spooled else {
        return Err(GitcapError::invalid("chunk", "no video bytes were uploaded").into());
    };
    file.flush().await.map_err(write_error)?;
    if declared > 0 && declared != received {
        return Err(GitcapError::invalid(
            "start.size_bytes",
            format!("{declared} bytes were announced but {received} arrived"),
        )
        .into());
    }
    Ok(path)
}
