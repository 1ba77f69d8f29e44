//! A deterministic corpus of malformed requests (seeded RNG), each with the status the API
//! documents for it: broken and hostile media, impossible generation options, invalid UTF-8 and
//! broken protobuf, messages over the size limit, unknown models.

#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::Code;

use super::fixtures::fixtures;
use super::load::upload_messages;
use super::raw_grpc::wire;
use gitcap_client::proto::{
    media::Kind, upload_message, CaptionRequest, FrameChunk, Frames, GenerationOptions, Media, RawImage,
    ScoreLabelsRequest, UploadMessage, UploadStart,
};
use prost::Message;

/// How a case reaches the server.
pub enum Call {
    Caption(CaptionRequest),
    CaptionStream(CaptionRequest),
    Upload(Vec<UploadMessage>),
    ScoreLabels(ScoreLabelsRequest),
    /// Hand-built message bytes for a unary method (`/gitcap.v1.Captioner/…`).
    Raw(&'static str, Vec<u8>),
}

pub struct BadCase {
    pub category: &'static str,
    pub call: Call,
    pub code: Code,
    /// For INVALID_ARGUMENT: how the BadRequest field violation's name starts.
    pub field: Option<String>,
    /// Words the message must contain.
    pub needle: Option<&'static str>,
}

/// Limits the corpus is built against (the server must run with them).
pub struct CorpusLimits {
    pub max_message_bytes: usize,
    pub max_beams: u32,
    pub max_new_tokens: u32,
    /// The image model's `max_position_embeddings`.
    pub max_positions: u32,
    pub max_frames: usize,
    pub max_pixels: u64,
}

pub const CAPTION: &str = "/gitcap.v1.Captioner/Caption";
pub const SCORE_LABELS: &str = "/gitcap.v1.Captioner/ScoreLabels";

fn media(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("media").join(name)).unwrap()
}

fn caption(kind: Kind) -> CaptionRequest {
    CaptionRequest {
        media: Some(Media { kind: Some(kind), ..Default::default() }),
        options: Some(GenerationOptions { max_new_tokens: Some(2), ..Default::default() }),
        ..Default::default()
    }
}

fn invalid(category: &'static str, call: Call, field: &str) -> BadCase {
    BadCase { category, call, code: Code::InvalidArgument, field: Some(field.to_string()), needle: None }
}

