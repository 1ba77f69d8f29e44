//! A JPEG decoder that gives the same bytes as Pillow, which decodes with libjpeg-turbo's
//! defaults: the accurate integer IDCT (`jidctint.c`, "islow"), "fancy" (triangle-filter)
//! chroma upsampling (`jdsample.c`) and table-driven YCbCr → RGB (`jdcolor.c`).
//!
//! The `image` crate's decoder (zune-jpeg) rounds its IDCT, upsampling and colour conversion
//! differently: up to ±7 per channel on a 4:2:0 photo, enough to move preprocessed pixels by two
//! 8-bit steps. This module covers what photos and the web use (8-bit Huffman-coded baseline,
//! extended and progressive JPEG; grayscale, YCbCr or RGB; 1:1, 2:1 and other integral sampling
//! ratios; restart intervals) and reports anything else as [`Decoded::Unsupported`], for which
//! the caller falls back to the `image` crate.
//!
//! Corrupt entropy-coded data is handled as libjpeg does: an invalid Huffman code decodes as 0,
//! and a marker inside a scan makes the rest of the scan read zero bits. Nothing here panics on
//! any input, and no buffer is allocated before the frame size passed the caller's pixel limit.

/// What [`decode`] found.
pub(crate) enum Decoded {
    /// The image, `width * height * 3` RGB bytes (grayscale replicated).
    Rgb { width: u32, height: u32, data: Vec<u8> },
    /// A valid JPEG that uses something this decoder does not implement (arithmetic coding,
    /// 12-bit samples, lossless, CMYK, fractional sampling ratios, ...).
    Unsupported(String),
}

/// Metadata Pillow puts in `info` that orientation handling needs.
#[derive(Default)]
pub(crate) struct Metadata {
    /// The first APP1 `Exif\0\0` segment, without that prefix.
    pub exif: Option<Vec<u8>>,
    /// The first APP1 XMP packet.
    pub xmp: Option<Vec<u8>>,
}

/// Zigzag index → natural (row-major) index, with 16 extra entries so corrupt run lengths land
/// on the last coefficient rather than outside the block (as libjpeg's `jpeg_natural_order`).
const NATURAL_ORDER: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
];

struct Huffman {
    /// `lookup[next 9 bits] = (code length, symbol)`; length 0 when the code is longer.
    lookup: Vec<(u8, u8)>,
    /// For lengths 1..=16: the largest code of that length (-1 if none) and the offset of its
    /// symbols in `values` (libjpeg's `maxcode` / `valoffset`).
    maxcode: [i32; 18],
    valoffset: [i32; 17],
    values: Vec<u8>,
}

