//! The naive reference applier: short, obviously correct, slow.
//!
//! It holds everything in memory, follows `spec/FORMAT.md` line by line, and
//! decodes zstd with the C library (not ruzstd), so that differential tests
//! compare two independent readings of the spec.
//!
//! Codec 0x03 (format 1.3) keeps the *data history*: the decoded data of the
//! patch's earlier codec 0x03 segments, in patch order. Only its last
//! `MAX_HISTORY_LEN` bytes can ever be used, so only those are kept.

use anypatch_format::{
    header_hash, Extent, Header, Op, OpIter, Page, Preamble, PreambleRepr, PrefixRef,
    SignatureBlock, Trailer, FEATURE_COMPACT_PAGES, FEATURE_DATA_HISTORY, FEATURE_OLD_PREFIX,
    FEATURE_PACKED_OPS, HASH_LEN, MAX_HISTORY_LEN, MAX_OPS_LEN, MAX_PAGE_LEN, MAX_SEGMENT_LEN,
    MAX_ZSTD_WINDOW, PACKED_OPS, PREAMBLE_LEN, SHORT_HASH_LEN, TRAILER_LEN,
};

/// Applies `patch` to `old` and returns the new file, or why not.
pub fn apply(old: &[u8], patch: &[u8]) -> Result<Vec<u8>, String> {
    let e = |m: &str| m.to_string();
    if patch.len() < PREAMBLE_LEN + TRAILER_LEN {
        return Err(e("too short"));
    }
    let (body_and_more, trailer) = patch.split_at(patch.len() - TRAILER_LEN);
    let trailer = Trailer::parse(trailer).map_err(|x| x.to_string())?;
    if blake3::hash(body_and_more).as_bytes() != &trailer.patch_hash {
        return Err(e("patch hash"));
    }
    let pre = PreambleRepr::parse(&Preamble::new_checked(patch).map_err(|x| x.to_string())?)
        .map_err(|x| x.to_string())?;
    let body_end = PREAMBLE_LEN + pre.header_len as usize;
    let hash_end = body_end + HASH_LEN;
    let section = body_and_more.get(..hash_end).ok_or("header truncated")?;
    if header_hash(&section[..PREAMBLE_LEN], &section[PREAMBLE_LEN..body_end])
        != section[body_end..]
    {
        return Err(e("header hash"));
    }
    // Version and features only now: the header hash covers them.
    if pre.major != 1 {
        return Err(e("major"));
    }
    if pre.required_features & !0xf != 0 {
        return Err(e("unknown required feature"));
    }
    let header =
        Header::parse(&section[PREAMBLE_LEN..body_end], pre.minor).map_err(|x| x.to_string())?;
    // Codec 0x02 is allowed only in a patch that declares it (version 1.1).
    let prefix_allowed = pre.required_features & FEATURE_OLD_PREFIX != 0;
    // So is codec 0x03 (version 1.3).
    let history_allowed = pre.required_features & FEATURE_DATA_HISTORY != 0;
    // So is bit 0x80 of a segment's codec, packed ops.
    let packing_allowed = pre.required_features & FEATURE_PACKED_OPS != 0;
    // Compact pages (version 1.2): every page is one zstd frame, and a
    // segment's hash is its first 16 bytes.
    let compact = pre.required_features & FEATURE_COMPACT_PAGES != 0;
    let hash_len = if compact { SHORT_HASH_LEN } else { HASH_LEN };
    if header.codec == 2 && !prefix_allowed {
        return Err(e("codec 2 without FEATURE_OLD_PREFIX"));
    }
    if header.codec == 3 && !history_allowed {
        return Err(e("codec 3 without FEATURE_DATA_HISTORY"));
    }
    if header.old_len != old.len() as u64 || blake3::hash(old).as_bytes() != &header.old_hash {
        return Err(e("wrong base"));
    }
    let signatures = body_and_more
        .get(hash_end..hash_end + pre.signature_len as usize)
        .ok_or("truncated")?;
    // An Ed25519 entry that does not verify: altered after signing.
    let block = SignatureBlock::parse(signatures).map_err(|x| x.to_string())?;
    let mut message = b"anypatch-v1 header signature\0".to_vec();
    message.extend_from_slice(section);
    for entry in block.entries.iter().filter(|s| s.algorithm == 0x01) {
        let valid = ed25519_dalek::VerifyingKey::from_bytes(&entry.public_key).is_ok_and(|k| {
            k.verify_strict(
                &message,
                &ed25519_dalek::Signature::from_bytes(&entry.signature),
            )
            .is_ok()
        });
        if !valid {
            return Err(e("bad signature"));
        }
    }
    let mut at = hash_end + pre.signature_len as usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let s = body_and_more.get(at..at + n).ok_or("truncated")?;
        at += n;
        Ok(s)
    };
    let mut new = Vec::new();
    // The data history: the last MAX_HISTORY_LEN decoded bytes of the codec
    // 0x03 segments so far.
    let mut history: Vec<u8> = Vec::new();
    let (mut extents, mut segments) = (0u64, 0u64);
    let mut next = Some(header.first_page);
    while let Some(r) = next {
        let bytes = take(r.len as usize)?;
        if blake3::hash(bytes).as_bytes() != &r.hash {
            return Err(e("page hash"));
        }
        let content = if compact {
            unpack(bytes, MAX_PAGE_LEN, "compact page")?
        } else {
            bytes.to_vec()
        };
        let page = if compact {
            Page::parse_compact(&content)
        } else {
            Page::parse(&content)
        }
        .map_err(|x| x.to_string())?;
        for extent in page.extents {
            extents += 1;
            let start = new.len() as i128;
            if new.len() as u64 + extent.len() > header.new_len {
                return Err(e("too long"));
            }
            match extent {
                Extent::Copy { len, delta } => {
                    new.extend_from_slice(old_range(old, start + delta as i128, len)?)
                }
                Extent::Zero { len } => new.resize(new.len() + len as usize, 0), // bounded by new_len, checked above
                Extent::Data(s) => {
                    segments += 1;
                    if s.new_len > header.segment_max {
                        return Err(e("segment above segment_max"));
                    }
                    // Inline in a compact page (parse_compact checked the
                    // range), or the start of the payload.
                    let ops = match s.inline_ops {
                        Some(at) => &content[at as usize..at as usize + s.ops_len as usize],
                        None => take(s.ops_len as usize)?,
                    };
                    let coded = take(s.data_len as usize)?;
                    let unpacked;
                    let ops = match s.codec & PACKED_OPS {
                        0 => ops,
                        _ if packing_allowed => {
                            unpacked = unpack(ops, MAX_OPS_LEN, "packed ops")?;
                            &unpacked[..]
                        }
                        _ => return Err(e("packed ops without FEATURE_PACKED_OPS")),
                    };
                    let data = match s.codec & !PACKED_OPS {
                        0 => coded.to_vec(),
                        1 => decode_zstd(coded, &[], MAX_SEGMENT_LEN)?,
                        2 if prefix_allowed => {
                            let (p, frame) = PrefixRef::parse(coded).map_err(|x| x.to_string())?;
                            decode_zstd(
                                frame,
                                old_range(old, start + p.delta as i128, p.len.into())?,
                                MAX_SEGMENT_LEN,
                            )?
                        }
                        3 if history_allowed => {
                            let n = data_taken(ops)?;
                            let keep = history.len().min(MAX_HISTORY_LEN as usize - n);
                            let data = decode_history(coded, &history[history.len() - keep..], n)?;
                            history.extend_from_slice(&data);
                            let over = history.len().saturating_sub(MAX_HISTORY_LEN as usize);
                            history.drain(..over);
                            data
                        }
                        _ => return Err(e("codec")),
                    };
                    let mut out = Vec::new();
                    let mut d = data.as_slice();
                    for op in OpIter::new(ops) {
                        let op = op.map_err(|x| x.to_string())?;
                        let here = start + out.len() as i128;
                        let n = op.len() as usize;
                        match op {
                            Op::Copy { delta, .. } => out.extend_from_slice(old_range(
                                old,
                                here + delta as i128,
                                n as u64,
                            )?),
                            Op::Literal { .. } => {
                                out.extend_from_slice(d.get(..n).ok_or("data short")?);
                                d = &d[n..];
                            }
                            Op::Delta { delta, .. } => {
                                let base = old_range(old, here + delta as i128, n as u64)?;
                                let add = d.get(..n).ok_or("data short")?;
                                out.extend(base.iter().zip(add).map(|(a, b)| a.wrapping_add(*b)));
                                d = &d[n..];
                            }
                            Op::Zero { .. } => out.resize(out.len() + n, 0),
                        }
                    }
                    if !d.is_empty() || out.len() != s.new_len as usize {
                        return Err(e("segment lengths"));
                    }
                    if blake3::hash(&out).as_bytes()[..hash_len] != s.hash[..hash_len] {
                        return Err(e("segment hash"));
                    }
                    new.extend_from_slice(&out);
                }
            }
            if new.len() as u64 > header.new_len {
                return Err(e("too long"));
            }
        }
        next = page.next;
    }
    if extents != header.extent_count || segments != header.segment_count {
        return Err(e("extent or segment count"));
    }
    if at != body_and_more.len() || patch.len() as u64 != header.patch_len {
        return Err(e("patch length"));
    }
    if new.len() as u64 != header.new_len || blake3::hash(&new).as_bytes() != &header.new_hash {
        return Err(e("new hash"));
    }
    Ok(new)
}