/// `n` cases of each category (a few categories, expensive ones, have fewer), in a fixed order.
pub fn corpus(seed: u64, n: usize, limits: &CorpusLimits) -> Vec<BadCase> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rng = &mut rng;
    let jpegs = [media("photo.jpg"), media("portrait_exif.jpg")];
    let pngs = [media("shapes.png"), media("gray.png"), media("big.png")];
    let webp = media("small.webp");
    let gif = media("anim.gif");
    let tiny_png = png_of(1, 1);
    let mut cases = vec![];

    for i in 0..n {
        // Truncated images: every cut of a JPEG loses its end-of-image marker; a PNG is cut
        // before its image data ends; GIF and WebP anywhere before their last byte.
        let (name, bytes) = match i % 4 {
            0 => ("truncated_jpeg", {
                let j = &jpegs[i / 4 % 2];
                j[..rng.random_range(0..j.len())].to_vec()
            }),
            1 => ("truncated_png", {
                let p = &pngs[i / 4 % 3];
                p[..rng.random_range(0..png_image_data_end(p))].to_vec()
            }),
            2 => ("truncated_webp", webp[..rng.random_range(0..webp.len())].to_vec()),
            _ => ("truncated_gif", gif[..rng.random_range(0..gif.len() - 1)].to_vec()),
        };
        let field = if rng.random_bool(0.8) { "media.image" } else { "media.frames[1]" };
        let kind = if field == "media.image" {
            Kind::Image(bytes)
        } else {
            Kind::Frames(Frames { frames: vec![tiny_png.clone(), bytes] })
        };
        cases.push(invalid(name, Call::Caption(caption(kind)), field));
    }

    for i in 0..n {
        // Corrupt images: a real signature followed by garbage, bytes that are no image at all,
        // and PNGs with a flipped bit inside a chunk (its CRC no longer matches).
        let magic: &[u8] = match i % 4 {
            0 => &[0xFF, 0xD8, 0xFF],
            1 => b"\x89PNG\r\n\x1a\n",
            2 => b"GIF89a",
            _ => b"RIFF\x10\x00\x00\x00WEBP",
        };
        let garbage: Vec<u8> = (0..rng.random_range(0..3000)).map(|_| rng.random()).collect();
        let bytes = match rng.random_range(0..3) {
            0 => [magic, &garbage].concat(),
            1 => [&[0x00][..], &garbage].concat(),
            _ => {
                let mut png = pngs[rng.random_range(0..2)].clone();
                let (start, end) = png_chunk_data(&png, rng);
                let at = rng.random_range(start..end);
                png[at] ^= 1 << rng.random_range(0..8);
                png
            }
        };
        cases.push(invalid("corrupt_image", Call::Caption(caption(Kind::Image(bytes))), "media.image"));
    }

    for i in 0..n {
        // Decompression bombs: headers that declare more pixels than the limit.
        let mut side = || rng.random_range(((limits.max_pixels as f64).sqrt() as u32 + 1)..=u16::MAX as u32);
        let (w, h) = (side(), side());
        let bytes = match i % 5 {
            0 => png_declaring(w * rng.random_range(1..=1000), h),
            1 => gif_declaring(w as u16, h as u16),
            2 => jpeg_declaring(w as u16, h as u16),
            3 => webp_declaring(w, h),
            _ => vec![],
        };
        let case = if bytes.is_empty() {
            let raw = RawImage { width: w * rng.random_range(1..=1000), height: h, rgb: vec![] };
            invalid("bomb_header", Call::Caption(caption(Kind::Raw(raw))), "media.raw")
        } else {
            invalid("bomb_header", Call::Caption(caption(Kind::Image(bytes))), "media.image")
        };
        cases.push(BadCase { needle: Some("megapixel"), ..case });
    }

    for i in 0..n {
        // No pixels: zero width or height in every format, empty bytes, an empty frame.
        let (w, h) = match rng.random_range(0..3) {
            0 => (0, rng.random_range(0..100)),
            1 => (rng.random_range(0..100), 0),
            _ => (0, 0),
        };
        let (kind, field) = match i % 6 {
            0 => (Kind::Image(png_declaring(w, h)), "media.image"),
            1 => (Kind::Image(gif_declaring(w as u16, h as u16)), "media.image"),
            2 => (Kind::Image(jpeg_declaring(w as u16, h as u16)), "media.image"),
            3 => (Kind::Raw(RawImage { width: w, height: h, rgb: vec![0; (w * h * 3) as usize] }), "media.raw"),
            4 => (Kind::Image(vec![]), "media.image"),
            _ => (Kind::Frames(Frames { frames: vec![tiny_png.clone(), vec![]] }), "media.frames[1]"),
        };
        cases.push(invalid("zero_size", Call::Caption(caption(kind)), field));
    }

    for _ in 0..n {
        // Raw RGB whose byte count is not width * height * 3.
        let (w, h) = (rng.random_range(1..64u32), rng.random_range(1..64u32));
        let right = (w * h * 3) as i64;
        let len = loop {
            let len = right + rng.random_range(-right..=300);
            if len != right {
                break len as usize;
            }
        };
        let raw = RawImage { width: w, height: h, rgb: vec![7; len] };
        cases.push(invalid("raw_wrong_length", Call::Caption(caption(Kind::Raw(raw))), "media.raw"));
    }

    for i in 0..n {
        // Too many frames: in a frame list, announced by an upload, or sent in one (few of
        // those: the frames up to the limit are encoded first).
        let over = limits.max_frames + rng.random_range(1..=16);
        let case = match i % 8 {
            0..=3 => {
                let kind = Kind::Frames(Frames { frames: vec![tiny_png.clone(); over] });
                invalid("too_many_frames", Call::Caption(caption(kind)), "media.frames")
            }
            4..=6 => {
                let start = UploadStart { frame_count: rng.random_range(over as u32..=u32::MAX), ..Default::default() };
                invalid(
                    "too_many_frames",
                    Call::Upload(upload_messages(start, std::slice::from_ref(&tiny_png), 64)),
                    "start",
                )
            }
            _ if i < 16 => {
                let frames = vec![tiny_png.clone(); limits.max_frames + 1];
                invalid("too_many_frames", Call::Upload(upload_messages(UploadStart::default(), &frames, 64)), "chunk")
            }
            _ => {
                let kind = Kind::Frames(Frames { frames: vec![tiny_png.clone(); over] });
                invalid("too_many_frames", Call::Caption(caption(kind)), "media.frames")
            }
        };
        cases.push(case);
    }

    for i in 0..n {
        // Invalid UTF-8 in a string field: the server cannot decode the message. tonic-prost
        // answers INTERNAL for protobuf that does not decode, as gRPC's status code guide says.
        let bad = invalid_utf8(rng);
        let message = match i % 4 {
            0 => [caption(Kind::Image(tiny_png.clone())).encode_to_vec(), wire::bytes(1, &bad)].concat(),
            1 => [caption(Kind::Image(tiny_png.clone())).encode_to_vec(), wire::bytes(3, &bad)].concat(),
            2 => [score(&tiny_png).encode_to_vec(), wire::bytes(3, &bad)].concat(),
            _ => [score(&tiny_png).encode_to_vec(), wire::bytes(4, &bad)].concat(),
        };
        let path = if i % 4 < 2 { CAPTION } else { SCORE_LABELS };
        cases.push(BadCase {
            category: "invalid_utf8",
            call: Call::Raw(path, message),
            code: Code::Internal,
            field: None,
            needle: Some("UTF-8"),
        });
    }

    for i in 0..n.div_ceil(4) {
        // Protobuf that does not parse: a length past the end, a varint that never ends, a
        // reserved wire type.
        let valid = caption(Kind::Image(tiny_png.clone())).encode_to_vec();
        let message = match i % 3 {
            0 => [valid, vec![0x1a], wire::varint(rng.random_range(100..1_000_000)), vec![b'x'; 10]].concat(),
            1 => [valid, vec![0x08], vec![0xff; rng.random_range(11..20)]].concat(),
            _ => [valid, vec![(rng.random_range(1..16u8) << 3) | 7, 0]].concat(),
        };
        cases.push(BadCase {
            category: "malformed_protobuf",
            call: Call::Raw(CAPTION, message),
            code: Code::Internal,
            field: None,
            needle: None,
        });
    }

    for i in 0..n {
        cases.push(bad_options(i, rng, limits, &tiny_png));
    }

    for i in 0..n {
        // Unknown models, aliases and versions, through every kind of call.
        let word: String = (0..rng.random_range(1..20)).map(|_| rng.random_range(b'a'..=b'z') as char).collect();
        let model = match i % 4 {
            0 => format!("nope-{word}"),
            1 => format!("tiny@{word}"),
            2 => format!("{word}@local"),
            _ => format!("nope-{word}@v{}", rng.random::<u16>()),
        };
        let call = match i % 5 {
            0 | 1 => Call::Caption(CaptionRequest { model, ..caption(Kind::Image(tiny_png.clone())) }),
            2 => Call::CaptionStream(CaptionRequest { model, ..caption(Kind::Image(tiny_png.clone())) }),
            3 => Call::Upload(upload_messages(
                UploadStart { model, ..Default::default() },
                std::slice::from_ref(&tiny_png),
                64,
            )),
            _ => Call::ScoreLabels(ScoreLabelsRequest { model, ..score(&tiny_png) }),
        };
        cases.push(BadCase { category: "unknown_model", call, code: Code::NotFound, field: None, needle: None });
    }

    for i in 0..n.div_ceil(16) {
        // Messages over server.max_message_bytes.
        let size = limits.max_message_bytes + rng.random_range(1..100_000);
        let call = if i % 2 == 0 {
            Call::Caption(caption(Kind::Image(vec![0xAB; size])))
        } else {
            let chunk = FrameChunk { data: vec![0xCD; size], end_of_frame: true };
            Call::Upload(vec![
                UploadMessage { message: Some(upload_message::Message::Start(UploadStart::default())) },
                UploadMessage { message: Some(upload_message::Message::Chunk(chunk)) },
            ])
        };
        cases.push(BadCase { category: "oversized", call, code: Code::ResourceExhausted, field: None, needle: None });
    }
    cases
}

