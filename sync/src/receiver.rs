//! The receiver's side of a session, without I/O of its own (spec/SYNC.md
//! sections 5 to 8).
//!
//! The caller feeds it the values of its own image's groups as they are
//! hashed ([`Receiver::own_group`], [`Receiver::own_done`]) and the
//! sender's messages ([`Receiver::take`]); it sends what
//! [`Receiver::outgoing`] gives and writes what [`Receiver::ready`] gives,
//! in order. A leaf is handed out only after its bytes matched the
//! sender's value for it; the session ends when the root of all leaves
//! equals the BLAKE3 the sender announced.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::matcher::{Matcher, OldImage, Source};
use crate::packing::Unpacker;
use crate::sender::{CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_STREAM};
use crate::tree::{
    group_count, group_value, leaf_count, leaf_range, leaf_value, value16, RootBuilder, Value,
    GROUP_LEAVES, LEAF,
};
use crate::wire::{Message, Range, Value16, BLOCK, MAX_REQUEST_ITEMS};

/// Leaves being built at once: their bytes (64 KiB each) are the
/// receiver's memory, 16 MiB at most.
pub const MAX_BUILDING: usize = 256;

/// Values of its own leaves the receiver holds at most before the caller
/// should pause hashing ([`Receiver::wants_own_groups`]): 2 MiB, 4 GiB of
/// image ahead of what is handed out.
pub const MAX_OWN_AHEAD: usize = 1 << 16;

/// How the result is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Into a new file: every leaf is written, old bytes stay readable.
    Copy,
    /// Over the old image: leaves handed out are written as they come, so
    /// no old byte below the first leaf not yet handed out is read again.
    InPlace,
}

/// A leaf of the new image, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// The leaf's bytes are the old image's at the same offset.
    Unchanged { leaf: u64 },
    /// The leaf's new bytes, verified.
    Changed {
        leaf: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
}

/// Counts for the summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub groups_differing: u64,
    pub leaves_differing: u64,
    /// Blocks taken from the old image (same offset, moved or shifted).
    pub blocks_found: u64,
    /// Blocks asked from the sender.
    pub blocks_wanted: u64,
    /// Leaves whose first build did not match and were asked whole.
    pub leaves_retried: u64,
    /// A dry run: the bytes the `DATA` of the wanted blocks would have
    /// taken on the data stream, headers included.
    pub data_bytes_measured: u64,
}

/// Why a session failed on the receiver's side.
#[derive(Debug)]
pub enum SyncError {
    /// The sender broke the protocol or sent bytes that are not its image.
    Sender(String),
    /// The old image could not be read.
    Io(std::io::Error),
    /// The streams to or from the sender failed (a dropped link).
    Link(std::io::Error),
    /// The target could not be written.
    Write(std::io::Error),
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sender(s) => write!(f, "the sender cannot be followed: {s}"),
            Self::Io(e) => write!(f, "cannot read the old image: {e}"),
            Self::Link(e) => write!(f, "the link to the sender broke: {e}"),
            Self::Write(e) => write!(f, "cannot write the target: {e}"),
        }
    }
}

impl std::error::Error for SyncError {}

impl From<std::io::Error> for SyncError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

fn broke<T>(s: impl Into<String>) -> Result<T, SyncError> {
    Err(SyncError::Sender(s.into()))
}

/// What the sender announced.
#[derive(Debug, Clone, Copy)]
struct NewImage {
    len: u64,
}

/// A leaf whose bytes are being put together.
#[derive(Debug)]
struct Build {
    bytes: Vec<u8>,
    /// Ranges asked and not yet received, by offset.
    asked: HashMap<u64, u32>,
    /// Asked whole after a first build that did not match.
    retried: bool,
}

/// One session of the receiver with one sender.
#[derive(Debug)]
pub struct Receiver<'a, O: OldImage + ?Sized> {
    old: &'a O,
    old_len: u64,
    mode: Mode,
    /// The values of its own leaves from `own_base` on: those before the
    /// first leaf not handed out are dropped.
    own: VecDeque<Value>,
    own_base: u64,
    own_groups: u64,
    own_done: bool,
    new: Option<NewImage>,
    /// The new image's BLAKE3, which the sender sends after its groups.
    their_root: Option<[u8; 32]>,
    /// A dry run: the wanted blocks are measured, not fetched, and
    /// nothing is handed out to be written.
    dry_run: bool,
    matcher: Option<Matcher>,
    theirs: Vec<Value16>,
    compared: u64,
    asked_groups: HashMap<u64, ()>,
    their_leaves: HashMap<u64, Value16>,
    to_key: VecDeque<u64>,
    keys_asked: HashMap<u64, ()>,
    building: BTreeMap<u64, Build>,
    verdicts: BTreeMap<u64, (Ready, Value)>,
    next: u64,
    /// The root of the new image's leaves handed out so far.
    result: RootBuilder,
    out: Vec<Message>,
    ready: Vec<Ready>,
    /// The bytes of a new image of one leaf, which its root is made of.
    small: Option<Vec<u8>>,
    /// The values of the leaves handed out, when asked to keep them
    /// ([`Receiver::keep_leaf_values`]).
    handed: Option<Vec<Value>>,
    /// The decoder of `DATA`'s zstd stream, made at its first message.
    unpacker: Option<Unpacker>,
    done: bool,
    counts: Counts,
}

