//! The messages of a sync session (spec/SYNC.md sections 4 and 5): their
//! encoding, and a decoder that refuses anything malformed or oversized
//! before it allocates for it.
//!
//! A message is `kind` (1 byte), `len` (u32 LE, at most [`MAX_PAYLOAD`])
//! and `len` bytes of payload. The decoder works on whatever bytes have
//! arrived: [`decode`] says how many it needs when a message is not whole.

use std::fmt;

use crate::tree::{GROUP_LEAVES, LEAF};

/// Longest payload: one `DATA` message of a 1 MiB group plus its header.
pub const MAX_PAYLOAD: u32 = (1 << 20) + 64;

/// Bytes before a payload.
pub const FRAME_HEADER: usize = 5;

/// Most values in one `GROUPS` message.
pub const MAX_GROUPS_PER_MESSAGE: usize = 4096;

/// Most numbers or ranges in one request.
pub const MAX_REQUEST_ITEMS: usize = 4096;

/// Bytes of a block, the unit of `KEYS` and `WANT_DATA`.
pub const BLOCK: u64 = 4096;

/// Blocks in a leaf: the most keys one `KEYS` message holds.
pub const BLOCKS_PER_LEAF: usize = (LEAF / BLOCK) as usize;

/// A value as it travels: the first 16 bytes of a chaining value.
pub type Value16 = [u8; 16];

/// One message of either direction.
#[derive(Clone, PartialEq, Eq)]
pub enum Message {
    /// Down: the new image's length, the tree's shape, and the seed of the
    /// block keys this session sends. Its BLAKE3 comes last, in `Root`.
    Image {
        len: u64,
        leaf_log2: u8,
        group_leaves: u8,
        key_seed: u64,
    },
    /// Down: the values of groups `first`, `first + 1`, ...
    Groups { first: u32, values: Vec<Value16> },
    /// Down: the values of the leaves of `group`.
    Leaves { group: u32, values: Vec<Value16> },
    /// Down: the keys of each 4 KiB block of `leaf`.
    Keys { leaf: u32, keys: Vec<BlockKey> },
    /// Down (data stream): new bytes at `offset`, `raw_len` of them once
    /// decoded with `codec`.
    Data {
        offset: u64,
        raw_len: u32,
        codec: u8,
        bytes: Vec<u8>,
    },
    /// Down: the sender ends the session; a sentence for the user.
    Error(String),
    /// Down, after the last `Groups`: the new image's BLAKE3.
    Root { root: [u8; 32] },
    /// Down: what the ranges of one `Measure` would take as `Data`, in its
    /// order: their compressed sizes.
    Measured(Vec<Measure>),
    /// Down (data stream): filler bytes answering `Probe`, to time the link.
    Fill(Vec<u8>),
    /// Up: send `Leaves` for these groups.
    WantLeaves(Vec<u32>),
    /// Up: send `Keys` for these leaves.
    WantKeys(Vec<u32>),
    /// Up: send `Data` for these ranges of the new image.
    WantData(Vec<Range>),
    /// Up: the receiver is done; the root it computed (zeros after a dry
    /// run, which builds nothing).
    Done { root: [u8; 32] },
    /// Up (a dry run): say what these ranges would take, do not send them.
    Measure(Vec<Range>),
    /// Up (a dry run): send this many filler bytes on the data stream.
    Probe { len: u32 },
}

/// A range that a `Measure` asked, and the bytes its `Data` would carry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Measure {
    pub range: Range,
    /// The compressed bytes of its `Data` message's payload after the header.
    pub packed: u32,
}

/// Most filler bytes one `Probe` may ask (the time of a few MiB on the
/// link is enough to estimate its rate).
pub const MAX_PROBE: u32 = 16 << 20;

/// The keys of one block, as `spec/INDEX.md` section 3.2 defines them
/// (XXH3-128 with the session's seed).
pub use anypatch_index::BlockHashes as BlockKey;

/// A range of the new image a receiver wants.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Range {
    pub offset: u64,
    pub len: u32,
}

/// Kinds, as on the wire.
mod kind {
    pub const IMAGE: u8 = 0x01;
    pub const GROUPS: u8 = 0x02;
    pub const LEAVES: u8 = 0x03;
    pub const KEYS: u8 = 0x04;
    pub const DATA: u8 = 0x05;
    pub const ERROR: u8 = 0x06;
    pub const ROOT: u8 = 0x07;
    pub const MEASURED: u8 = 0x08;
    pub const FILL: u8 = 0x09;
    pub const WANT_LEAVES: u8 = 0x11;
    pub const WANT_KEYS: u8 = 0x12;
    pub const WANT_DATA: u8 = 0x13;
    pub const DONE: u8 = 0x14;
    pub const MEASURE: u8 = 0x15;
    pub const PROBE: u8 = 0x16;
}