fn score(image: &[u8]) -> ScoreLabelsRequest {
    ScoreLabelsRequest {
        media: Some(Media { kind: Some(Kind::Image(image.to_vec())), ..Default::default() }),
        labels: vec!["a dog".into()],
        ..Default::default()
    }
}

/// Generation options outside their documented ranges, one option at a time.
fn bad_options(i: usize, rng: &mut ChaCha8Rng, limits: &CorpusLimits, image: &[u8]) -> BadCase {
    let base = caption(Kind::Image(image.to_vec()));
    let nan_or = |rng: &mut ChaCha8Rng, values: &[f32]| {
        if rng.random_bool(0.2) {
            f32::NAN
        } else {
            values[rng.random_range(0..values.len())]
        }
    };
    let sampling = GenerationOptions { do_sample: Some(true), max_new_tokens: Some(2), ..Default::default() };
    let (options, field) = match i % 9 {
        0 => {
            let n = match rng.random_range(0..3) {
                0 => 0,
                1 => rng.random_range(limits.max_new_tokens + 1..=u32::MAX),
                // Within the server's limit but past the tiny model's position embeddings.
                _ => rng.random_range(limits.max_positions..=limits.max_new_tokens),
            };
            (GenerationOptions { max_new_tokens: Some(n), ..Default::default() }, "options.max_new_tokens")
        }
        1 => {
            let n = if rng.random_bool(0.3) { 0 } else { rng.random_range(limits.max_beams + 1..=u32::MAX) };
            (GenerationOptions { num_beams: Some(n), ..sampling }, "options.num_beams")
        }
        2 => {
            let t = nan_or(rng, &[0.0, -1.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 100.5, 1e30, -1e-30]);
            (GenerationOptions { temperature: Some(t), ..sampling }, "options.temperature")
        }
        3 => {
            let p = nan_or(rng, &[0.0, -0.5, 1.0001, 2.0, f32::INFINITY, -f32::INFINITY, 1e9]);
            (GenerationOptions { top_p: Some(p), ..sampling }, "options.top_p")
        }
        4 => {
            let p = nan_or(rng, &[0.0, -1.0, f32::INFINITY, 100.01, 1e20]);
            (
                GenerationOptions { repetition_penalty: Some(p), max_new_tokens: Some(2), ..Default::default() },
                "options.repetition_penalty",
            )
        }
        5 => {
            let p = nan_or(rng, &[f32::INFINITY, f32::NEG_INFINITY, 100.5, -100.5, 1e30]);
            let options = GenerationOptions {
                length_penalty: Some(p),
                num_beams: Some(2),
                max_new_tokens: Some(2),
                ..Default::default()
            };
            (options, "options.length_penalty")
        }
        6 => {
            let max = rng.random_range(1..10);
            let min = rng.random_range(max + 1..=u32::MAX);
            let options =
                GenerationOptions { max_new_tokens: Some(max), min_new_tokens: Some(min), ..Default::default() };
            (options, "options.min_new_tokens")
        }
        _ => {
            // A negative number where the protocol has a uint32 (what a client in a language
            // without unsigned types sends): it arrives as 2^32 - k.
            let (field_number, name) =
                if i % 9 == 7 { (1, "options.max_new_tokens") } else { (3, "options.num_beams") };
            let negative = -(rng.random_range(1..1000i64));
            let options = wire::uint(field_number, negative as u64);
            let message = [base.encode_to_vec(), wire::bytes(4, &options)].concat();
            return invalid("bad_options", Call::Raw(CAPTION, message), name);
        }
    };
    invalid("bad_options", Call::Caption(CaptionRequest { options: Some(options), ..base }), field)
}