impl<'a, O: OldImage + ?Sized> Receiver<'a, O> {
    /// A session over the old image `old` of `old_len` bytes.
    pub fn new(old: &'a O, old_len: u64, mode: Mode) -> Self {
        Self {
            old,
            old_len,
            mode,
            own: VecDeque::new(),
            own_base: 0,
            own_groups: 0,
            own_done: false,
            new: None,
            their_root: None,
            dry_run: false,
            matcher: None,
            theirs: Vec::new(),
            compared: 0,
            asked_groups: HashMap::new(),
            their_leaves: HashMap::new(),
            to_key: VecDeque::new(),
            keys_asked: HashMap::new(),
            building: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            next: 0,
            result: RootBuilder::default(),
            out: Vec::new(),
            ready: Vec::new(),
            small: None,
            handed: None,
            unpacker: None,
            done: false,
            counts: Counts::default(),
        }
    }

    /// Makes this session a dry run (`applypatch --check`): it compares and
    /// matches as a sync would, but asks the sender what the wanted blocks
    /// would take (`MEASURE`) instead of taking them, hands nothing out to
    /// be written, and ends without a root to check (none was built).
    pub fn dry_run(&mut self) {
        self.dry_run = true;
    }

    /// Keeps the value of every leaf handed out (32 bytes per 64 KiB), so
    /// that the result's tree can be cached ([`Receiver::leaf_values`]).
    pub fn keep_leaf_values(&mut self) {
        self.handed.get_or_insert_with(Vec::new);
    }

    /// The values of the new image's leaves, once the session is done and
    /// [`Receiver::keep_leaf_values`] was called.
    pub fn leaf_values(&mut self) -> Option<Vec<Value>> {
        self.handed.take().filter(|_| self.done)
    }

    /// The next group of the old image was hashed: the values of its leaves.
    pub fn own_group(&mut self, g: u64, leaves: &[Value]) -> Result<(), SyncError> {
        debug_assert_eq!(g, self.own_groups, "own groups come in order");
        self.own.extend(leaves);
        self.own_groups += 1;
        self.progress()
    }

    /// Whether to go on hashing: false while the values of its own leaves
    /// not yet handed out reach [`MAX_OWN_AHEAD`] (the link is slower
    /// than the disk); more messages make room.
    pub fn wants_own_groups(&self) -> bool {
        self.own.len() < MAX_OWN_AHEAD
    }

    fn own_at(&self, leaf: u64) -> Option<&Value> {
        self.own
            .get(usize::try_from(leaf.checked_sub(self.own_base)?).ok()?)
    }

    /// The old image is hashed whole.
    pub fn own_done(&mut self) -> Result<(), SyncError> {
        self.own_done = true;
        self.progress()
    }

