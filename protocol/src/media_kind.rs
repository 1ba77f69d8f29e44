//! The media gitcap reads, in one table: each image format and video container with its display
//! name, file extensions, MIME types and (for what ffmpeg reads) demuxer names; and recognising
//! them by their first bytes. The server routes, accepts and explains bad input with it, the
//! OpenAI door checks data URIs' MIME types against it, and the `gitcap` CLI tells images from
//! videos on disk with it: a kind added here reaches every one of them.

/// How one kind of media is recognised and named everywhere.
#[derive(Debug, PartialEq, Eq)]
pub struct MediaKind {
    /// As error messages and docs name it.
    pub name: &'static str,
    /// File extensions, lower case, without the dot.
    pub extensions: &'static [&'static str],
    pub mime_types: &'static [&'static str],
    /// ffmpeg's demuxer names (its `-format_whitelist`) for the files of this kind it may read.
    pub demuxers: &'static [&'static str],
}

/// An image format the server decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
    WebP,
    Gif,
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 4] = [Self::Jpeg, Self::Png, Self::WebP, Self::Gif];

    pub fn kind(self) -> &'static MediaKind {
        match self {
            Self::Jpeg => &MediaKind {
                name: "JPEG",
                extensions: &["jpg", "jpeg"],
                mime_types: &["image/jpeg", "image/jpg"],
                demuxers: &[],
            },
            Self::Png => &MediaKind { name: "PNG", extensions: &["png"], mime_types: &["image/png"], demuxers: &[] },
            Self::WebP => {
                &MediaKind { name: "WebP", extensions: &["webp"], mime_types: &["image/webp"], demuxers: &[] }
            }
            // An animated GIF's frames may also come from a video decoder.
            Self::Gif => {
                &MediaKind { name: "GIF", extensions: &["gif"], mime_types: &["image/gif"], demuxers: &["gif"] }
            }
        }
    }

    pub fn name(self) -> &'static str {
        self.kind().name
    }
}

/// A video container the server's video decoder reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VideoContainer {
    /// ISO base media: MP4, MOV, M4V, 3GP.
    Mp4,
    /// Matroska and WebM.
    Matroska,
    Avi,
}

impl VideoContainer {
    pub const ALL: [VideoContainer; 3] = [Self::Mp4, Self::Matroska, Self::Avi];

    pub fn kind(self) -> &'static MediaKind {
        match self {
            Self::Mp4 => &MediaKind {
                name: "MP4/MOV",
                extensions: &["mp4", "mov", "m4v", "3gp"],
                mime_types: &["video/mp4", "video/quicktime", "video/3gpp"],
                demuxers: &["mov", "mp4"],
            },
            Self::Matroska => &MediaKind {
                name: "Matroska/WebM",
                extensions: &["mkv", "webm"],
                mime_types: &["video/x-matroska", "video/webm"],
                demuxers: &["matroska", "webm"],
            },
            Self::Avi => &MediaKind {
                name: "AVI",
                extensions: &["avi"],
                mime_types: &["video/x-msvideo", "video/avi"],
                demuxers: &["avi"],
            },
        }
    }

    pub fn name(self) -> &'static str {
        self.kind().name
    }
}

/// Every kind of image, then every video container.
pub fn all_kinds() -> impl Iterator<Item = &'static MediaKind> {
    ImageFormat::ALL.into_iter().map(ImageFormat::kind).chain(VideoContainer::ALL.into_iter().map(VideoContainer::kind))
}

/// ffmpeg's demuxers for every kind it may read (its `-format_whitelist`).
pub fn accepted_demuxers() -> Vec<&'static str> {
    all_kinds().flat_map(|kind| kind.demuxers.iter().copied()).collect()
}

/// The image formats' names, then the video containers': "JPEG, PNG, WebP, GIF" and
/// "MP4/MOV, Matroska/WebM, AVI", for messages.
pub fn image_names() -> String {
    ImageFormat::ALL.map(ImageFormat::name).join(", ")
}

pub fn video_names() -> String {
    VideoContainer::ALL.map(VideoContainer::name).join(", ")
}

/// The image format a file extension names (any case).
pub fn image_by_extension(extension: &str) -> Option<ImageFormat> {
    let extension = extension.to_ascii_lowercase();
    ImageFormat::ALL.into_iter().find(|format| format.kind().extensions.contains(&extension.as_str()))
}