/// Bytes that are not UTF-8: a stray continuation byte, an overlong form, a surrogate, a lone
/// lead byte or 0xFF, somewhere in otherwise plain text.
fn invalid_utf8(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let bad: &[&[u8]] = &[&[0x80], &[0xC0, 0xAF], &[0xED, 0xA0, 0x80], &[0xE2, 0x82], &[0xFF], &[0xF8, 0x88, 0x80]];
    let mut text: Vec<u8> = (0..rng.random_range(0..30)).map(|_| rng.random_range(b'a'..=b'z')).collect();
    let at = rng.random_range(0..=text.len());
    let piece = bad[rng.random_range(0..bad.len())];
    text.splice(at..at, piece.iter().copied());
    text
}

/// An encoded PNG of `w` x `h` gray pixels.
pub fn png_of(w: u32, h: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(vec![]);
    image::GrayImage::new(w, h).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let body = [kind.as_slice(), data].concat();
    [(data.len() as u32).to_be_bytes().to_vec(), body.clone(), crc32(&body).to_be_bytes().to_vec()].concat()
}

/// The chunks of a PNG: (type, offset of the data, data length).
fn png_chunks(png: &[u8]) -> Vec<([u8; 4], usize, usize)> {
    let mut at = 8;
    let mut out = vec![];
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        out.push((png[at + 4..at + 8].try_into().unwrap(), at + 8, len));
        at += 12 + len;
    }
    out
}

