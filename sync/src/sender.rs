//! The sender's side of a session, without I/O of its own (spec/SYNC.md
//! section 5): it answers each request from its tree and its image, and
//! refuses a request for anything the image does not have.
//! [`AnswerError`] ends a session: its sentence goes to the receiver as
//! `ERROR`.

use std::io;

use crate::matcher::OldImage as Image;
use crate::packing::Packer;
use crate::tree::{
    group_count, group_value, leaf_count, leaf_range, root, value16, Value, GROUP_LEAVES, LEAF,
};
use crate::wire::{BlockKey, Measure, Message, Range, BLOCK, MAX_PAYLOAD};

/// Codec numbers of `DATA`: raw and zstd are the patch format's; the
/// stream is [`crate::packing`]'s.
pub const CODEC_RAW: u8 = 0;
pub const CODEC_ZSTD: u8 = 2;
pub const CODEC_ZSTD_STREAM: u8 = 3;

/// One session of the sender with one receiver.
///
/// The sender need not have hashed its image to start: [`Sender::hashed`]
/// takes its leaves' values as they are computed and gives the `GROUPS`
/// they complete, so the receiver compares while the sender still hashes;
/// [`Sender::tree_done`] gives `ROOT`, which comes last. A request is
/// answered from what is hashed so far: a receiver asks only about groups
/// it was sent.
#[derive(Debug)]
pub struct Sender<'a, I: Image + ?Sized> {
    image: &'a I,
    len: u64,
    /// The wire values of the leaves of the groups sent so far.
    leaves: Vec<[u8; 16]>,
    /// The values of the leaves of the group being hashed, not yet whole.
    partial: Vec<Value>,
    groups_sent: u64,
    root_sent: bool,
    seed: u64,
    done: Option<[u8; 32]>,
    packer: Option<Packer>,
}

impl<'a, I: Image + ?Sized> Sender<'a, I> {
    /// A session over `image` of `len` bytes; block keys use `seed`
    /// (drawn at random per session, so an image cannot be made to collide
    /// with it in advance).
    pub fn new(image: &'a I, len: u64, seed: u64) -> Self {
        Self {
            image,
            len,
            leaves: Vec::new(),
            partial: Vec::new(),
            groups_sent: 0,
            root_sent: false,
            seed,
            done: None,
            packer: None,
        }
    }

    /// Compresses `DATA` at this zstd level from the message after the
    /// next (see [`Packer::set_level`]); a dry run's sizes are those of
    /// the level it starts at unless this is called.
    pub fn set_level(&mut self, level: i32) -> io::Result<()> {
        let packer = match &mut self.packer {
            Some(p) => p,
            None => self.packer.insert(Packer::new()?),
        };
        packer.set_level(level);
        Ok(())
    }

    /// The zstd level `DATA` is compressed at now.
    pub fn level(&self) -> i32 {
        self.packer
            .as_ref()
            .map_or(crate::packing::LEVEL, Packer::level)
    }

    /// The message that opens the session: the image's length and the
    /// tree's shape.
    pub fn start(&self) -> Vec<Message> {
        vec![Message::Image {
            len: self.len,
            leaf_log2: LEAF.trailing_zeros() as u8,
            group_leaves: GROUP_LEAVES as u8,
            key_seed: self.seed,
        }]
    }

    /// The values of the image's next leaves, in order (as its hashing
    /// gives them): the `GROUPS` they complete. Values past the image's
    /// last leaf are ignored.
    pub fn hashed(&mut self, values: &[Value]) -> Vec<Message> {
        let total = leaf_count(self.len);
        let room = total.saturating_sub(self.leaves.len() as u64 + self.partial.len() as u64);
        let values = &values[..values.len().min(room as usize)];
        let mut groups = Vec::new();
        for &v in values {
            self.partial.push(v);
            let whole = self.partial.len() == GROUP_LEAVES
                || self.leaves.len() as u64 + self.partial.len() as u64 == total;
            if whole {
                let g = self.groups_sent + groups.len() as u64;
                if let Some(value) = group_value(self.len, g, &self.partial) {
                    groups.push(value16(&value));
                }
                self.leaves
                    .extend(self.partial.drain(..).map(|v| value16(&v)));
            }
        }
        let mut out = Vec::new();
        for chunk in groups.chunks(crate::wire::MAX_GROUPS_PER_MESSAGE) {
            out.push(Message::Groups {
                first: self.groups_sent as u32,
                values: chunk.to_vec(),
            });
            self.groups_sent += chunk.len() as u64;
        }
        out
    }

    /// The image is hashed whole and its BLAKE3 is `root`: `ROOT`, once
    /// every group was given (else nothing: the tree is not whole).
    pub fn tree_done(&mut self, root: blake3::Hash) -> Vec<Message> {
        if self.root_sent || self.groups_sent != group_count(self.len) {
            return vec![];
        }
        self.root_sent = true;
        vec![Message::Root {
            root: *root.as_bytes(),
        }]
    }