const LOOKUP_BITS: u32 = 9;

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self, String> {
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 || total > values.len() {
            return Err("bad Huffman table".into());
        }
        let mut lookup = vec![(0u8, 0u8); 1 << LOOKUP_BITS];
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut code: i32 = 0;
        let mut k = 0usize;
        for len in 1..=16usize {
            let n = usize::from(counts[len - 1]);
            valoffset[len] = k as i32 - code;
            for _ in 0..n {
                if len as u32 <= LOOKUP_BITS {
                    let shift = LOOKUP_BITS - len as u32;
                    let first = (code as usize) << shift;
                    for entry in lookup.iter_mut().skip(first).take(1 << shift) {
                        *entry = (len as u8, values[k]);
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[len] = code - 1;
            }
            // A code longer than `len` bits overflowing means the counts are inconsistent.
            if code > (1 << len) {
                return Err("bad Huffman table".into());
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX; // sentinel: stop at 16 bits
        Ok(Self { lookup, maxcode, valoffset, values })
    }
}

/// Reads entropy-coded bits: skips stuffed zero bytes, stops at a marker and then yields zeros.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    count: u32,
    at_marker: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Self { data, pos, acc: 0, count: 0, at_marker: false }
    }

    #[inline]
    fn fill(&mut self) {
        while self.count <= 56 {
            let mut byte = 0u8;
            if !self.at_marker && self.pos < self.data.len() {
                byte = self.data[self.pos];
                if byte == 0xFF {
                    // 0xFF, any fill bytes, then 0x00 (a stuffed 0xFF data byte) or a marker.
                    let mut j = self.pos + 1;
                    while j < self.data.len() && self.data[j] == 0xFF {
                        j += 1;
                    }
                    if self.data.get(j) == Some(&0x00) {
                        self.pos = j + 1;
                    } else {
                        self.at_marker = true;
                        byte = 0;
                    }
                } else {
                    self.pos += 1;
                }
            } else {
                self.at_marker = true;
            }
            self.acc |= u64::from(byte) << (56 - self.count);
            self.count += 8;
        }
    }

    #[inline]
    fn peek(&mut self, n: u32) -> u32 {
        if self.count < n {
            self.fill();
        }
        (self.acc >> (64 - n)) as u32
    }

    #[inline]
    fn consume(&mut self, n: u32) {
        self.acc <<= n;
        self.count -= n;
    }

    #[inline]
    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let v = self.peek(n);
        self.consume(n);
        v
    }

    #[inline]
    fn bit(&mut self) -> bool {
        self.bits(1) == 1
    }

    /// `HUFF_EXTEND(receive(s), s)`.
    #[inline]
    fn receive_extend(&mut self, s: u32) -> i32 {
        if s == 0 {
            return 0;
        }
        if s > 16 {
            // Corrupt: libjpeg reads the bits anyway; keep the stream position sane.
            self.bits(16);
            return 0;
        }
        let v = self.bits(s) as i32;
        if v < (1 << (s - 1)) {
            v - (1 << s) + 1
        } else {
            v
        }
    }

    #[inline]
    fn decode(&mut self, table: &Huffman) -> u8 {
        let look = self.peek(LOOKUP_BITS) as usize;
        let (len, value) = table.lookup[look];
        if len > 0 {
            self.consume(u32::from(len));
            return value;
        }
        // Slow path (jdhuff.c `jpeg_huff_decode`).
        let mut code = self.peek(16) as i32;
        let mut l = 16usize;
        for len in (LOOKUP_BITS as usize + 1)..=16 {
            if (code >> (16 - len)) <= table.maxcode[len] {
                l = len;
                break;
            }
            if len == 16 {
                // No code matches: libjpeg warns and returns 0.
                self.consume(16);
                return 0;
            }
        }
        code >>= 16 - l;
        self.consume(l as u32);
        let idx = code + table.valoffset[l];
        table.values.get(idx as usize).copied().unwrap_or(0)
    }

    /// At a restart interval's end: drop the partial byte and step over an RSTn marker.
    fn restart(&mut self) {
        self.acc = 0;
        self.count = 0;
        self.at_marker = false;
        loop {
            while self.pos < self.data.len() && self.data[self.pos] != 0xFF {
                self.pos += 1;
            }
            let Some(&m) = self.data.get(self.pos + 1) else {
                self.at_marker = true;
                return;
            };
            match m {
                0xFF => self.pos += 1,
                0x00 => self.pos += 2,
                0xD0..=0xD7 => {
                    self.pos += 2;
                    return;
                }
                _ => {
                    // Some other marker: leave it; the rest of the scan reads zeros.
                    self.at_marker = true;
                    return;
                }
            }
        }
    }

    /// Position of the next marker after the scan's data.
    fn end_of_scan(&self) -> usize {
        let mut p = self.pos;
        loop {
            while p < self.data.len() && self.data[p] != 0xFF {
                p += 1;
            }
            match self.data.get(p + 1) {
                None => return self.data.len(),
                Some(0x00) | Some(0xD0..=0xD7) => p += 2,
                Some(0xFF) => p += 1,
                Some(_) => return p,
            }
        }
    }
}

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// The quantization table, latched when the component's first scan starts (as libjpeg).
    qt: Option<[u16; 64]>,
    /// Blocks per row / column in the coefficient buffer (padded to whole MCUs).
    bw: usize,
    bh: usize,
    /// Blocks that hold image data (a non-interleaved scan covers only these).
    bw_real: usize,
    bh_real: usize,
    coefs: Vec<i16>,
    dc_pred: i32,
    dc_table: usize,
    ac_table: usize,
}

struct Frame {
    progressive: bool,
    width: usize,
    height: usize,
    comps: Vec<Component>,
    max_h: usize,
    max_v: usize,
    mcus_x: usize,
    mcus_y: usize,
}