/// Where the last IDAT chunk's data ends: a cut before it leaves the image incomplete.
fn png_image_data_end(png: &[u8]) -> usize {
    png_chunks(png).iter().filter(|c| &c.0 == b"IDAT").map(|c| c.1 + c.2).max().unwrap()
}

/// The data of a random IHDR or IDAT chunk: (start, end).
fn png_chunk_data(png: &[u8], rng: &mut ChaCha8Rng) -> (usize, usize) {
    let chunks: Vec<_> = png_chunks(png).into_iter().filter(|c| &c.0 == b"IHDR" || &c.0 == b"IDAT").collect();
    let (_, start, len) = chunks[rng.random_range(0..chunks.len())];
    (start, start + len)
}

/// A valid PNG (IHDR with a correct CRC, a tiny IDAT, IEND) whose header declares `w` x `h`.
pub fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let ihdr = [w.to_be_bytes().as_slice(), &h.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
    let idat = [0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01];
    [b"\x89PNG\r\n\x1a\n".to_vec(), png_chunk(b"IHDR", &ihdr), png_chunk(b"IDAT", &idat), png_chunk(b"IEND", &[])]
        .concat()
}

/// A GIF whose logical screen and one image are `w` x `h`, with a one-pixel LZW stream.
pub fn gif_declaring(w: u16, h: u16) -> Vec<u8> {
    let size = [w.to_le_bytes(), h.to_le_bytes()].concat();
    [
        b"GIF89a".as_slice(),
        &size,
        &[0x80, 0, 0], // global colour table of 2 entries
        &[0, 0, 0, 255, 255, 255],
        &[0x2C, 0, 0, 0, 0],
        &size,
        &[0],
        &[2, 2, 0x4C, 0x01, 0], // LZW minimum code size 2, one sub-block, terminator
        &[0x3B],
    ]
    .concat()
}

/// A baseline greyscale JPEG of `w` x `h`: quantisation and Huffman tables, the frame
/// header, a scan with one byte of entropy-coded data, EOI.
pub fn jpeg_declaring(w: u16, h: u16) -> Vec<u8> {
    let segment =
        |marker: u8, body: &[u8]| [&[0xFF, marker][..], &((body.len() + 2) as u16).to_be_bytes(), body].concat();
    let one_code_table = |class_and_id: u8| [&[class_and_id, 1][..], &[0; 15], &[0]].concat();
    [
        vec![0xFF, 0xD8],
        segment(0xDB, &[&[0][..], &[1; 64]].concat()),
        segment(0xC0, &[&[8][..], &h.to_be_bytes(), &w.to_be_bytes(), &[1, 1, 0x11, 0]].concat()),
        segment(0xC4, &one_code_table(0x00)),
        segment(0xC4, &one_code_table(0x10)),
        segment(0xDA, &[1, 1, 0x00, 0, 63, 0]),
        vec![0x00, 0xFF, 0xD9],
    ]
    .concat()
}

/// A lossless WebP (VP8L) whose header declares `w` x `h`, with a few bytes of image data. The
/// format allows 1 to 16384 a side, but image-webp 0.2 reads 16384 as 0, so at most 16383.
pub fn webp_declaring(w: u32, h: u32) -> Vec<u8> {
    let (w, h) = (w.clamp(1, (1 << 14) - 1) - 1, h.clamp(1, (1 << 14) - 1) - 1);
    // Signature, then 14 bits of width - 1, 14 of height - 1, alpha 0, version 0.
    let bits = w | (h << 14);
    let vp8l = [&[0x2F][..], &bits.to_le_bytes(), &[0; 8]].concat();
    let chunk = [b"VP8L".as_slice(), &(vp8l.len() as u32).to_le_bytes(), &vp8l].concat();
    let size = (4 + chunk.len()) as u32;
    [b"RIFF".as_slice(), &size.to_le_bytes(), b"WEBP", &chunk].concat()
}
