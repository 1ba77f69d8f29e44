//! Recognising media by its first bytes: the image formats the server decodes itself and the
//! video containers it hands to its video decoder. The server routes and explains bad input
//! with it; the `gitcap` CLI uses it to tell images from videos on disk.

/// An image format the server decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
    WebP,
    Gif,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "JPEG",
            Self::Png => "PNG",
            Self::WebP => "WebP",
            Self::Gif => "GIF",
        }
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
    pub fn name(self) -> &'static str {
        match self {
            Self::Mp4 => "MP4/MOV",
            Self::Matroska => "Matroska/WebM",
            Self::Avi => "AVI",
        }
    }
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