    /// The root the receiver said it reached, once it said it is done.
    pub fn finished(&self) -> Option<[u8; 32]> {
        self.done
    }

    /// Answers one message of the receiver.
    pub fn answer(&mut self, m: Message) -> Result<Vec<Message>, AnswerError> {
        match m {
            Message::WantLeaves(groups) => groups.into_iter().map(|g| self.leaves_of(g)).collect(),
            Message::WantKeys(leaves) => leaves.into_iter().map(|l| self.keys_of(l)).collect(),
            Message::WantData(ranges) => ranges.into_iter().map(|r| self.data(r)).collect(),
            Message::Measure(ranges) => {
                let sizes = ranges
                    .into_iter()
                    .map(|r| match self.data(r)? {
                        Message::Data { bytes, .. } => Ok(Measure {
                            range: r,
                            packed: bytes.len() as u32,
                        }),
                        _ => Err(refused("a range that gave no data".into())),
                    })
                    .collect::<Result<_, _>>()?;
                Ok(vec![Message::Measured(sizes)])
            }
            Message::Probe { len } => Ok(fill(len)),
            Message::Done { root } => {
                self.done = Some(root);
                Ok(vec![])
            }
            other => Err(refused(format!(
                "a receiver sent {other:?}, which only a sender sends"
            ))),
        }
    }

    fn leaves_of(&self, group: u32) -> Result<Message, AnswerError> {
        if u64::from(group) >= self.groups_sent {
            return Err(refused(format!(
                "group {group} asked; {} of the image's {} groups were sent",
                self.groups_sent,
                group_count(self.len)
            )));
        }
        let first = group as usize * GROUP_LEAVES;
        let end = (first + GROUP_LEAVES).min(self.leaves.len());
        Ok(Message::Leaves {
            group,
            values: self.leaves[first..end].to_vec(),
        })
    }

    fn keys_of(&self, leaf: u32) -> Result<Message, AnswerError> {
        if u64::from(leaf) >= leaf_count(self.len) {
            return Err(refused(format!(
                "leaf {leaf} asked; the image has {}",
                leaf_count(self.len)
            )));
        }
        let r = leaf_range(self.len, leaf.into());
        let mut bytes = vec![0; (r.end - r.start) as usize];
        self.image.read_at(&mut bytes, r.start)?;
        let keys = bytes
            .chunks(BLOCK as usize)
            .map(|b| BlockKey::of(b, self.seed))
            .collect();
        Ok(Message::Keys { leaf, keys })
    }

    fn data(&mut self, r: Range) -> Result<Message, AnswerError> {
        let end = r
            .offset
            .checked_add(r.len.into())
            .filter(|&e| e <= self.len);
        let same_leaf = end.is_some_and(|e| r.offset / LEAF == (e - 1) / LEAF);
        if r.len == 0 || r.offset % BLOCK != 0 || !same_leaf {
            return Err(refused(format!(
                "bytes {}+{} asked: a range must be block aligned, not empty, inside one leaf and inside the image of {} bytes",
                r.offset, r.len, self.len
            )));
        }
        let mut raw = vec![0; r.len as usize];
        self.image.read_at(&mut raw, r.offset)?;
        let packer = match &mut self.packer {
            Some(p) => p,
            None => self.packer.insert(Packer::new()?),
        };
        Ok(Message::Data {
            offset: r.offset,
            raw_len: r.len,
            codec: CODEC_ZSTD_STREAM,
            bytes: packer.pack(&raw)?,
        })
    }
}

/// Filler bytes for a `PROBE`, on the data stream: bytes that look random
/// (no link compresses them), in messages of at most 1 MiB.
fn fill(len: u32) -> Vec<Message> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(len);
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    bytes
        .chunks((MAX_PAYLOAD - 64) as usize)
        .map(|c| Message::Fill(c.to_vec()))
        .collect()
}

/// Why the sender ends a session.
#[derive(Debug)]
pub enum AnswerError {
    /// The receiver asked for something that is not there.
    Refused(String),
    /// The image could not be read.
    Io(io::Error),
}

impl From<io::Error> for AnswerError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(s) => write!(f, "{s}"),
            Self::Io(e) => write!(f, "cannot read the image: {e}"),
        }
    }
}

fn refused(s: String) -> AnswerError {
    AnswerError::Refused(s)
}

/// The BLAKE3 of an image from its leaves, hashing the bytes when it has
/// only one leaf.
pub fn image_root(
    image: &(impl Image + ?Sized),
    len: u64,
    leaves: &[Value],
) -> io::Result<blake3::Hash> {
    if let Some(h) = root(len, leaves) {
        return Ok(h);
    }
    let mut bytes = vec![0; len as usize];
    image.read_at(&mut bytes, 0)?;
    Ok(blake3::hash(&bytes))
}