fn old_range(old: &[u8], start: i128, len: u64) -> Result<&[u8], String> {
    let end = start + len as i128;
    if start < 0 || end > old.len() as i128 {
        return Err("source out of range".into());
    }
    Ok(&old[start as usize..end as usize])
}

/// The bytes a segment's ops take from its data block, n: for codec 0x03,
/// 1..=`MAX_SEGMENT_LEN`.
fn data_taken(ops: &[u8]) -> Result<usize, String> {
    let mut n = 0u64;
    for op in OpIter::new(ops) {
        n += u64::from(op.map_err(|x| x.to_string())?.data_len());
    }
    if !(1..=u64::from(MAX_SEGMENT_LEN)).contains(&n) {
        return Err(format!("codec 3: the ops take {n} data bytes"));
    }
    Ok(n as usize)
}

/// A codec 0x03 data block: exactly one zstd frame, naming no dictionary,
/// that declares its content size `n` and decodes to it with `history` as
/// its prefix.
fn decode_history(frame: &[u8], history: &[u8], n: usize) -> Result<Vec<u8>, String> {
    // Frame_Header_Descriptor bits 0-1: the Dictionary_ID field's size.
    if frame.get(..4) == Some(&[0x28, 0xB5, 0x2F, 0xFD][..])
        && frame.get(4).is_some_and(|d| d & 0x03 != 0)
    {
        return Err("codec 3: the frame names a dictionary".into());
    }
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size == n as u64 => {}
        Ok(Some(size)) => {
            return Err(format!(
                "codec 3: the frame declares {size} bytes, the ops take {n}"
            ))
        }
        Ok(None) => return Err("codec 3: the frame declares no content size".into()),
        Err(_) => return Err("codec 3: no zstd frame header".into()),
    }
    let data = decode_zstd(frame, history, n as u32)?;
    if data.len() != n {
        return Err("codec 3: the frame decodes to another length than it declares".into());
    }
    Ok(data)
}