/// Why a message was refused.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WireError(String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the peer broke the sync protocol: {}", self.0)
    }
}

impl std::error::Error for WireError {}

fn refuse<T>(what: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(what.into()))
}

/// What [`decode`] found at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole message, and the bytes it took.
    Message(Message, usize),
    /// Not whole yet: at least this many bytes in all are needed.
    Need(usize),
}

impl Message {
    /// The message framed for the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::new();
        let k = match self {
            Self::Image {
                len,
                leaf_log2,
                group_leaves,
                key_seed,
            } => {
                p.extend_from_slice(&len.to_le_bytes());
                p.push(*leaf_log2);
                p.push(*group_leaves);
                p.extend_from_slice(&key_seed.to_le_bytes());
                kind::IMAGE
            }
            Self::Groups { first, values } => {
                p.extend_from_slice(&first.to_le_bytes());
                values.iter().for_each(|v| p.extend_from_slice(v));
                kind::GROUPS
            }
            Self::Leaves { group, values } => {
                p.extend_from_slice(&group.to_le_bytes());
                values.iter().for_each(|v| p.extend_from_slice(v));
                kind::LEAVES
            }
            Self::Keys { leaf, keys } => {
                p.extend_from_slice(&leaf.to_le_bytes());
                keys.iter().for_each(|k| p.extend_from_slice(&k.emit()));
                kind::KEYS
            }
            Self::Data {
                offset,
                raw_len,
                codec,
                bytes,
            } => {
                p.extend_from_slice(&offset.to_le_bytes());
                p.extend_from_slice(&raw_len.to_le_bytes());
                p.push(*codec);
                p.extend_from_slice(bytes);
                kind::DATA
            }
            Self::Error(sentence) => {
                p.extend_from_slice(sentence.as_bytes());
                kind::ERROR
            }
            Self::WantLeaves(items) | Self::WantKeys(items) => {
                items
                    .iter()
                    .for_each(|i| p.extend_from_slice(&i.to_le_bytes()));
                if matches!(self, Self::WantLeaves(_)) {
                    kind::WANT_LEAVES
                } else {
                    kind::WANT_KEYS
                }
            }
            Self::WantData(ranges) | Self::Measure(ranges) => {
                for r in ranges {
                    p.extend_from_slice(&r.offset.to_le_bytes());
                    p.extend_from_slice(&r.len.to_le_bytes());
                }
                if matches!(self, Self::WantData(_)) {
                    kind::WANT_DATA
                } else {
                    kind::MEASURE
                }
            }
            Self::Root { root } => {
                p.extend_from_slice(root);
                kind::ROOT
            }
            Self::Measured(items) => {
                for m in items {
                    p.extend_from_slice(&m.range.offset.to_le_bytes());
                    p.extend_from_slice(&m.range.len.to_le_bytes());
                    p.extend_from_slice(&m.packed.to_le_bytes());
                }
                kind::MEASURED
            }
            Self::Fill(bytes) => {
                p.extend_from_slice(bytes);
                kind::FILL
            }
            Self::Probe { len } => {
                p.extend_from_slice(&len.to_le_bytes());
                kind::PROBE
            }
            Self::Done { root } => {
                p.extend_from_slice(root);
                kind::DONE
            }
        };
        let mut out = Vec::with_capacity(FRAME_HEADER + p.len());
        out.push(k);
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&p);
        out
    }
}

/// Decodes the message at the front of `buf`, if it is whole. The length
/// is checked against [`MAX_PAYLOAD`] before anything waits for the
/// payload, so a peer cannot make the reader hold more than that.
pub fn decode(buf: &[u8]) -> Result<Decoded, WireError> {
    let Some(header) = buf.get(..FRAME_HEADER) else {
        return Ok(Decoded::Need(FRAME_HEADER));
    };
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    if len > MAX_PAYLOAD {
        return refuse(format!("a message of {len} bytes (at most {MAX_PAYLOAD})"));
    }
    let total = FRAME_HEADER + len as usize;
    let Some(payload) = buf.get(FRAME_HEADER..total) else {
        return Ok(Decoded::Need(total));
    };
    Ok(Decoded::Message(parse(header[0], payload)?, total))
}

