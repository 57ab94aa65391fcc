//! The sender's side of a session, without I/O of its own (spec/SYNC.md
//! section 5): it answers each request from its tree and its image, and
//! refuses a request for anything the image does not have.
//! [`AnswerError`] ends a session: its sentence goes to the receiver as
//! `ERROR`.

use std::io;

use crate::matcher::OldImage as Image;
use crate::packing::Packer;
use crate::tree::{
    group_count, group_values, leaf_count, leaf_range, root, value16, Value, GROUP_LEAVES, LEAF,
};
use crate::wire::{BlockKey, Message, Range, BLOCK};

/// Codec numbers of `DATA`: raw and zstd are the patch format's; the
/// stream is [`crate::packing`]'s.
pub const CODEC_RAW: u8 = 0;
pub const CODEC_ZSTD: u8 = 2;
pub const CODEC_ZSTD_STREAM: u8 = 3;

/// One session of the sender with one receiver.
#[derive(Debug)]
pub struct Sender<'a, I: Image + ?Sized> {
    image: &'a I,
    len: u64,
    leaves: &'a [Value],
    root: blake3::Hash,
    seed: u64,
    done: Option<[u8; 32]>,
    packer: Option<Packer>,
}

impl<'a, I: Image + ?Sized> Sender<'a, I> {
    /// A session over `image` of `len` bytes whose leaves' values are
    /// `leaves` and whose BLAKE3 is `root`; block keys use `seed` (drawn
    /// at random per session, so an image cannot be made to collide with
    /// it in advance).
    pub fn new(image: &'a I, len: u64, leaves: &'a [Value], root: blake3::Hash, seed: u64) -> Self {
        debug_assert_eq!(leaves.len() as u64, leaf_count(len));
        Self {
            image,
            len,
            leaves,
            root,
            seed,
            done: None,
            packer: None,
        }
    }

    /// The messages that open the session: the image, then its groups.
    pub fn start(&self) -> Vec<Message> {
        let mut out = vec![Message::Image {
            len: self.len,
            root: *self.root.as_bytes(),
            leaf_log2: LEAF.trailing_zeros() as u8,
            group_leaves: GROUP_LEAVES as u8,
            key_seed: self.seed,
        }];
        let groups: Vec<[u8; 16]> = group_values(self.len, self.leaves)
            .iter()
            .map(value16)
            .collect();
        for (i, chunk) in groups
            .chunks(crate::wire::MAX_GROUPS_PER_MESSAGE)
            .enumerate()
        {
            let first = (i * crate::wire::MAX_GROUPS_PER_MESSAGE) as u32;
            out.push(Message::Groups {
                first,
                values: chunk.to_vec(),
            });
        }
        out
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
        if u64::from(group) >= group_count(self.len) {
            return Err(refused(format!(
                "group {group} asked; the image has {}",
                group_count(self.len)
            )));
        }
        let first = group as usize * GROUP_LEAVES;
        let end = (first + GROUP_LEAVES).min(self.leaves.len());
        Ok(Message::Leaves {
            group,
            values: self.leaves[first..end].iter().map(value16).collect(),
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