/// A packed ops block or a compact page (`what`): one zstd frame that
/// declares its content size, 1..=`max`, and decodes to exactly that.
pub fn unpack(frame: &[u8], max: u32, what: &str) -> Result<Vec<u8>, String> {
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| format!("{what}: no zstd frame header"))?
        .ok_or(format!("{what}: the frame declares no content size"))?;
    if !(1..=u64::from(max)).contains(&size) {
        return Err(format!("{what}: content size {size}"));
    }
    let content = decode_zstd(frame, &[], max)?;
    if content.len() as u64 != size {
        return Err(format!(
            "{what}: frame decodes to another length than it declares"
        ));
    }
    Ok(content)
}

/// Exactly one zstd frame, as the spec requires, with `prefix` (codec 2's
/// old bytes, codec 3's data history; empty otherwise) as its history, decoding to at most `max`
/// bytes. Decoded as a stream, since the C library checks the window limit
/// (`windowLogMax`) only there.
fn decode_zstd(coded: &[u8], prefix: &[u8], max: u32) -> Result<Vec<u8>, String> {
    use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer};
    if zstd::zstd_safe::find_frame_compressed_size(coded) != Ok(coded.len()) {
        return Err("data block is not exactly one zstd frame".into());
    }
    // Streaming alone does not apply windowLogMax: the C library decodes a
    // frame whose content size it knows and has room for in one pass,
    // without checking the window. So check it here.
    let window = frame_window(coded)?;
    if window > MAX_ZSTD_WINDOW {
        return Err(format!("zstd window {window} above MAX_ZSTD_WINDOW"));
    }
    let err = |code| zstd::zstd_safe::get_error_name(code).to_string();
    let mut d = DCtx::create();
    d.set_parameter(DParameter::WindowLogMax(MAX_ZSTD_WINDOW.trailing_zeros()))
        .map_err(err)?;
    if !prefix.is_empty() {
        d.ref_prefix(prefix).map_err(err)?;
    }
    let mut out = Vec::with_capacity(max as usize);
    let mut output = OutBuffer::around(&mut out);
    let mut input = InBuffer::around(coded);
    loop {
        let before = (input.pos(), output.pos());
        if d.decompress_stream(&mut output, &mut input).map_err(err)? == 0 {
            break; // the frame is complete
        }
        if (input.pos(), output.pos()) == before {
            return Err(format!("zstd frame decodes to more than {max} bytes"));
        }
    }
    Ok(out)
}

/// The window a standard zstd frame declares (RFC 8878 section 3.1.1.1.2):
/// from its window descriptor, or its content size when it is a single
/// segment.
fn frame_window(frame: &[u8]) -> Result<u64, String> {
    if frame.get(..4) != Some(&[0x28, 0xB5, 0x2F, 0xFD][..]) {
        return Err("not a standard zstd frame".into());
    }
    let descriptor = *frame.get(4).ok_or("zstd frame header cut short")?;
    if descriptor & 0x20 != 0 {
        return match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) => Ok(size),
            _ => Err("zstd frame header does not decode".into()),
        };
    }
    let w = *frame.get(5).ok_or("zstd frame header cut short")?;
    let base = 1u64 << (10 + (w >> 3));
    Ok(base + base / 8 * u64::from(w & 0x07))
}