fn parse(k: u8, p: &[u8]) -> Result<Message, WireError> {
    let mut r = Reader(p);
    let m = match k {
        kind::IMAGE => {
            let m = Message::Image {
                len: r.u64()?,
                leaf_log2: r.u8()?,
                group_leaves: r.u8()?,
                key_seed: r.u64()?,
            };
            r.end("IMAGE")?;
            m
        }
        kind::GROUPS => Message::Groups {
            first: r.u32()?,
            values: r.items("GROUPS", MAX_GROUPS_PER_MESSAGE, |r| r.array())?,
        },
        kind::LEAVES => Message::Leaves {
            group: r.u32()?,
            values: r.items("LEAVES", GROUP_LEAVES, |r| r.array())?,
        },
        kind::KEYS => Message::Keys {
            leaf: r.u32()?,
            keys: r.items("KEYS", BLOCKS_PER_LEAF, |r| {
                Ok(BlockKey::parse(&r.array()?))
            })?,
        },
        kind::DATA => Message::Data {
            offset: r.u64()?,
            raw_len: r.u32()?,
            codec: r.u8()?,
            bytes: r.rest().to_vec(),
        },
        kind::ERROR => match std::str::from_utf8(r.rest()) {
            Ok(sentence) => Message::Error(sentence.to_owned()),
            Err(_) => return refuse("an ERROR message that is not UTF-8"),
        },
        kind::WANT_LEAVES => {
            Message::WantLeaves(r.items("WANT_LEAVES", MAX_REQUEST_ITEMS, Reader::u32)?)
        }
        kind::WANT_KEYS => {
            Message::WantKeys(r.items("WANT_KEYS", MAX_REQUEST_ITEMS, Reader::u32)?)
        }
        kind::WANT_DATA => {
            Message::WantData(r.items("WANT_DATA", MAX_REQUEST_ITEMS, Reader::range)?)
        }
        kind::MEASURE => Message::Measure(r.items("MEASURE", MAX_REQUEST_ITEMS, Reader::range)?),
        kind::DONE => {
            let m = Message::Done { root: r.array()? };
            r.end("DONE")?;
            m
        }
        kind::ROOT => {
            let m = Message::Root { root: r.array()? };
            r.end("ROOT")?;
            m
        }
        kind::MEASURED => Message::Measured(r.items("MEASURED", MAX_REQUEST_ITEMS, |r| {
            Ok(Measure {
                range: r.range()?,
                packed: r.u32()?,
            })
        })?),
        kind::FILL => Message::Fill(r.rest().to_vec()),
        kind::PROBE => {
            let len = r.u32()?;
            r.end("PROBE")?;
            if len > MAX_PROBE {
                return refuse(format!("a PROBE of {len} bytes (at most {MAX_PROBE})"));
            }
            Message::Probe { len }
        }
        other => return refuse(format!("an unknown message kind 0x{other:02x}")),
    };
    Ok(m)
}

/// A cursor over a payload whose every read is checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return refuse("a message ends inside a field");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_le_bytes)
    }
    fn range(&mut self) -> Result<Range, WireError> {
        Ok(Range {
            offset: self.u64()?,
            len: self.u32()?,
        })
    }
    fn rest(&mut self) -> &[u8] {
        std::mem::take(&mut self.0)
    }
    fn end(&self, what: &str) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            refuse(format!("{what} has {} bytes too many", self.0.len()))
        }
    }
    /// Reads items to the end of the payload: at most `max`, and the
    /// payload must end on an item's boundary.
    fn items<T>(
        &mut self,
        what: &str,
        max: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let mut out = Vec::new();
        while !self.0.is_empty() {
            if out.len() == max {
                return refuse(format!("{what} holds more than {max} items"));
            }
            out.push(item(self).map_err(|_| WireError(format!("{what} ends inside an item")))?);
        }
        Ok(out)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image {
                len,
                leaf_log2,
                group_leaves,
                ..
            } => {
                write!(
                    f,
                    "Image {{ len: {len}, leaf_log2: {leaf_log2}, group_leaves: {group_leaves} }}"
                )
            }
            Self::Groups { first, values } => {
                write!(f, "Groups {{ first: {first}, {} values }}", values.len())
            }
            Self::Leaves { group, values } => {
                write!(f, "Leaves {{ group: {group}, {} values }}", values.len())
            }
            Self::Keys { leaf, keys } => write!(f, "Keys {{ leaf: {leaf}, {} keys }}", keys.len()),
            Self::Data {
                offset,
                raw_len,
                codec,
                bytes,
            } => {
                write!(
                    f,
                    "Data {{ offset: {offset}, raw_len: {raw_len}, codec: {codec}, {} bytes }}",
                    bytes.len()
                )
            }
            Self::Error(s) => write!(f, "Error({s:?})"),
            Self::WantLeaves(v) => write!(f, "WantLeaves({v:?})"),
            Self::WantKeys(v) => write!(f, "WantKeys({v:?})"),
            Self::WantData(v) => write!(f, "WantData({v:?})"),
            Self::Done { .. } => write!(f, "Done"),
            Self::Root { .. } => write!(f, "Root"),
            Self::Measure(v) => write!(f, "Measure({v:?})"),
            Self::Measured(v) => write!(f, "Measured({} ranges)", v.len()),
            Self::Fill(b) => write!(f, "Fill({} bytes)", b.len()),
            Self::Probe { len } => write!(f, "Probe({len})"),
        }
    }
}