/// Decodes a JPEG. `check_size(width, height)` is called with the frame size before any
/// pixel-sized allocation; its error is returned as is. Other errors describe corrupt data.
pub(crate) fn decode(
    data: &[u8],
    check_size: &mut dyn FnMut(u32, u32) -> Result<(), String>,
) -> Result<(Decoded, Metadata), String> {
    let mut meta = Metadata::default();
    let corrupt = |what: &str| format!("cannot decode the JPEG image: {what}");
    if !data.starts_with(&[0xFF, 0xD8]) {
        return Err(corrupt("no start-of-image marker"));
    }
    let mut qt: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut frame: Option<Frame> = None;
    let mut restart_interval = 0usize;
    let mut saw_jfif = false;
    let mut adobe_transform: Option<u8> = None;
    let mut i = 2usize;
    loop {
        // Find the next marker (libjpeg skips stray bytes with a warning).
        while i < data.len() && data[i] != 0xFF {
            i += 1;
        }
        while i < data.len() && data[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = data.get(i) else {
            return Err(corrupt("the data ends before the end-of-image marker"));
        };
        i += 1;
        match marker {
            0xD9 => break,
            0xD8 | 0x01 | 0xD0..=0xD7 | 0x00 => continue,
            _ => {}
        }
        let len = match data.get(i..i + 2) {
            Some(&[a, b]) => usize::from(u16::from_be_bytes([a, b])),
            _ => return Err(corrupt("the data ends inside a marker segment")),
        };
        if len < 2 || i + len > data.len() {
            return Err(corrupt("a marker segment runs past the end of the data"));
        }
        let seg = &data[i + 2..i + len];
        i += len;
        match marker {
            0xE0 if seg.len() >= 14 && seg.starts_with(b"JFIF\0") => saw_jfif = true,
            0xE1 => {
                if let Some(exif) = seg.strip_prefix(b"Exif\0\0") {
                    meta.exif.get_or_insert_with(|| exif.to_vec());
                } else if let Some(xmp) = seg.strip_prefix(b"http://ns.adobe.com/xap/1.0/\0") {
                    meta.xmp.get_or_insert_with(|| xmp.to_vec());
                }
            }
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => adobe_transform = Some(seg[11]),
            0xDB => {
                let mut s = seg;
                while !s.is_empty() {
                    let (pq, tq) = (s[0] >> 4, usize::from(s[0] & 15));
                    let size = if pq == 0 { 64 } else { 128 };
                    if tq > 3 || s.len() < 1 + size {
                        return Err(corrupt("bad quantization table"));
                    }
                    let mut table = [0u16; 64];
                    for (k, &pos) in NATURAL_ORDER[..64].iter().enumerate() {
                        table[pos] = if pq == 0 {
                            u16::from(s[1 + k])
                        } else {
                            u16::from_be_bytes([s[1 + 2 * k], s[2 + 2 * k]])
                        };
                    }
                    qt[tq] = Some(table);
                    s = &s[1 + size..];
                }
            }
            0xC4 => {
                let mut s = seg;
                while !s.is_empty() {
                    if s.len() < 17 {
                        return Err(corrupt("bad Huffman table"));
                    }
                    let (class, th) = (s[0] >> 4, usize::from(s[0] & 15));
                    let counts: [u8; 16] = s[1..17].try_into().expect("16 bytes");
                    let n: usize = counts.iter().map(|&c| usize::from(c)).sum();
                    if th > 3 || class > 1 || s.len() < 17 + n {
                        return Err(corrupt("bad Huffman table"));
                    }
                    let table = Huffman::new(&counts, s[17..17 + n].to_vec()).map_err(|e| corrupt(&e))?;
                    if class == 0 {
                        dc_tables[th] = Some(table);
                    } else {
                        ac_tables[th] = Some(table);
                    }
                    s = &s[17 + n..];
                }
            }
            0xDD => {
                if seg.len() < 2 {
                    return Err(corrupt("bad restart interval"));
                }
                restart_interval = usize::from(u16::from_be_bytes([seg[0], seg[1]]));
            }
            0xC0..=0xC2 => {
                if frame.is_some() {
                    return Err(corrupt("more than one frame header"));
                }
                if seg.len() < 6 {
                    return Err(corrupt("bad frame header"));
                }
                let precision = seg[0];
                let height = usize::from(u16::from_be_bytes([seg[1], seg[2]]));
                let width = usize::from(u16::from_be_bytes([seg[3], seg[4]]));
                let n = usize::from(seg[5]);
                if precision != 8 {
                    return Ok((Decoded::Unsupported(format!("{precision}-bit samples")), meta));
                }
                if height == 0 {
                    return Ok((Decoded::Unsupported("height defined by DNL".into()), meta));
                }
                if n != 1 && n != 3 {
                    return Ok((Decoded::Unsupported(format!("{n} components")), meta));
                }
                if seg.len() < 6 + 3 * n || width == 0 {
                    return Err(corrupt("bad frame header"));
                }
                check_size(width as u32, height as u32)?;
                let mut comps = Vec::with_capacity(n);
                for c in 0..n {
                    let b = &seg[6 + 3 * c..9 + 3 * c];
                    let (h, v) = (usize::from(b[1] >> 4), usize::from(b[1] & 15));
                    if !(1..=4).contains(&h) || !(1..=4).contains(&v) || b[2] > 3 {
                        return Err(corrupt("bad sampling factors"));
                    }
                    comps.push(Component {
                        id: b[0],
                        h,
                        v,
                        tq: usize::from(b[2]),
                        qt: None,
                        bw: 0,
                        bh: 0,
                        bw_real: 0,
                        bh_real: 0,
                        coefs: Vec::new(),
                        dc_pred: 0,
                        dc_table: 0,
                        ac_table: 0,
                    });
                }
                let max_h = comps.iter().map(|c| c.h).max().unwrap_or(1);
                let max_v = comps.iter().map(|c| c.v).max().unwrap_or(1);
                if comps.iter().any(|c| max_h % c.h != 0 || max_v % c.v != 0) {
                    return Ok((Decoded::Unsupported("fractional sampling ratios".into()), meta));
                }
                let mcus_x = width.div_ceil(8 * max_h);
                let mcus_y = height.div_ceil(8 * max_v);
                for c in comps.iter_mut() {
                    c.bw = mcus_x * c.h;
                    c.bh = mcus_y * c.v;
                    c.bw_real = (width * c.h).div_ceil(max_h).div_ceil(8);
                    c.bh_real = (height * c.v).div_ceil(max_v).div_ceil(8);
                    c.coefs = vec![0i16; c.bw * c.bh * 64];
                }
                frame = Some(Frame { progressive: marker == 0xC2, width, height, comps, max_h, max_v, mcus_x, mcus_y });
            }
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                let what = match marker {
                    0xC3 | 0xC7 | 0xCB | 0xCF => "lossless JPEG",
                    0xC9..=0xCB | 0xCD..=0xCF => "arithmetic coding",
                    _ => "hierarchical JPEG",
                };
                return Ok((Decoded::Unsupported(what.into()), meta));
            }
            0xDA => {
                let Some(frame) = frame.as_mut() else {
                    return Err(corrupt("scan before frame header"));
                };
                let ns = usize::from(*seg.first().unwrap_or(&0));
                if ns == 0 || ns > 4 || seg.len() < 1 + 2 * ns + 3 {
                    return Err(corrupt("bad scan header"));
                }
                let mut scan_comps = Vec::with_capacity(ns);
                for k in 0..ns {
                    let id = seg[1 + 2 * k];
                    let tables = seg[2 + 2 * k];
                    let c = frame
                        .comps
                        .iter()
                        .position(|c| c.id == id)
                        .ok_or_else(|| corrupt("scan names an unknown component"))?;
                    if frame.comps[c].qt.is_none() {
                        let table = qt[frame.comps[c].tq].ok_or_else(|| corrupt("missing quantization table"))?;
                        frame.comps[c].qt = Some(table);
                    }
                    frame.comps[c].dc_table = usize::from(tables >> 4) & 3;
                    frame.comps[c].ac_table = usize::from(tables & 15) & 3;
                    scan_comps.push(c);
                }
                let p = 1 + 2 * ns;
                let (ss, se, ah, al) = (
                    usize::from(seg[p]),
                    usize::from(seg[p + 1]),
                    u32::from(seg[p + 2] >> 4),
                    u32::from(seg[p + 2] & 15),
                );
                let scan = Scan { comps: scan_comps, ss, se, ah, al };
                let mut bits = Bits::new(data, i);
                decode_scan(frame, &scan, &dc_tables, &ac_tables, restart_interval, &mut bits)
                    .map_err(|e| corrupt(&e))?;
                i = bits.end_of_scan();
            }
            0xDC => return Ok((Decoded::Unsupported("DNL marker".into()), meta)),
            _ => {} // APPn, COM, ...: nothing we need
        }
    }
    let Some(mut frame) = frame else { return Err(corrupt("no frame header")) };
    let color = match frame.comps.len() {
        1 => ColorSpace::Gray,
        _ if saw_jfif => ColorSpace::YCbCr,
        _ => match adobe_transform {
            Some(0) => ColorSpace::Rgb,
            Some(_) => ColorSpace::YCbCr,
            None => {
                let ids: Vec<u8> = frame.comps.iter().map(|c| c.id).collect();
                if ids == [b'R', b'G', b'B'] {
                    ColorSpace::Rgb
                } else {
                    ColorSpace::YCbCr
                }
            }
        },
    };
    let mut planes = Vec::with_capacity(frame.comps.len());
    for c in frame.comps.iter_mut() {
        // A component no scan covered decodes as zero coefficients (mid-grey), as in libjpeg.
        let Some(table) = c.qt.or(qt[c.tq]) else {
            return Err(corrupt("missing quantization table"));
        };
        planes.push(idct_component(c, &table));
        c.coefs = Vec::new();
    }
    let data = to_rgb(&frame, &planes, color);
    Ok((Decoded::Rgb { width: frame.width as u32, height: frame.height as u32, data }, meta))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ColorSpace {
    Gray,
    YCbCr,
    Rgb,
}

struct Scan {
    comps: Vec<usize>,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

fn decode_scan(
    frame: &mut Frame,
    scan: &Scan,
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
    bits: &mut Bits<'_>,
) -> Result<(), String> {
    let progressive = frame.progressive;
    if progressive {
        let ok = if scan.ss == 0 { scan.se == 0 } else { scan.ss <= scan.se && scan.se <= 63 && scan.comps.len() == 1 };
        if !ok || scan.al > 13 || (scan.ah != 0 && scan.ah != scan.al + 1) {
            return Err("bad progressive scan parameters".into());
        }
    }
    // (Sequential JPEG ignores Ss, Se, Ah and Al, as libjpeg does.)
    let need_dc = !progressive || (scan.ss == 0 && scan.ah == 0);
    let need_ac = !progressive || scan.ss > 0;
    for &c in &scan.comps {
        let comp = &frame.comps[c];
        if need_dc && dc_tables[comp.dc_table].is_none() {
            return Err("missing DC Huffman table".into());
        }
        if need_ac && ac_tables[comp.ac_table].is_none() {
            return Err("missing AC Huffman table".into());
        }
        frame.comps[c].dc_pred = 0;
    }
    let mut eobrun: u32 = 0;
    // Units: MCUs for interleaved scans, blocks for a single component.
    let single = scan.comps.len() == 1;
    let (units_x, units_y) = if single {
        let comp = &frame.comps[scan.comps[0]];
        (comp.bw_real, comp.bh_real)
    } else {
        (frame.mcus_x, frame.mcus_y)
    };
    let total = units_x * units_y;
    let mut block = [0i16; 64];
    for unit in 0..total {
        if restart_interval > 0 && unit > 0 && unit % restart_interval == 0 {
            bits.restart();
            eobrun = 0;
            for &c in &scan.comps {
                frame.comps[c].dc_pred = 0;
            }
        }
        let (ux, uy) = (unit % units_x, unit / units_x);
        for &c in &scan.comps {
            let (bh, bv) = if single { (1, 1) } else { (frame.comps[c].h, frame.comps[c].v) };
            for v in 0..bv {
                for h in 0..bh {
                    let comp = &mut frame.comps[c];
                    let (bx, by) = if single { (ux, uy) } else { (ux * comp.h + h, uy * comp.v + v) };
                    let offset = (by * comp.bw + bx) * 64;
                    block.copy_from_slice(&comp.coefs[offset..offset + 64]);
                    let dc = dc_tables[comp.dc_table].as_ref();
                    let ac = ac_tables[comp.ac_table].as_ref();
                    if !progressive {
                        decode_block_sequential(
                            bits,
                            dc.expect("checked"),
                            ac.expect("checked"),
                            &mut comp.dc_pred,
                            &mut block,
                        );
                    } else if scan.ss == 0 {
                        if scan.ah == 0 {
                            let s = u32::from(bits.decode(dc.expect("checked")));
                            comp.dc_pred = comp.dc_pred.wrapping_add(bits.receive_extend(s));
                            block[0] = (comp.dc_pred.wrapping_shl(scan.al)) as i16;
                        } else if bits.bit() {
                            block[0] |= 1 << scan.al;
                        }
                    } else if scan.ah == 0 {
                        decode_ac_first(bits, ac.expect("checked"), scan, &mut eobrun, &mut block);
                    } else {
                        decode_ac_refine(bits, ac.expect("checked"), scan, &mut eobrun, &mut block);
                    }
                    comp.coefs[offset..offset + 64].copy_from_slice(&block);
                }
            }
        }
    }
    Ok(())
}

fn decode_block_sequential(bits: &mut Bits<'_>, dc: &Huffman, ac: &Huffman, pred: &mut i32, block: &mut [i16; 64]) {
    let s = u32::from(bits.decode(dc));
    *pred = pred.wrapping_add(bits.receive_extend(s));
    block[0] = *pred as i16;
    let mut k = 1usize;
    while k < 64 {
        let rs = bits.decode(ac);
        let (r, s) = (usize::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += r;
            let v = bits.receive_extend(s);
            block[NATURAL_ORDER[k.min(79)]] = v as i16;
        } else {
            if r != 15 {
                break;
            }
            k += 15;
        }
        k += 1;
    }
}

fn decode_ac_first(bits: &mut Bits<'_>, ac: &Huffman, scan: &Scan, eobrun: &mut u32, block: &mut [i16; 64]) {
    if *eobrun > 0 {
        *eobrun -= 1;
        return;
    }
    let mut k = scan.ss;
    while k <= scan.se {
        let rs = bits.decode(ac);
        let (r, s) = (u32::from(rs >> 4), u32::from(rs & 15));
        if s != 0 {
            k += r as usize;
            let v = bits.receive_extend(s);
            block[NATURAL_ORDER[k.min(79)]] = (v.wrapping_shl(scan.al)) as i16;
        } else if r == 15 {
            k += 15;
        } else {
            *eobrun = 1 << r;
            if r > 0 {
                *eobrun += bits.bits(r);
            }
            *eobrun -= 1;
            break;
        }
        k += 1;
    }
}

fn decode_ac_refine(bits: &mut Bits<'_>, ac: &Huffman, scan: &Scan, eobrun: &mut u32, block: &mut [i16; 64]) {
    let p1: i16 = 1 << scan.al;
    let m1: i16 = (-1i16).wrapping_shl(scan.al);
    let mut k = scan.ss;
    let refine = |bits: &mut Bits<'_>, coef: &mut i16| {
        if bits.bit() && (*coef & p1) == 0 {
            *coef = if *coef >= 0 { coef.wrapping_add(p1) } else { coef.wrapping_add(m1) };
        }
    };
    if *eobrun == 0 {
        while k <= scan.se {
            let rs = bits.decode(ac);
            let (mut r, s) = (i32::from(rs >> 4), u32::from(rs & 15));
            let mut value = 0i16;
            if s != 0 {
                // s should be 1; libjpeg warns otherwise and carries on.
                value = if bits.bit() { p1 } else { m1 };
            } else if r != 15 {
                *eobrun = 1u32 << r;
                if r > 0 {
                    *eobrun += bits.bits(r as u32);
                }
                break;
            }
            while k <= scan.se {
                let coef = &mut block[NATURAL_ORDER[k]];
                if *coef != 0 {
                    refine(bits, coef);
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if value != 0 {
                block[NATURAL_ORDER[k.min(79)]] = value;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= scan.se {
            let coef = &mut block[NATURAL_ORDER[k]];
            if *coef != 0 {
                refine(bits, coef);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
}

// jidctint.c constants (CONST_BITS = 13).
const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

#[inline]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// libjpeg's post-IDCT range limit: `idct_range_limit[x & 1023]`.
fn idct_limit(x: i64) -> u8 {
    let i = (x & 1023) as usize;
    match i {
        0..=127 => (i + 128) as u8,
        128..=511 => 255,
        512..=895 => 0,
        _ => (i - 896) as u8,
    }
}

/// One 1-D pass of `jpeg_idct_islow` on eight values; returns the even/odd outputs before
/// descaling: `[tmp10 + tmp3, tmp11 + tmp2, tmp12 + tmp1, tmp13 + tmp0, tmp13 - tmp0, ...]`.
#[inline]
fn idct_1d(d: [i64; 8], shift_in: impl Fn(i64) -> i64) -> [i64; 8] {
    // Even part.
    let (z2, z3) = (d[2], d[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = shift_in(d[0] + d[4]);
    let tmp1 = shift_in(d[0] - d[4]);
    let tmp10 = tmp0 + tmp3;
    let tmp13 = tmp0 - tmp3;
    let tmp11 = tmp1 + tmp2;
    let tmp12 = tmp1 - tmp2;
    // Odd part.
    let (mut t0, mut t1, mut t2, mut t3) = (d[7], d[5], d[3], d[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    t0 *= FIX_0_298631336;
    t1 *= FIX_2_053119869;
    t2 *= FIX_3_072711026;
    t3 *= FIX_1_501321110;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;
    [tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0, tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3]
}

/// Dequantises and inverse-transforms every block of a component into its sample plane
/// (`bw * 8` x `bh * 8`).
fn idct_component(comp: &Component, qt: &[u16; 64]) -> Vec<u8> {
    let stride = comp.bw * 8;
    let mut plane = vec![0u8; stride * comp.bh * 8];
    // ISLOW_MULT_TYPE is a 16-bit `short` in libjpeg-turbo.
    let q: Vec<i64> = qt.iter().map(|&v| i64::from(v as i16)).collect();
    let mut ws = [0i32; 64];
    for by in 0..comp.bh {
        for bx in 0..comp.bw {
            let coefs = &comp.coefs[(by * comp.bw + bx) * 64..][..64];
            // Pass 1: columns → workspace, scaled up by 2^PASS1_BITS.
            for col in 0..8 {
                let deq = |row: usize| i64::from(coefs[row * 8 + col]) * q[row * 8 + col];
                if (1..8).all(|row| coefs[row * 8 + col] == 0) {
                    let dc = (deq(0) << PASS1_BITS) as i32;
                    for row in 0..8 {
                        ws[row * 8 + col] = dc;
                    }
                    continue;
                }
                let out = idct_1d(std::array::from_fn(deq), |x| x << CONST_BITS);
                for (row, v) in out.iter().enumerate() {
                    ws[row * 8 + col] = descale(*v, CONST_BITS - PASS1_BITS) as i32;
                }
            }
            // Pass 2: rows → samples.
            for row in 0..8 {
                let w = &ws[row * 8..row * 8 + 8];
                let dst = &mut plane[(by * 8 + row) * stride + bx * 8..][..8];
                if w[1..].iter().all(|&v| v == 0) {
                    let v = idct_limit(descale(i64::from(w[0]), PASS1_BITS + 3));
                    dst.fill(v);
                    continue;
                }
                let out = idct_1d(std::array::from_fn(|k| i64::from(w[k])), |x| x << CONST_BITS);
                for (d, v) in dst.iter_mut().zip(out) {
                    *d = idct_limit(descale(v, CONST_BITS + PASS1_BITS + 3));
                }
            }
        }
    }
    plane
}

/// Upsamples one component to full resolution (`width` x `height`), as libjpeg-turbo's
/// `jdsample.c` does with `do_fancy_upsampling`: triangle filters for 2:1 horizontal, 2:1
/// vertical and 2:1 both ways (with the first and last real rows repeated as context), pixel
/// replication for other integral ratios.
fn upsample(frame: &Frame, comp: &Component, plane: &[u8]) -> Vec<u8> {
    let (width, height) = (frame.width, frame.height);
    let stride = comp.bw * 8;
    let (hx, vx) = (frame.max_h / comp.h, frame.max_v / comp.v);
    // The component's real size (`downsampled_width` / `downsampled_height`).
    let dw = (width * comp.h).div_ceil(frame.max_h);
    let dh = (height * comp.v).div_ceil(frame.max_v);
    let row = |r: isize| -> &[u8] {
        let r = r.clamp(0, dh as isize - 1) as usize;
        &plane[r * stride..r * stride + dw]
    };
    let out_w = dw * hx;
    let mut out = vec![0u8; out_w * dh * vx];
    let fancy_h = dw > 2;
    match (hx, vx) {
        (1, 1) => {
            for r in 0..dh {
                out[r * out_w..(r + 1) * out_w].copy_from_slice(row(r as isize));
            }
        }
        (2, 1) if fancy_h => {
            for r in 0..dh {
                let inp = row(r as isize);
                let o = &mut out[r * out_w..(r + 1) * out_w];
                h2v1_fancy(inp, o);
            }
        }
        (2, 2) if fancy_h => {
            for r in 0..dh {
                let inp = row(r as isize);
                for v in 0..2 {
                    let near = if v == 0 { row(r as isize - 1) } else { row(r as isize + 1) };
                    let o = &mut out[(2 * r + v) * out_w..(2 * r + v + 1) * out_w];
                    h2v2_fancy(inp, near, o);
                }
            }
        }
        (1, 2) => {
            for r in 0..dh {
                let inp = row(r as isize);
                for v in 0..2 {
                    let (near, bias) = if v == 0 { (row(r as isize - 1), 1) } else { (row(r as isize + 1), 2) };
                    let o = &mut out[(2 * r + v) * out_w..(2 * r + v + 1) * out_w];
                    for ((d, &a), &b) in o.iter_mut().zip(inp).zip(near) {
                        *d = ((u32::from(a) * 3 + u32::from(b) + bias) >> 2) as u8;
                    }
                }
            }
        }
        _ => {
            // int_upsample / h2v1_upsample / h2v2_upsample: replicate.
            for r in 0..dh {
                let inp = row(r as isize);
                for v in 0..vx {
                    let o = &mut out[(r * vx + v) * out_w..(r * vx + v + 1) * out_w];
                    for (chunk, &s) in o.chunks_exact_mut(hx).zip(inp) {
                        chunk.fill(s);
                    }
                }
            }
        }
    }
    // Crop to the image size (upsampled sizes round up).
    if out_w == width && dh * vx == height {
        return out;
    }
    let mut cropped = Vec::with_capacity(width * height);
    for r in 0..height {
        cropped.extend_from_slice(&out[r * out_w..r * out_w + width]);
    }
    cropped
}

fn h2v1_fancy(inp: &[u8], out: &mut [u8]) {
    let n = inp.len();
    let x = |i: usize| u32::from(inp[i]);
    out[0] = inp[0];
    out[1] = ((x(0) * 3 + x(1) + 2) >> 2) as u8;
    for i in 1..n - 1 {
        let v = x(i) * 3;
        out[2 * i] = ((v + x(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((v + x(i + 1) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((x(n - 1) * 3 + x(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = inp[n - 1];
}

fn h2v2_fancy(inp: &[u8], near: &[u8], out: &mut [u8]) {
    let n = inp.len();
    let col = |i: usize| u32::from(inp[i]) * 3 + u32::from(near[i]);
    let mut this = col(0);
    let mut next = col(1);
    out[0] = ((this * 4 + 8) >> 4) as u8;
    out[1] = ((this * 3 + next + 7) >> 4) as u8;
    let mut last = this;
    this = next;
    for i in 1..n - 1 {
        next = col(i + 1);
        out[2 * i] = ((this * 3 + last + 8) >> 4) as u8;
        out[2 * i + 1] = ((this * 3 + next + 7) >> 4) as u8;
        last = this;
        this = next;
    }
    out[2 * n - 2] = ((this * 3 + last + 8) >> 4) as u8;
    out[2 * n - 1] = ((this * 4 + 7) >> 4) as u8;
}

/// Upsamples and converts the component planes to interleaved RGB (`jdcolor.c`).
fn to_rgb(frame: &Frame, planes: &[Vec<u8>], color: ColorSpace) -> Vec<u8> {
    let full: Vec<Vec<u8>> = frame.comps.iter().zip(planes).map(|(c, p)| upsample(frame, c, p)).collect();
    let n = frame.width * frame.height;
    let mut rgb = vec![0u8; n * 3];
    match color {
        ColorSpace::Gray => {
            for (px, &y) in rgb.chunks_exact_mut(3).zip(&full[0]) {
                px.fill(y);
            }
        }
        ColorSpace::Rgb => {
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                px.copy_from_slice(&[full[0][i], full[1][i], full[2][i]]);
            }
        }
        ColorSpace::YCbCr => {
            let t = ycc_tables();
            for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                let y = i32::from(full[0][i]);
                let (cb, cr) = (usize::from(full[1][i]), usize::from(full[2][i]));
                let clamp = |v: i32| v.clamp(0, 255) as u8;
                px[0] = clamp(y + t.cr_r[cr]);
                px[1] = clamp(y + ((t.cb_g[cb] + t.cr_g[cr]) >> 16) as i32);
                px[2] = clamp(y + t.cb_b[cb]);
            }
        }
    }
    rgb
}

struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

/// `build_ycc_rgb_table` (SCALEBITS = 16).
fn ycc_tables() -> YccTables {
    const SCALEBITS: u32 = 16;
    const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
    let fix = |x: f64| (x * f64::from(1u32 << SCALEBITS) + 0.5) as i64;
    let mut t = YccTables { cr_r: [0; 256], cb_b: [0; 256], cr_g: [0; 256], cb_g: [0; 256] };
    for i in 0..256usize {
        let x = i as i64 - 128;
        t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
        t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
        t.cr_g[i] = -fix(0.71414) * x;
        t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_limit_matches_libjpeg() {
        assert_eq!(idct_limit(0), 128);
        assert_eq!(idct_limit(127), 255);
        assert_eq!(idct_limit(-128), 0);
        assert_eq!(idct_limit(-1), 127);
        assert_eq!(idct_limit(300), 255);
        assert_eq!(idct_limit(-300), 0);
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let photo =
            std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/media/photo.jpg"))
                .expect("fixture");
        for _ in 0..300 {
            let mut bytes = photo.clone();
            for _ in 0..1 + next() % 8 {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            let cut = (next() as usize) % (bytes.len() + 1);
            let _ = decode(&bytes[..cut.max(2)], &mut |w, h| {
                if u64::from(w) * u64::from(h) > 1 << 22 {
                    Err("too big".into())
                } else {
                    Ok(())
                }
            });
        }
    }
}
