//! Reading media from disk the way the `gitcap` CLI does: images by content, videos by
//! extension (their frames extracted with the `ffmpeg` program), directories as frame sequences.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use gitcap_protocol::media_kind::{image_by_extension, image_names, video_by_extension, VideoContainer};
pub use gitcap_protocol::media_kind::{sniff_image, ImageFormat};

/// The file extensions of `kinds`, for messages ("mp4, mov, …").
fn extensions<K: Copy>(kinds: &[K], kind: impl Fn(K) -> &'static gitcap_protocol::media_kind::MediaKind) -> String {
    kinds.iter().flat_map(|k| kind(*k).extensions.iter().copied()).collect::<Vec<_>>().join(", ")
}

/// What a path holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaSource {
    /// An image file (an animated GIF too: the server splits its frames).
    Image(PathBuf, ImageFormat),
    /// A video file, by its extension.
    Video(PathBuf),
    /// A directory: its image files sorted by name are the frames of a video.
    Frames(Vec<PathBuf>),
}

fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase()
}

/// Whether a path's extension is a video's.
pub fn is_video_path(path: &Path) -> bool {
    video_by_extension(&extension(path)).is_some()
}

/// The image files of a directory (by extension), sorted by name.
pub fn list_frames(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut frames = vec![];
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && image_by_extension(&extension(&path)).is_some() {
            frames.push(path);
        }
    }
    frames.sort();
    Ok(frames)
}

/// Classifies a path: a directory of frames, an image (by content, or by an image extension,
/// leaving the server to judge a damaged file), or a video (by extension).
pub fn classify(path: &Path) -> io::Result<MediaSource> {
    let metadata = std::fs::metadata(path)?;
    if metadata.is_dir() {
        let frames = list_frames(path)?;
        if frames.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} holds no image files ({})",
                    path.display(),
                    extensions(&ImageFormat::ALL, ImageFormat::kind)
                ),
            ));
        }
        return Ok(MediaSource::Frames(frames));
    }
    let mut head = [0u8; 16];
    let n = {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut n = 0;
        while n < head.len() {
            match file.read(&mut head[n..])? {
                0 => break,
                read => n += read,
            }
        }
        n
    };
    if let Some(format) = sniff_image(&head[..n]) {
        return Ok(MediaSource::Image(path.to_path_buf(), format));
    }
    if is_video_path(path) {
        return Ok(MediaSource::Video(path.to_path_buf()));
    }
    let format = image_by_extension(&extension(path));
    match format {
        Some(format) => Ok(MediaSource::Image(path.to_path_buf(), format)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: not a supported file: expected an image ({}), a video ({}) or a directory of images",
                path.display(),
                image_names(),
                extensions(&VideoContainer::ALL, VideoContainer::kind)
            ),
        )),
    }
}

/// What extracting a video's frames can fail on.
#[derive(Debug, thiserror::Error)]
pub enum FfmpegError {
    #[error(
        "reading video files needs the `ffmpeg` program, which was not found on PATH; install it \
         (`apt-get install ffmpeg`, `dnf install ffmpeg`, `brew install ffmpeg`) or pass a directory of frames instead"
    )]
    NotInstalled,
    #[error("ffmpeg failed on {path}: {stderr}")]
    Failed { path: String, stderr: String },
    #[error("ffmpeg extracted no frames from {0}")]
    NoFrames(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Extracts `fps` frames per second of a video as JPEGs (at most 640 pixels wide) with the
/// `ffmpeg` program, and returns them in order.
pub fn extract_video_frames(path: &Path, fps: f64) -> Result<Vec<Vec<u8>>, FfmpegError> {
    let dir = tempfile::Builder::new().prefix("gitcap-frames-").tempdir()?;
    let output = match Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-i"])
        .arg(path)
        .args(["-vf", &format!("fps={fps},scale='min(640,iw)':-2"), "-q:v", "3"])
        .arg(dir.path().join("%06d.jpg"))
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(FfmpegError::NotInstalled),
        Err(e) => return Err(e.into()),
    };
    if !output.status.success() {
        return Err(FfmpegError::Failed {
            path: path.display().to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let frames = list_frames(dir.path())?.iter().map(std::fs::read).collect::<io::Result<Vec<_>>>()?;
    if frames.is_empty() {
        return Err(FfmpegError::NoFrames(path.display().to_string()));
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let png = write("b.png", b"\x89PNG\r\n\x1a\nrest");
        let jpeg_named_oddly = write("a.bin", &[0xFF, 0xD8, 0xFF, 0xE0]);
        let video = write("clip.MP4", b"not really");
        let text = write("notes.txt", b"hello");
        let damaged = write("c.jpg", b"garbage");

        assert_eq!(classify(&png).unwrap(), MediaSource::Image(png.clone(), ImageFormat::Png));
        assert_eq!(classify(&jpeg_named_oddly).unwrap(), MediaSource::Image(jpeg_named_oddly, ImageFormat::Jpeg));
        assert_eq!(classify(&video).unwrap(), MediaSource::Video(video));
        assert_eq!(classify(&damaged).unwrap(), MediaSource::Image(damaged.clone(), ImageFormat::Jpeg));
        let error = classify(&text).unwrap_err().to_string();
        assert!(error.contains("not a supported file"), "{error}");
        assert!(classify(&dir.path().join("missing.png")).is_err());

        // A directory: its image files by name, other files ignored.
        assert_eq!(classify(dir.path()).unwrap(), MediaSource::Frames(vec![png, damaged]));
        let empty = tempfile::tempdir().unwrap();
        assert!(classify(empty.path()).unwrap_err().to_string().contains("holds no image files"));
    }
}