/// The video container a file extension names (any case).
pub fn video_by_extension(extension: &str) -> Option<VideoContainer> {
    let extension = extension.to_ascii_lowercase();
    VideoContainer::ALL.into_iter().find(|container| container.kind().extensions.contains(&extension.as_str()))
}

/// Whether a MIME type (`image/png`, any case, parameters ignored) is one of the table's.
pub fn is_known_mime(mime: &str) -> bool {
    let mime = mime.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    all_kinds().any(|kind| kind.mime_types.contains(&mime.as_str()))
}

/// The image format of `bytes`, by content.
pub fn sniff_image(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

/// HEIF/AVIF brands: ISO media files that hold still images, not video.
const IMAGE_BRANDS: [&[u8; 4]; 7] = [b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1", b"hevc"];

/// The video container of `bytes`, by content (16 bytes are enough).
pub fn sniff_video(bytes: &[u8]) -> Option<VideoContainer> {
    let box_type = bytes.get(4..8);
    if box_type == Some(b"ftyp") {
        let brand = bytes.get(8..12)?;
        return (!IMAGE_BRANDS.iter().any(|b| &b[..] == brand)).then_some(VideoContainer::Mp4);
    }
    // QuickTime files from before `ftyp` start with one of these atoms.
    if matches!(box_type, Some(b"moov" | b"mdat" | b"wide" | b"free" | b"skip" | b"pnot")) {
        return Some(VideoContainer::Mp4);
    }
    if bytes.starts_with(b"\x1aE\xdf\xa3") {
        return Some(VideoContainer::Matroska);
    }
    if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"AVI " {
        return Some(VideoContainer::Avi);
    }
    None
}

/// Whether `bytes` is an ISO media file holding a still image (HEIC, AVIF), which gitcap does
/// not decode.
pub fn is_heif_image(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(b"ftyp")
        && bytes.get(8..12).is_some_and(|brand| IMAGE_BRANDS.iter().any(|b| &b[..] == brand))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_recognised_by_content() {
        assert_eq!(sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(ImageFormat::Jpeg));
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\n...."), Some(ImageFormat::Png));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some(ImageFormat::WebP));
        assert_eq!(sniff_image(b"GIF89a"), Some(ImageFormat::Gif));
        assert_eq!(sniff_image(b"hello"), None);
        assert_eq!(sniff_image(b""), None);
    }

    #[test]
    fn the_table_names_each_kind_once() {
        let mut extensions: Vec<&str> = all_kinds().flat_map(|k| k.extensions.iter().copied()).collect();
        let count = extensions.len();
        extensions.sort();
        extensions.dedup();
        assert_eq!(extensions.len(), count, "an extension belongs to two kinds");
        assert_eq!(image_by_extension("JPG"), Some(ImageFormat::Jpeg));
        assert_eq!(video_by_extension("webm"), Some(VideoContainer::Matroska));
        assert_eq!(video_by_extension("mpg"), None, "MPEG-PS is not read by the server");
        assert!(is_known_mime("video/mp4; codecs=avc1") && !is_known_mime("application/pdf"));
        assert_eq!(accepted_demuxers(), ["gif", "mov", "mp4", "matroska", "webm", "avi"]);
        assert_eq!(video_names(), "MP4/MOV, Matroska/WebM, AVI");
    }

    #[test]
    fn videos_are_recognised_by_content() {
        assert_eq!(sniff_video(b"\0\0\0\x20ftypisom\0\0\x02\0"), Some(VideoContainer::Mp4));
        assert_eq!(sniff_video(b"\0\0\0\x14ftypqt  \0\0\0\0"), Some(VideoContainer::Mp4));
        assert_eq!(sniff_video(b"\0\0\0\x08wide\0\0\0\0mdat"), Some(VideoContainer::Mp4));
        assert_eq!(sniff_video(b"\x1aE\xdf\xa3\x9fB\x86\x81"), Some(VideoContainer::Matroska));
        assert_eq!(sniff_video(b"RIFF\0\0\0\0AVI LIST"), Some(VideoContainer::Avi));
        assert_eq!(sniff_video(b"\0\0\0\x1cftypheic\0\0\0\0"), None);
        assert!(is_heif_image(b"\0\0\0\x1cftypavif\0\0\0\0"));
        assert_eq!(sniff_video(b"RIFF\0\0\0\0WEBPVP8 "), None);
        assert_eq!(sniff_video(b"ftyp"), None);
    }
}
