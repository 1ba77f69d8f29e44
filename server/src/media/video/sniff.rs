//! Which video container a file is, from its leading bytes: for routing an upload and for error
//! messages that name what was sent. Whether ffmpeg is allowed to read it is
//! [`super::accepted_demuxers`]' business, not this one's.

use gitcap_protocol::media_kind::{sniff_image, sniff_video, ImageFormat};

/// How many leading bytes [`sniff_container`] looks at, at most.
pub const SNIFF_BYTES: usize = 512;

/// The container the leading bytes of a file announce, by a short human name ("MP4/MOV",
/// "Matroska/WebM", "AVI", "GIF", "MPEG-TS", "MPEG-PS", "FLV", "ASF/WMV", "Ogg", "RealMedia",
/// "HLS playlist", "ffconcat list", "DASH manifest"), or `None`.
pub fn sniff_container(bytes: &[u8]) -> Option<&'static str> {
    let head = &bytes[..bytes.len().min(SNIFF_BYTES)];
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    // What the decoder reads is named by the one media table (gitcap_protocol::media_kind);
    // what it refuses, here.
    if let Some(container) = sniff_video(head) {
        Some(container.name())
    } else if sniff_image(head) == Some(ImageFormat::Gif) {
        Some(ImageFormat::Gif.name())
    } else if is_mpeg_ts(head) {
        Some("MPEG-TS")
    } else if at(0, &[0x00, 0x00, 0x01, 0xBA]) {
        Some("MPEG-PS")
    } else if at(0, b"FLV\x01") {
        Some("FLV")
    } else if at(0, &[0x30, 0x26, 0xB2, 0x75, 0x8E, 0x66, 0xCF, 0x11]) {
        Some("ASF/WMV")
    } else if at(0, b"OggS") {
        Some("Ogg")
    } else if at(0, b".RMF") {
        Some("RealMedia")
    } else {
        sniff_text(head)
    }
}

/// Playlists and lists that point at other files: never videos themselves.
fn sniff_text(head: &[u8]) -> Option<&'static str> {
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = text.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(text.len());
    let text = &text[start..];
    if text.starts_with(b"#EXTM3U") {
        Some("HLS playlist")
    } else if text.starts_with(b"ffconcat") {
        Some("ffconcat list")
    } else if text.starts_with(b"<?xml") && contains(text, b"<MPD") {
        Some("DASH manifest")
    } else {
        None
    }
}

/// MPEG-TS: 188-byte packets, each starting with the sync byte 0x47.
fn is_mpeg_ts(head: &[u8]) -> bool {
    head.len() > 2 * 188 && [0, 188, 376].iter().all(|&offset| head[offset] == 0x47)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_containers_by_their_magic() {
        assert_eq!(sniff_container(b"\0\0\0\x20ftypisom\0\0\x02\0"), Some("MP4/MOV"));
        assert_eq!(sniff_container(b"\0\0\0\x14ftypqt  \0\0\0\0"), Some("MP4/MOV"));
        assert_eq!(sniff_container(b"\0\0\0\x08wide\0\0\0\x10mdat"), Some("MP4/MOV"));
        assert_eq!(sniff_container(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm"), Some("Matroska/WebM"));
        assert_eq!(sniff_container(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska"), Some("Matroska/WebM"));
        assert_eq!(sniff_container(b"RIFF\x10\0\0\0AVI LIST"), Some("AVI"));
        assert_eq!(sniff_container(b"GIF89a\x01\0\x01\0"), Some("GIF"));
        assert_eq!(sniff_container(b"\0\0\x01\xba\x44"), Some("MPEG-PS"));
        assert_eq!(sniff_container(b"FLV\x01\x05"), Some("FLV"));
        assert_eq!(sniff_container(b"OggS\0\x02"), Some("Ogg"));
        let mut ts = vec![0u8; 600];
        for offset in [0, 188, 376] {
            ts[offset] = 0x47;
        }
        assert_eq!(sniff_container(&ts), Some("MPEG-TS"));
    }

    #[test]
    fn names_lists_that_point_at_other_files() {
        assert_eq!(sniff_container(b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n"), Some("HLS playlist"));
        assert_eq!(sniff_container(b"\xef\xbb\xbf\n  #EXTM3U\n"), Some("HLS playlist"));
        assert_eq!(sniff_container(b"ffconcat version 1.0\nfile /etc/passwd\n"), Some("ffconcat list"));
        assert_eq!(sniff_container(b"<?xml version=\"1.0\"?>\n<MPD xmlns=\"urn:mpeg:dash\">"), Some("DASH manifest"));
    }

    #[test]
    fn anything_else_is_unknown() {
        assert_eq!(sniff_container(b""), None);
        assert_eq!(sniff_container(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), None);
        assert_eq!(sniff_container(b"\xff\xd8\xff\xe0"), None);
        assert_eq!(sniff_container(b"RIFF\x10\0\0\0WEBPVP8 "), None);
        assert_eq!(sniff_container(b"ftyp"), None);
        assert_eq!(sniff_container(&[0x47; 100]), None);
    }
}