    /// Messages to send to the sender, in order.
    pub fn outgoing(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.out)
    }

    /// Leaves to write, in order.
    pub fn ready(&mut self) -> Vec<Ready> {
        std::mem::take(&mut self.ready)
    }

    /// The new image's length, once the sender said it.
    pub fn new_len(&self) -> Option<u64> {
        self.new.map(|n| n.len)
    }

    /// The session is over: every leaf handed out and the root matched.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// What was found and asked so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Takes one message of the sender.
    pub fn take(&mut self, m: Message) -> Result<(), SyncError> {
        match m {
            Message::Image {
                len,
                leaf_log2,
                group_leaves,
                key_seed,
            } => {
                if self.new.is_some() {
                    return broke("it announced its image twice");
                }
                if u64::from(leaf_log2) != u64::from(LEAF.trailing_zeros())
                    || usize::from(group_leaves) != GROUP_LEAVES
                {
                    return broke(format!(
                        "its tree has 2^{leaf_log2}-byte leaves in groups of {group_leaves}; this receiver knows 2^{} in {GROUP_LEAVES}",
                        LEAF.trailing_zeros()
                    ));
                }
                self.new = Some(NewImage { len });
                self.matcher = Some(Matcher::new(key_seed));
            }
            Message::Groups { first, values } => {
                let new = self.image()?;
                if u64::from(first) != self.theirs.len() as u64 {
                    return broke(format!(
                        "groups from {first} came after {} groups",
                        self.theirs.len()
                    ));
                }
                if self.theirs.len() as u64 + values.len() as u64 > group_count(new.len) {
                    return broke(format!(
                        "more groups than an image of {} bytes has",
                        new.len
                    ));
                }
                self.theirs.extend(values);
            }
            Message::Root { root } => {
                let new = self.image()?;
                if self.their_root.is_some() {
                    return broke("it sent its root twice");
                }
                if (self.theirs.len() as u64) < group_count(new.len) {
                    return broke(format!(
                        "it sent its root after {} of {} groups (the root comes last)",
                        self.theirs.len(),
                        group_count(new.len)
                    ));
                }
                self.their_root = Some(root);
            }
            Message::Measured(items) if self.dry_run => {
                for m in items {
                    self.measured(m)?;
                }
            }
            Message::Leaves { group, values } => self.their_leaves_of(group.into(), &values)?,
            Message::Keys { leaf, keys } => {
                let leaf = u64::from(leaf);
                if self.keys_asked.remove(&leaf).is_none() {
                    return broke(format!("keys of leaf {leaf}, which were not asked"));
                }
                self.plan(leaf, &keys)?;
            }
            Message::Data {
                offset,
                raw_len,
                codec,
                bytes,
            } => self.data(offset, raw_len, codec, &bytes)?,
            Message::Error(sentence) => return broke(format!("it said: {sentence}")),
            other => return broke(format!("it sent {other:?}, which only a receiver sends")),
        }
        self.progress()
    }

    fn image(&self) -> Result<NewImage, SyncError> {
        self.new.ok_or_else(|| {
            SyncError::Sender("it sent a message before announcing its image".into())
        })
    }

    /// Compares what both sides have, asks for what the window allows,
    /// hands out what is ready, and ends the session when all is.
    fn progress(&mut self) -> Result<(), SyncError> {
        let Some(new) = self.new else { return Ok(()) };
        let groups = group_count(new.len);
        let mut want_leaves = Vec::new();
        while self.compared < groups && (self.compared as usize) < self.theirs.len() {
            let g = self.compared;
            let first_leaf = g * GROUP_LEAVES as u64;
            let own = if g < self.own_groups {
                let values: Vec<Value> = (first_leaf..first_leaf + GROUP_LEAVES as u64)
                    .map_while(|l| self.own_at(l).copied())
                    .collect();
                group_value(self.old_len, g, &values)
            } else if self.own_done {
                None
            } else {
                break;
            };
            let leaves = first_leaf..leaf_count(new.len).min(first_leaf + GROUP_LEAVES as u64);
            // A group equal in value is equal in length too (the value
            // covers its length), so every leaf of it is the old one.
            if own.is_some_and(|v| value16(&v) == self.theirs[g as usize]) {
                for leaf in leaves {
                    if let Some(&value) = self.own_at(leaf) {
                        self.verdicts
                            .insert(leaf, (Ready::Unchanged { leaf }, value));
                    }
                }
            } else {
                self.counts.groups_differing += 1;
                self.asked_groups.insert(g, ());
                want_leaves.push(g as u32);
            }
            self.compared += 1;
        }
        for chunk in want_leaves.chunks(MAX_REQUEST_ITEMS) {
            self.out.push(Message::WantLeaves(chunk.to_vec()));
        }
        self.ask_keys();
        self.hand_out();
        let whole = self.next == leaf_count(new.len) && self.compared == groups;
        if whole && !self.done && (self.their_root.is_some() || self.dry_run) {
            self.finish(new)?;
        }
        Ok(())
    }

    fn their_leaves_of(&mut self, group: u64, values: &[Value16]) -> Result<(), SyncError> {
        let new = self.image()?;
        if self.asked_groups.remove(&group).is_none() {
            return broke(format!("the leaves of group {group}, which were not asked"));
        }
        let first = group * GROUP_LEAVES as u64;
        let count = leaf_count(new.len).min(first + GROUP_LEAVES as u64) - first;
        if values.len() as u64 != count {
            return broke(format!(
                "{} leaves for group {group}, which has {count}",
                values.len()
            ));
        }
        for (leaf, v) in (first..).zip(values) {
            match self.own_at(leaf).copied() {
                // A full old leaf equal in value is the new leaf, unless
                // the new one is the shorter last leaf (then they differ).
                Some(own)
                    if value16(&own) == *v
                        && leaf_range(self.old_len, leaf) == leaf_range(new.len, leaf) =>
                {
                    self.verdicts.insert(leaf, (Ready::Unchanged { leaf }, own));
                }
                _ => {
                    self.counts.leaves_differing += 1;
                    self.their_leaves.insert(leaf, *v);
                    self.to_key.push_back(leaf);
                }
            }
        }
        Ok(())
    }

    /// Asks keys for as many differing leaves as the build window allows.
    fn ask_keys(&mut self) {
        let mut ask = Vec::new();
        while self.building.len() + self.keys_asked.len() < MAX_BUILDING {
            let Some(leaf) = self.to_key.pop_front() else {
                break;
            };
            self.keys_asked.insert(leaf, ());
            ask.push(leaf as u32);
        }
        for chunk in ask.chunks(MAX_REQUEST_ITEMS) {
            self.out.push(Message::WantKeys(chunk.to_vec()));
        }
    }

    /// Finds what it can of `leaf` in the old image, reads it now (before
    /// the writer can reach it), and asks the sender for the rest.
    fn plan(&mut self, leaf: u64, keys: &[crate::wire::BlockKey]) -> Result<(), SyncError> {
        let new = self.image()?;
        let matcher = self
            .matcher
            .as_mut()
            .ok_or_else(|| SyncError::Sender("keys before the image".into()))?;
        if self.mode == Mode::InPlace {
            matcher.forbid_below(self.next * LEAF);
        }
        let sources = match matcher.plan(self.old, new.len, leaf, keys) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return broke(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        let r = leaf_range(new.len, leaf);
        let mut build = Build {
            bytes: vec![0; (r.end - r.start) as usize],
            asked: HashMap::new(),
            retried: false,
        };
        let mut wanted: Vec<Range> = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            let at = i * BLOCK as usize;
            let end = (at + BLOCK as usize).min(build.bytes.len());
            match *s {
                Source::Old(o) => {
                    self.counts.blocks_found += 1;
                    self.old.read_at(&mut build.bytes[at..end], o)?;
                }
                Source::Want => {
                    self.counts.blocks_wanted += 1;
                    let offset = r.start + at as u64;
                    let len = (end - at) as u32;
                    match wanted.last_mut() {
                        Some(last) if last.offset + u64::from(last.len) == offset => {
                            last.len += len
                        }
                        _ => wanted.push(Range { offset, len }),
                    }
                }
            }
        }
        build.asked = wanted.iter().map(|w| (w.offset, w.len)).collect();
        if !wanted.is_empty() {
            self.out.push(if self.dry_run {
                Message::Measure(wanted)
            } else {
                Message::WantData(wanted)
            });
        }
        self.building.insert(leaf, build);
        self.try_finish_leaf(leaf)
    }

    fn data(
        &mut self,
        offset: u64,
        raw_len: u32,
        codec: u8,
        bytes: &[u8],
    ) -> Result<(), SyncError> {
        let leaf = offset / LEAF;
        let leaf_at = leaf * LEAF;
        let Some(build) = self.building.get_mut(&leaf) else {
            return broke(format!("bytes at {offset}, which were not asked"));
        };
        if build.asked.remove(&offset) != Some(raw_len) {
            return broke(format!("{raw_len} bytes at {offset}, which were not asked"));
        }
        let at = (offset - leaf_at) as usize;
        let dst = &mut build.bytes[at..at + raw_len as usize];
        match codec {
            CODEC_RAW if bytes.len() == dst.len() => dst.copy_from_slice(bytes),
            CODEC_ZSTD_STREAM => {
                let unpacker = match &mut self.unpacker {
                    Some(u) => u,
                    None => self
                        .unpacker
                        .insert(Unpacker::new().map_err(SyncError::Io)?),
                };
                unpacker
                    .unpack(bytes, dst)
                    .map_err(|e| SyncError::Sender(format!("its data at {offset}: {e}")))?;
            }
            CODEC_ZSTD => {
                let n = zstd::bulk::decompress_to_buffer(bytes, dst).map_err(|e| {
                    SyncError::Sender(format!("its data at {offset} does not decode: {e}"))
                })?;
                if n != dst.len() {
                    return broke(format!(
                        "its data at {offset} decodes to {n} bytes, not {raw_len}"
                    ));
                }
            }
            _ => {
                return broke(format!(
                    "its data at {offset} has codec {codec} and {} bytes for {raw_len}",
                    bytes.len()
                ))
            }
        }
        self.try_finish_leaf(leaf)
    }

    /// A dry run: the size `DATA` would have had for a range asked.
    fn measured(&mut self, m: crate::wire::Measure) -> Result<(), SyncError> {
        let (offset, len) = (m.range.offset, m.range.len);
        let leaf = offset / LEAF;
        let asked = self
            .building
            .get_mut(&leaf)
            .is_some_and(|b| b.asked.remove(&offset) == Some(len));
        if !asked {
            return broke(format!(
                "a size for {len} bytes at {offset}, which were not asked"
            ));
        }
        // A `DATA` message: the frame's header, offset, raw_len and codec.
        self.counts.data_bytes_measured +=
            crate::wire::FRAME_HEADER as u64 + 13 + u64::from(m.packed);
        if self.building.get(&leaf).is_some_and(|b| b.asked.is_empty()) {
            // Its bytes were not fetched: nothing of it is checked or written.
            self.building.remove(&leaf);
            self.their_leaves.remove(&leaf);
            self.verdicts
                .insert(leaf, (Ready::Unchanged { leaf }, [0; 32]));
        }
        Ok(())
    }

    /// A leaf whose bytes are all there is checked against the sender's
    /// value: kept if it matches, asked whole once if not.
    fn try_finish_leaf(&mut self, leaf: u64) -> Result<(), SyncError> {
        let Some(build) = self.building.get_mut(&leaf) else {
            return Ok(());
        };
        if !build.asked.is_empty() {
            return Ok(());
        }
        if self.dry_run {
            // Every block was found in the old image: a dry run does not
            // check it (a real sync would, and might ask it whole).
            self.building.remove(&leaf);
            self.their_leaves.remove(&leaf);
            self.verdicts
                .insert(leaf, (Ready::Unchanged { leaf }, [0; 32]));
            return Ok(());
        }
        let leaf_at = leaf * LEAF;
        let value = leaf_value(leaf_at, &build.bytes);
        let theirs = self.their_leaves.get(&leaf).copied();
        if theirs == Some(value16(&value)) {
            let build = self
                .building
                .remove(&leaf)
                .map(|b| b.bytes)
                .unwrap_or_default();
            self.their_leaves.remove(&leaf);
            self.verdicts.insert(
                leaf,
                (
                    Ready::Changed {
                        leaf,
                        offset: leaf_at,
                        bytes: build,
                    },
                    value,
                ),
            );
            return Ok(());
        }
        if build.retried {
            return broke(format!(
                "its bytes for leaf {leaf} (at {leaf_at}) do not match its own tree"
            ));
        }
        // A block key collided, or old bytes changed under us: ask whole.
        self.counts.leaves_retried += 1;
        build.retried = true;
        let len = build.bytes.len() as u32;
        build.asked = HashMap::from([(leaf_at, len)]);
        self.out.push(Message::WantData(vec![Range {
            offset: leaf_at,
            len,
        }]));
        Ok(())
    }

    /// Hands out the leaves that are ready, in order.
    fn hand_out(&mut self) {
        while let Some((ready, value)) = self.verdicts.remove(&self.next) {
            if let (Ready::Changed { bytes, .. }, Some(new)) = (&ready, self.new) {
                if new.len <= LEAF {
                    self.small = Some(bytes.clone());
                }
            }
            if !self.dry_run {
                self.ready.push(ready);
            }
            self.result.push(value);
            if let Some(handed) = &mut self.handed {
                handed.push(value);
            }
            self.next += 1;
        }
        while self.own_base < self.next && self.own.pop_front().is_some() {
            self.own_base += 1;
        }
    }

    /// Every leaf is out: their root must be the sender's BLAKE3.
    fn finish(&mut self, new: NewImage) -> Result<(), SyncError> {
        if self.dry_run {
            self.out.push(Message::Done { root: [0; 32] });
            self.done = true;
            return Ok(());
        }
        let ours = match self.result.finish() {
            Some(h) => *h.as_bytes(),
            // One leaf or none: the root is the hash of its bytes.
            None => *blake3::hash(&self.small_image(new.len)?).as_bytes(),
        };
        if Some(ours) != self.their_root {
            return broke("the image built, leaf by leaf as it announced, does not have the BLAKE3 it announced");
        }
        self.out.push(Message::Done { root: ours });
        self.done = true;
        Ok(())
    }

    /// The bytes of a new image of at most one leaf, from what was handed out.
    fn small_image(&self, len: u64) -> Result<Vec<u8>, SyncError> {
        if let Some(bytes) = &self.small {
            return Ok(bytes.clone());
        }
        let mut bytes = vec![0; len as usize];
        self.old.read_at(&mut bytes, 0)?;
        Ok(bytes)
    }
}
