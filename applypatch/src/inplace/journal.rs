//! The state file of an in-place apply and the sink that writes through it.
//!
//! The units the engine hands out (verified segments, copy chunks, zero
//! runs) are written in *windows*: runs of units after the committed offset,
//! ended by a commit. Only the bytes that differ from what the target holds
//! are written. A unit is written in one of two ways:
//!
//! - **directly**, when no old byte it or an earlier unit of the window read
//!   is among the bytes it changes. A crash before the commit leaves those
//!   reads intact, so the engine, resumed at the committed offset, makes
//!   the same bytes again: literal and zero segments, copies from elsewhere,
//!   and deltas or copies whose changed bytes nobody read;
//! - **through the journal**, for the changed runs that it or an earlier
//!   unit of the window read (a delta, a copy from its own range, zstd
//!   history over its own range): a replay could not make them again, so
//!   they are recorded in the state file before the target gets them.
//!
//! So the choice is made per changed run, not per unit: a segment of
//! literals and deltas journals only what its deltas changed. Zero runs
//! read nothing; one that clears bytes the window read waits for a commit.
//! A window is committed in ordered steps, each ended by an fsync: (direct
//! writes, already done; the target is synced if any are not yet durable)
//! the journal record; the journaled runs on the target; the progress slot
//! with the window's end.
//!
//! **The state file stays empty until the first journal record.** Direct
//! writes need no record: a target that holds the old image with some of
//! them done makes the new image again when the whole patch is run over it
//! once more. So an apply that journals nothing writes no byte of state
//! (its empty, locked state file marks the target as being written), and
//! after a crash the next run, finding that empty file, checks that the
//! patch run over the target as it is makes the new image (every segment
//! and the new hash), and only then writes. The identity is written with
//! the first journal record, so every state file that has one can be
//! resumed from its committed offset.
//!
//! After a crash, the next run replays a journal record that is intact but
//! not committed (its runs are final bytes, so replaying is idempotent) and
//! resumes the engine at the committed offset. The in-place rule (no unit
//! reads target bytes before its own start) keeps what lies after that
//! offset, and every byte a replay reads, as the old image had it.
//!
//! Each segment's full BLAKE3 from the verifying pass is pinned in memory
//! (spec section 7), and in the state file only for patches of more than
//! [`PINS_IN_MEMORY`] segments; a resume pins what its own checking pass
//! verified.
//!
//! State file layout (little endian; each record sealed by the first 16
//! bytes of the BLAKE3 of the bytes before it, which detects a torn write):
//!
//! | offset | size | content |
//! |--------|------|---------|
//! | 0x000  | 104  | identity: magic `ANYPSTAT`, version 3, 4 reserved bytes, BLAKE3 of the patch, the new length, the target (kind, device, inode), its length when the apply began; seal |
//! | 0x080  | 32   | progress slot A: sequence, committed offset; seal |
//! | 0x0a0  | 32   | progress slot B (slots alternate; the valid one with the higher sequence counts) |
//! | 0x100  | 40 + len | journal record: sequence, window end, runs length, the runs (per run the gap since the last run's end and its length, LEB128, then its bytes); seal |
//! | 0x2000000 | 32 n | pins, only for patches of more than [`PINS_IN_MEMORY`] segments: the full BLAKE3 of each segment verified, in order |

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anypatch_apply::format::Hash;

use crate::{DriveError, Sink};

const MAGIC: &[u8; 8] = b"ANYPSTAT";
const VERSION: u32 = 3;
const SEAL_LEN: usize = 16;
const IDENTITY_AT: u64 = 0x000;
const IDENTITY_LEN: usize = 88;
const SLOT_LEN: usize = 16;
const SLOT_AT: [u64; 2] = [0x080, 0x0a0];
const JOURNAL_AT: u64 = 0x100;
/// The journal record before its runs: sequence, window end, runs length.
const JOURNAL_HEAD: usize = 24;
/// Past the largest journal record this program writes (twice a window's
/// bytes and a segment, well under 32 MiB).
const PINS_AT: u64 = 0x200_0000;
/// Segments whose pins are kept in memory (32 bytes each); more go to the
/// state file.
pub const PINS_IN_MEMORY: u64 = 0x1_0000;
/// Differing byte runs closer than this are written as one.
const WRITE_MERGE_GAP: usize = 16;
/// Default for the most changed bytes in one window (a window also ends
/// after [`BATCH_UNITS`] units, or units spanning [`SPAN_PER_BATCH`] times this).
pub const BATCH_BYTES: usize = 0x40_0000;
const BATCH_UNITS: usize = 0x1000;
/// Journaled bytes above which ending the window is cheaper (a commit
/// writes a progress slot and a journal record).
const COMMIT_COST: usize = 256;
/// A window also ends when its units span this many times the batch limit.
const SPAN_PER_BATCH: u64 = 16;
/// Read ranges kept while commits are not recorded, beyond which the
/// identity is written so that they can be forgotten.
const UNRECORDED_READS: usize = 0x1000;
/// Target bytes compared per read when finding what differs.
const COMPARE_CHUNK: usize = 0x4_0000;

/// Bytes written to state files by this process, for the write-amplification test hook.
pub(crate) static STATE_BYTES: AtomicU64 = AtomicU64::new(0);

/// Which target a state file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetId {
    /// A regular file: the device and inode it lives on.
    File { dev: u64, ino: u64 },
    /// A block device: its device number, and for a loop device which file
    /// is behind it (a digest of that file's device and inode; 0 for
    /// other devices), since a loop number is reused for other files.
    Block { rdev: u64, backing: u64 },
}

impl std::fmt::Display for TargetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use rustix::fs::{major, minor};
        match *self {
            Self::File { dev, ino } => {
                write!(
                    f,
                    "the file with inode {ino} on device {}:{}",
                    major(dev),
                    minor(dev)
                )
            }
            Self::Block { rdev, backing: 0 } => {
                write!(f, "block device {}:{}", major(rdev), minor(rdev))
            }
            Self::Block { rdev, backing } => write!(
                f,
                "block device {}:{} over the file with id {backing:016x}",
                major(rdev),
                minor(rdev)
            ),
        }
    }
}

/// What a state file is about: the patch and the target. The images'
/// hashes and lengths come from the patch's header, which the patch hash
/// pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// BLAKE3 of the patch (zero until the verifying pass has ended).
    pub patch_hash: Hash,
    pub new_len: u64,
    pub target: TargetId,
    /// The target's size when the apply began.
    pub target_len: u64,
}

impl Identity {
    fn encode(&self) -> Vec<u8> {
        let (kind, a, b) = match self.target {
            TargetId::File { dev, ino } => (1u32, dev, ino),
            TargetId::Block { rdev, backing } => (2, rdev, backing),
        };
        let mut v = Vec::with_capacity(IDENTITY_LEN + SEAL_LEN);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&self.patch_hash);
        v.extend_from_slice(&self.new_len.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        for n in [a, b, self.target_len] {
            v.extend_from_slice(&n.to_le_bytes());
        }
        debug_assert_eq!(v.len(), IDENTITY_LEN);
        seal(v)
    }

    fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.get(..8) != Some(&MAGIC[..]) {
            return Err("it is not an anypatch state file");
        }
        let word = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        if word(8) != VERSION {
            return Err("it was written by another version of applypatch; finish its apply with that version");
        }
        let b = unseal(b, IDENTITY_LEN).ok_or("it is damaged")?;
        let long = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let target = match word(56) {
            1 => TargetId::File {
                dev: long(64),
                ino: long(72),
            },
            2 => TargetId::Block {
                rdev: long(64),
                backing: long(72),
            },
            _ => return Err("it is damaged"),
        };
        Ok(Self {
            patch_hash: b[16..48].try_into().expect("32 bytes"),
            new_len: long(48),
            target,
            target_len: long(80),
        })
    }
}

/// Appends the seal of `v` (its BLAKE3, truncated) to it.
fn seal(mut v: Vec<u8>) -> Vec<u8> {
    let h = blake3::hash(&v);
    v.extend_from_slice(&h.as_bytes()[..SEAL_LEN]);
    v
}

/// The first `len` bytes of `b` if the bytes after them are their seal.
fn unseal(b: &[u8], len: usize) -> Option<&[u8]> {
    let (body, rest) = b.split_at_checked(len)?;
    (rest.get(..SEAL_LEN)? == &blake3::hash(body).as_bytes()[..SEAL_LEN]).then_some(body)
}

fn slot(seq: u64, done: u64) -> Vec<u8> {
    let mut v = seq.to_le_bytes().to_vec();
    v.extend_from_slice(&done.to_le_bytes());
    seal(v)
}

/// The committed (sequence, offset) of a state file: the valid slot with
/// the higher sequence; (0, 0) when none is valid.
fn read_slots(file: &File) -> (u64, u64) {
    let (mut seq, mut done) = (0, 0);
    for at in SLOT_AT {
        let mut b = [0u8; SLOT_LEN + SEAL_LEN];
        if file.read_exact_at(&mut b, at).is_ok() {
            if let Some(body) = unseal(&b, SLOT_LEN) {
                let s = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                if s >= seq {
                    seq = s;
                    done = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
                }
            }
        }
    }
    (seq, done)
}

fn journal_record(seq: u64, end: u64, runs: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(JOURNAL_HEAD + runs.len() + SEAL_LEN);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&end.to_le_bytes());
    v.extend_from_slice(&(runs.len() as u64).to_le_bytes());
    v.extend_from_slice(runs);
    seal(v)
}

/// Appends a run to an encoded journal whose last run ended at `*end`:
/// LEB128 of the gap since then and of the length, then the bytes. Runs
/// come in increasing offsets, so a few-byte edit costs a few bytes more.
fn encode_run(journal: &mut Vec<u8>, end: &mut u64, offset: u64, data: &[u8]) {
    for mut n in [offset - *end, data.len() as u64] {
        while n >= 0x80 {
            journal.push(n as u8 | 0x80);
            n >>= 7;
        }
        journal.push(n as u8);
    }
    journal.extend_from_slice(data);
    *end = offset + data.len() as u64;
}

/// The runs of an encoded journal, in order: (offset, bytes).
fn decode_runs(mut runs: &[u8]) -> io::Result<Vec<(u64, &[u8])>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "damaged journal runs");
    let varint = |runs: &mut &[u8]| -> io::Result<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = runs.split_first().ok_or_else(bad)?;
            *runs = rest;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(bad())
    };
    let (mut out, mut end) = (Vec::new(), 0u64);
    while !runs.is_empty() {
        let gap = varint(&mut runs)?;
        let len = usize::try_from(varint(&mut runs)?).map_err(|_| bad())?;
        let offset = end.checked_add(gap).ok_or_else(bad)?;
        let data = runs.get(..len).ok_or_else(bad)?;
        runs = &runs[len..];
        end = offset + len as u64;
        out.push((offset, data));
    }
    Ok(out)
}

/// An intact journal record that was not committed: replaying it makes the
/// target final up to `end`.
#[derive(Debug)]
pub struct PendingJournal {
    pub end: u64,
    runs: Vec<u8>,
}

impl PendingJournal {
    /// The journaled runs: (offset, final bytes), in increasing offsets.
    pub fn runs(&self) -> io::Result<Vec<(u64, &[u8])>> {
        decode_runs(&self.runs)
    }
}

/// What [`State::open`] found at a state file's path.
#[derive(Debug)]
pub enum Found {
    /// No state file: no apply to this target was interrupted.
    Nothing,
    /// An empty state file, now locked by this run: an apply was
    /// interrupted before it journaled anything, so the target holds the
    /// old image with some direct writes done (or, if something else wrote
    /// to it since, anything at all).
    Interrupted(Claim),
    /// An apply that journaled, to be resumed from its committed offset.
    Unfinished(State),
}

/// A state file that is open and locked by this run, with nothing in it.
#[derive(Debug)]
pub struct Claim {
    file: File,
    path: PathBuf,
}

/// The pins of the segments this process verified: their full BLAKE3, in
/// order, in memory, or in the state file past [`PINS_IN_MEMORY`].
#[derive(Debug, Default)]
struct Pins {
    /// Index of the first segment pinned.
    first: u64,
    count: u64,
    memory: Vec<Hash>,
    spilled: bool,
}

/// An open state file, locked against other runs.
#[derive(Debug)]
pub struct State {
    file: File,
    path: PathBuf,
    pub identity: Identity,
    /// The identity is in the file (written with the first journal record).
    recorded: bool,
    seq: u64,
    /// New-file offset before which the target is final.
    pub done: u64,
    pins: Pins,
}

impl State {
    /// Opens and locks the state file at `path`, if there is one.
    pub fn open(path: &Path) -> Result<Found, DriveError> {
        use std::os::unix::fs::OpenOptionsExt;
        let not_ours = |what: &str| {
            DriveError::Refused(format!(
                "{} is {what}, not an anypatch state file; nothing was written, and it is left as it is. Give --state a path of its own",
                path.display()
            ))
        };
        // Never through a symlink, and never anything but a regular file:
        // the state file is written and, at the end, removed.
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(not_ours("a symbolic link"))
            }
            Err(e) => return Err(io_err(path, "cannot open the state file")(e)),
        };
        let meta = file
            .metadata()
            .map_err(io_err(path, "cannot stat the state file"))?;
        if !meta.is_file() {
            return Err(not_ours(anypatch_safe_output::a_kind(meta.file_type())));
        }
        if let Kind::Foreign = kind_of(&file) {
            // Before the lock: the target or the patch given as --state is
            // named as what it is, not as a state "in use".
            return Err(not_ours("a file with other data in it"));
        }
        lock_state(&file, path)?;
        match kind_of(&file) {
            Kind::Unrecorded => {
                return Ok(Found::Interrupted(Claim {
                    file,
                    path: path.to_path_buf(),
                }))
            }
            Kind::Foreign => return Err(not_ours("a file with other data in it")),
            Kind::Recorded => {}
        }
        let identity = read_identity(&file).map_err(|why| {
            DriveError::Refused(format!(
                "the state file {} cannot be used: {why}; nothing was written. If the target was never written by it, remove it and run again",
                path.display()
            ))
        })?;
        let (seq, done) = read_slots(&file);
        Ok(Found::Unfinished(Self {
            file,
            path: path.to_path_buf(),
            identity,
            recorded: true,
            seq,
            done,
            pins: Pins::default(),
        }))
    }

    /// Creates and locks a state file at the start of the verifying pass,
    /// or takes over the empty one `claim` holds. Writes nothing to it: the
    /// identity goes in with the first journal record.
    pub fn create(
        path: &Path,
        identity: Identity,
        claim: Option<Claim>,
    ) -> Result<Self, DriveError> {
        let file = match claim {
            Some(c) => c.file,
            None => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(io_err(dir, "cannot create the state directory"))?;
                }
                let file = create_locked(path)?;
                // The name must be durable before the target's first write:
                // the next run finds an interrupted apply by it.
                sync_dir(path);
                file
            }
        };
        failpoint();
        Ok(Self {
            file,
            path: path.to_path_buf(),
            identity,
            recorded: false,
            seq: 0,
            done: 0,
            pins: Pins::default(),
        })
    }

    /// A copy of this state at `path` (which must not exist), naming
    /// `target`: the same image under another id takes the interrupted
    /// apply over, and this state stays for the target it names.
    pub fn copy_for(
        &self,
        path: &Path,
        target: TargetId,
        target_len: u64,
    ) -> Result<Self, DriveError> {
        let file = create_locked(path)?;
        let len = self
            .file
            .metadata()
            .map_err(io_err(&self.path, "cannot stat the state file"))?
            .len();
        let mut buf = vec![0u8; 0x10_0000];
        let mut at = 0;
        while at < len {
            let n = read_up_to(&self.file, &mut buf, at)
                .map_err(io_err(&self.path, "cannot read the state file"))?;
            if n == 0 {
                break;
            }
            file.write_all_at(&buf[..n], at)
                .map_err(io_err(path, "cannot write the state file"))?;
            at += n as u64;
        }
        let identity = Identity {
            target,
            target_len,
            ..self.identity
        };
        file.write_all_at(&identity.encode(), IDENTITY_AT)
            .and_then(|()| file.sync_all())
            .map_err(io_err(path, "cannot write the state file"))?;
        sync_dir(path);
        Ok(Self {
            file,
            path: path.to_path_buf(),
            identity,
            recorded: true,
            seq: self.seq,
            done: self.done,
            pins: Pins::default(),
        })
    }

    /// Forgets the pins: a new verifying pass records them again.
    pub fn clear_pins(&mut self) {
        self.pins = Pins::default();
    }

    /// Records the full hash of segment `index`, verified by this process;
    /// segments come in order.
    pub fn pin(&mut self, index: u64, hash: &Hash) -> io::Result<()> {
        let p = &mut self.pins;
        if p.count == 0 {
            p.first = index;
        }
        if index != p.first + p.count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the patch's data segments are out of order",
            ));
        }
        if p.count == PINS_IN_MEMORY {
            // Many segments: the pins go to the state file, memory stays small.
            let all = p.memory.concat();
            p.memory = Vec::new();
            p.spilled = true;
            if !self.recorded {
                // The magic and version first: a file with data but no
                // magic is never taken for a state file.
                let mut head = MAGIC.to_vec();
                head.extend_from_slice(&VERSION.to_le_bytes());
                self.write_at(&head, IDENTITY_AT)?;
            }
            self.write_at(&all, PINS_AT)?;
        }
        let p = &mut self.pins;
        let at = PINS_AT + 32 * p.count;
        p.count += 1;
        if p.spilled {
            self.write_at(hash, at)
        } else {
            p.memory.push(*hash);
            Ok(())
        }
    }

    /// Whether segment `index` makes the output pinned earlier in this process.
    pub fn check_pin(&self, index: u64, hash: &Hash) -> io::Result<bool> {
        let p = &self.pins;
        let Some(i) = index.checked_sub(p.first).filter(|&i| i < p.count) else {
            return Ok(false);
        };
        if !p.spilled {
            return Ok(p.memory[i as usize] == *hash);
        }
        let mut pin = [0u8; 32];
        self.file.read_exact_at(&mut pin, PINS_AT + 32 * i)?;
        Ok(pin == *hash)
    }

    /// Ends the verifying pass: the patch that was verified. Written to the
    /// file with the first journal record.
    pub fn verified(&mut self, patch_hash: Hash) {
        self.identity.patch_hash = patch_hash;
    }

    /// The journal record that is intact but not committed, if any.
    pub fn pending_journal(&self) -> Result<Option<PendingJournal>, DriveError> {
        let mut head = [0u8; JOURNAL_HEAD];
        if self.file.read_exact_at(&mut head, JOURNAL_AT).is_err() {
            return Ok(None);
        }
        let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
        let (seq, end, len) = (word(0), word(8), word(16));
        // Committed already, or larger than any window this program journals.
        let most = 2 * (BATCH_BYTES as u64 + u64::from(anypatch_apply::format::MAX_SEGMENT_LEN));
        if seq <= self.seq || len > most || end < self.done {
            return Ok(None);
        }
        let mut record = vec![0u8; JOURNAL_HEAD + len as usize + SEAL_LEN];
        if self.file.read_exact_at(&mut record, JOURNAL_AT).is_err() {
            return Ok(None); // torn journal write: the target was not touched for it
        }
        let Some(body) = unseal(&record, JOURNAL_HEAD + len as usize) else {
            return Ok(None);
        };
        let runs = body[JOURNAL_HEAD..].to_vec();
        if decode_runs(&runs).is_err() {
            return Ok(None);
        }
        Ok(Some(PendingJournal { end, runs }))
    }

    /// Replays a journal record that is intact but not committed. Returns
    /// whether one was replayed.
    pub fn replay(&mut self, target: &mut TargetWriter<'_>) -> Result<bool, DriveError> {
        let Some(pending) = self.pending_journal()? else {
            return Ok(false);
        };
        let write = |target: &mut TargetWriter<'_>| -> io::Result<()> {
            for (offset, data) in pending.runs()? {
                target.write_all(offset, data)?;
            }
            Ok(())
        };
        write(target).map_err(io_err(target.path, "cannot write the target"))?;
        target.sync()?;
        self.commit(pending.end)?;
        Ok(true)
    }

    /// Writes the identity, durably: from now on commits are recorded.
    fn record(&mut self) -> io::Result<()> {
        failpoint();
        self.write_at(&self.identity.encode(), IDENTITY_AT)?;
        failpoint();
        self.file.sync_data()?;
        self.recorded = true;
        Ok(())
    }

    /// Records a window's journaled runs durably, before the target gets
    /// them; the first record brings the identity.
    fn journal(&mut self, end: u64, runs: &[u8]) -> io::Result<()> {
        failpoint();
        if !self.recorded {
            self.write_at(&self.identity.encode(), IDENTITY_AT)?;
        }
        self.write_at(&journal_record(self.seq + 1, end, runs), JOURNAL_AT)?;
        failpoint();
        self.file.sync_data()?;
        self.recorded = true;
        Ok(())
    }

    /// Records that the target is final before `done` (in the file once it
    /// has an identity; before that, a crash redoes the direct writes).
    fn commit(&mut self, done: u64) -> Result<(), DriveError> {
        if self.recorded {
            failpoint();
            self.seq += 1;
            let at = SLOT_AT[(self.seq % 2) as usize];
            self.write_at(&slot(self.seq, done), at)
                .and_then(|()| {
                    failpoint();
                    self.file.sync_data()
                })
                .map_err(io_err(&self.path, "cannot write the state file"))?;
        }
        self.done = done;
        Ok(())
    }

    fn write_at(&self, data: &[u8], at: u64) -> io::Result<()> {
        STATE_BYTES.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.file.write_all_at(data, at)
    }

    /// Removes the state file: the apply is complete and verified, or it
    /// never wrote to the target.
    pub fn remove(self) -> Result<(), DriveError> {
        remove_state(&self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Claim {
    /// Removes the empty state file: the target is known not to be half-written.
    pub fn remove(self) -> Result<(), DriveError> {
        remove_state(&self.path)
    }
}

fn remove_state(path: &Path) -> Result<(), DriveError> {
    match std::fs::remove_file(path) {
        // Removed by someone else: what matters, that it is gone, holds.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        r => r.map_err(io_err(path, "cannot remove the state file"))?,
    }
    sync_dir(path);
    Ok(())
}

/// Reads a state file's identity and committed offset without locking it
/// (to describe it). `Some(None)`: the file is there but empty, an apply
/// interrupted before its first journal record.
pub fn peek_identity(path: &Path) -> Option<Option<(Identity, u64)>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let file = File::open(path).ok()?;
    match kind_of(&file) {
        Kind::Unrecorded => return Some(None),
        Kind::Foreign => return None,
        Kind::Recorded => {}
    }
    let identity = read_identity(&file).ok()?;
    Some(Some((identity, read_slots(&file).1)))
}

/// Whether a state file has an identity: one without it (empty, or only
/// the magic and version that precede spilled pins) was left by an apply
/// that journaled nothing (the identity is written and synced with the
/// first journal record, before any journaled byte reaches the target).
fn kind_of(file: &File) -> Kind {
    let mut id = [0u8; IDENTITY_LEN + SEAL_LEN];
    let Ok(n) = read_up_to(file, &mut id, IDENTITY_AT) else {
        return Kind::Foreign;
    };
    if n == 0 {
        return Kind::Unrecorded; // empty: the marker of an apply that journaled nothing
    }
    if id[..8] != MAGIC[..] {
        return Kind::Foreign;
    }
    if id[12..].iter().all(|&b| b == 0) {
        Kind::Unrecorded // the header written before pins spill, no identity yet
    } else {
        Kind::Recorded
    }
}

/// What a file at a state path holds.
enum Kind {
    /// This program's state, without an identity.
    Unrecorded,
    /// This program's state with an identity (possibly damaged).
    Recorded,
    /// Anything else: never used, written or removed.
    Foreign,
}

fn read_identity(file: &File) -> Result<Identity, &'static str> {
    let mut id = [0u8; IDENTITY_LEN + SEAL_LEN];
    file.read_exact_at(&mut id, IDENTITY_AT)
        .map_err(|_| "it is too short to be a state file")?;
    Identity::decode(&id)
}

/// A new state file at `path` (never an existing one, nor through a
/// symlink), locked.
fn create_locked(path: &Path) -> Result<File, DriveError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path, "cannot create the state file"))?;
    lock_state(&file, path)?;
    Ok(file)
}

/// An exclusive lock on the state file for the whole run.
fn lock_state(file: &File, path: &Path) -> Result<(), DriveError> {
    use rustix::fs::{flock, FlockOperation};
    flock(file, FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        DriveError::Refused(format!(
            "the state file {} is in use by another applypatch; wait for it to finish",
            path.display()
        ))
    })
}

/// Writes to the target: only what differs from what it holds.
#[derive(Debug)]
pub struct TargetWriter<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub is_regular: bool,
    /// Target bytes actually written (differing bytes, and zeros where no hole could be punched).
    pub bytes_written: u64,
    scratch: Vec<u8>,
}

impl<'a> TargetWriter<'a> {
    pub fn new(file: &'a File, path: &'a Path, is_regular: bool) -> Self {
        Self {
            file,
            path,
            is_regular,
            bytes_written: 0,
            scratch: Vec::new(),
        }
    }

    fn write_all(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.bytes_written += data.len() as u64;
        Ok(())
    }

    /// The runs of `data` (to go at `offset`) that differ from the target,
    /// as ranges of `data`, equal gaps shorter than [`WRITE_MERGE_GAP`]
    /// merged. Bytes past the target's end count as zeros: the final length
    /// is set at the end, and nothing reads them before.
    fn differing(&mut self, offset: u64, data: &[u8]) -> io::Result<Vec<(usize, usize)>> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (k, chunk) in data.chunks(COMPARE_CHUNK).enumerate() {
            let base = k * COMPARE_CHUNK;
            self.scratch.clear();
            self.scratch.resize(chunk.len(), 0);
            read_up_to(self.file, &mut self.scratch, offset + base as u64)?;
            let mut i = 0;
            while i < chunk.len() {
                if self.scratch[i] == chunk[i] {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < chunk.len() && self.scratch[i] != chunk[i] {
                    i += 1;
                }
                match runs.last_mut() {
                    Some(last) if base + start - last.1 < WRITE_MERGE_GAP => last.1 = base + i,
                    _ => runs.push((base + start, base + i)),
                }
            }
        }
        Ok(runs)
    }

    /// Makes `len` bytes at `offset` zero: a punched hole in a regular file
    /// where the file system can, else written zeros where they differ.
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.is_regular {
            use rustix::fs::{fallocate, FallocateFlags};
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            if fallocate(self.file, flags, offset, len).is_ok() {
                return Ok(());
            }
        }
        const CHUNK: u64 = 0x10_0000;
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            for (a, b) in self.differing(offset + done, &zeros[..n])? {
                self.write_all(offset + done + a as u64, &zeros[a..b])?;
            }
            done += n as u64;
        }
        Ok(())
    }

    pub fn sync(&self) -> Result<(), DriveError> {
        failpoint();
        self.file
            .sync_data()
            .map_err(io_err(self.path, "cannot flush the target"))
    }
}

/// Reads as much of `buf` as the file has at `offset`, zeros after its end.
pub fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[got..].fill(0);
    Ok(got)
}

/// Byte ranges `[start, end)` of the target that old-byte reads covered.
#[derive(Debug, Default)]
struct Ranges {
    list: Vec<(u64, u64)>,
    sorted: bool,
}

impl Ranges {
    fn add(&mut self, start: u64, end: u64) {
        if start < end {
            self.list.push((start, end));
            self.sorted = false;
        }
    }

    fn append(&mut self, other: &mut Ranges) {
        self.list.append(&mut other.list);
        self.sorted = false;
    }

    fn clear(&mut self) {
        self.list.clear();
        self.sorted = true;
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether any of `ranges` (sorted) meets a range here.
    fn meets(&mut self, ranges: &[(u64, u64)]) -> bool {
        if self.list.is_empty() || ranges.is_empty() {
            return false;
        }
        if !self.sorted {
            self.list.sort_unstable();
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.list.len());
            for &(s, e) in &self.list {
                match merged.last_mut() {
                    Some(last) if s <= last.1 => last.1 = last.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            self.list = merged;
            self.sorted = true;
        }
        ranges.iter().any(|&(s, e)| {
            // The first range ending after s starts before e?
            let i = self.list.partition_point(|r| r.1 <= s);
            self.list.get(i).is_some_and(|r| r.0 < e)
        })
    }
}

/// A unit handed to [`JournaledSink::write_at`], held until it is known
/// whether it was a segment (whose pin must match before it is written).
#[derive(Debug)]
struct Held {
    offset: u64,
    data: Vec<u8>,
}

/// A [`Sink`] that writes units directly or through the journal, in
/// committed windows (see the module docs). Checks each segment's output
/// against its pin from the verifying pass before any of it is written.
#[derive(Debug)]
pub struct JournaledSink<'s, 't> {
    state: &'s mut State,
    target: TargetWriter<'t>,
    batch_limit: usize,
    /// Old-byte reads by the window's units so far.
    window_reads: Ranges,
    /// Old-byte reads since the last unit: the next unit's.
    unit_reads: Ranges,
    /// Reads that came while a unit was held (a copy chunk is known not to
    /// be a segment only at the next call): the unit after it's.
    next_reads: Ranges,
    window_units: usize,
    window_bytes: usize,
    window_span: u64,
    window_end: u64,
    /// Target writes since its last sync.
    unsynced: bool,
    /// The window's journaled runs, encoded, and where the last one ended.
    journal: Vec<u8>,
    journal_end: u64,
    held: Option<Held>,
    /// An error from inside the protocol, with its full context.
    error: Option<DriveError>,
}

impl<'s, 't> JournaledSink<'s, 't> {
    /// `batch_limit`: most unit bytes per window, at most [`BATCH_BYTES`].
    pub fn new(state: &'s mut State, target: TargetWriter<'t>, batch_limit: usize) -> Self {
        Self {
            state,
            target,
            batch_limit: batch_limit.clamp(1, BATCH_BYTES),
            window_reads: Ranges::default(),
            unit_reads: Ranges::default(),
            next_reads: Ranges::default(),
            window_units: 0,
            window_bytes: 0,
            window_span: 0,
            window_end: 0,
            unsynced: false,
            journal: Vec::new(),
            journal_end: 0,
            held: None,
            error: None,
        }
    }

    /// Target bytes written so far, and the error behind a failed call.
    pub fn into_parts(self) -> (u64, Option<DriveError>) {
        (self.target.bytes_written, self.error)
    }

    /// Keeps the error's context for the caller; the engine loop gets an io::Error.
    fn fail(&mut self, e: DriveError) -> io::Error {
        let msg = e.to_string();
        self.error = Some(e);
        io::Error::other(msg)
    }

    /// Writes a held unit: it was not a segment, or its pin matched.
    fn settle(&mut self) -> io::Result<()> {
        if let Some(h) = self.held.take() {
            self.unit(h.offset, Some(&h.data), h.data.len() as u64)?;
            // Reads that came while it was held belong to the next unit.
            std::mem::swap(&mut self.unit_reads, &mut self.next_reads);
        }
        Ok(())
    }

    fn unit(&mut self, offset: u64, data: Option<&[u8]>, len: u64) -> io::Result<()> {
        let Some(d) = data else {
            // Zeros read nothing; they wait for a commit only if the window
            // read what they clear.
            if self.window_reads.meets(&[(offset, offset + len)]) {
                self.commit_window(true)?;
            }
            failpoint();
            self.target.zero(offset, len)?;
            self.unsynced = true;
            failpoint();
            return self.unit_done(offset + len, 0, len);
        };
        let runs = self.target.differing(offset, d)?;
        let at = |&(a, b): &(usize, usize)| [(offset + a as u64, offset + b as u64)];
        // Runs only earlier units read: a commit first lets them go direct,
        // which costs less than journaling more than a little of them.
        let earlier_only: usize = runs
            .iter()
            .filter(|r| !self.unit_reads.meets(&at(r)) && self.window_reads.meets(&at(r)))
            .map(|(a, b)| b - a)
            .sum();
        if earlier_only > COMMIT_COST {
            self.commit_window(true)?;
        }
        // The window's reads, this unit's included: what a replay relies on.
        let mut reads = std::mem::take(&mut self.unit_reads);
        self.window_reads.append(&mut reads);
        self.unit_reads = reads;
        let (mut wrote, mut changed) = (false, 0);
        for (a, b) in runs {
            let (s, e) = (offset + a as u64, offset + b as u64);
            changed += b - a;
            if self.window_reads.meets(&[(s, e)]) {
                // A replay reads these bytes: they go through the journal.
                encode_run(&mut self.journal, &mut self.journal_end, s, &d[a..b]);
            } else {
                if !wrote {
                    failpoint();
                }
                self.target.write_all(s, &d[a..b])?;
                wrote = true;
            }
        }
        if wrote {
            self.unsynced = true;
            failpoint();
        }
        self.unit_done(offset + len, changed, len)
    }

    /// Ends the window when it changed `batch_limit` bytes, or its units
    /// span [`SPAN_PER_BATCH`] times that: each commit costs the state file a
    /// record, so windows are sized by what they change.
    fn unit_done(&mut self, end: u64, changed: usize, span: u64) -> io::Result<()> {
        self.window_units += 1;
        self.window_bytes += changed;
        self.window_span += span;
        self.window_end = end;
        if self.window_bytes >= self.batch_limit
            || self.window_span >= SPAN_PER_BATCH * self.batch_limit as u64
            || self.window_units >= BATCH_UNITS
        {
            self.commit_window(false)?;
        }
        Ok(())
    }

    /// Commits the window: journaled runs through the journal, then the
    /// progress slot (see the module docs for the order).
    ///
    /// Until the state file has an identity, a commit is not recorded (a
    /// crash redoes everything from the start), so the reads of every window
    /// so far stay in `window_reads`: a redo relies on all of them. With
    /// `persist`, or when those reads grow many, the identity is written
    /// now, so that the commit is recorded and they can be forgotten.
    fn commit_window(&mut self, persist: bool) -> io::Result<()> {
        if self.window_units == 0 {
            return Ok(());
        }
        let persist = persist || self.window_reads.len() > UNRECORDED_READS;
        let result = (|| -> Result<(), DriveError> {
            if persist && !self.state.recorded && self.journal.is_empty() {
                // The direct writes so far must be durable before the state
                // says the target is final up to this window's end.
                self.target.sync()?;
                self.unsynced = false;
                self.state
                    .record()
                    .map_err(io_err(&self.state.path, "cannot write the state file"))?;
            }
            if !self.journal.is_empty() {
                if self.unsynced {
                    // Direct writes must be durable before the journal
                    // claims the window: a replay of it does not redo them.
                    self.target.sync()?;
                }
                self.state
                    .journal(self.window_end, &self.journal)
                    .map_err(|source| DriveError::Io {
                        action: format!(
                            "cannot write the journal {} (the target is partly written and safe: make room, then run the same command to finish it)",
                            self.state.path.display()
                        ),
                        source,
                    })?;
                failpoint();
                for (offset, data) in decode_runs(&self.journal).expect("encoded just now") {
                    self.target
                        .write_all(offset, data)
                        .map_err(io_err(self.target.path, "cannot write the target"))?;
                }
                self.unsynced = true;
            }
            if self.state.recorded {
                // Until the state has an identity, nothing needs to be
                // durable: a crash redoes every write from the start.
                self.target.sync()?;
                self.unsynced = false;
            }
            self.state.commit(self.window_end)
        })();
        result.map_err(|e| self.fail(e))?;
        if self.state.recorded {
            self.window_reads.clear();
        }
        self.window_units = 0;
        self.window_bytes = 0;
        self.window_span = 0;
        self.journal.clear();
        self.journal_end = 0;
        Ok(())
    }
}

impl Sink for JournaledSink<'_, '_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.settle()?;
        self.held = Some(Held {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.settle()?;
        self.unit(offset, None, len)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.settle()?;
        self.commit_window(false)
    }
    fn segment_written(&mut self, index: u64, hash: &Hash) -> io::Result<()> {
        if !self.state.check_pin(index, hash)? {
            self.held = None;
            return Err(self.fail(pin_mismatch(index)));
        }
        self.settle()
    }
    fn old_read(&mut self, offset: u64, data: &[u8]) {
        let reads = if self.held.is_some() {
            &mut self.next_reads
        } else {
            &mut self.unit_reads
        };
        reads.add(offset, offset + data.len() as u64);
    }
}

/// The patch file changed after the verifying pass.
pub fn pin_mismatch(index: u64) -> DriveError {
    DriveError::Refused(format!(
        "the patch file changed after it was verified: data segment {index} makes other bytes than in the verifying pass; nothing of it was written. Get the patch again and run the same command"
    ))
}

/// The verifying pass's sink: writes nothing, records each segment's pin.
#[derive(Debug)]
pub struct PinSink<'a> {
    pub state: &'a std::cell::RefCell<Option<State>>,
}

impl Sink for PinSink<'_> {
    fn write_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn zero(&mut self, _: u64, _: u64) -> io::Result<()> {
        Ok(())
    }
    fn segment_written(&mut self, index: u64, hash: &Hash) -> io::Result<()> {
        match self.state.borrow_mut().as_mut() {
            Some(s) => s.pin(index, hash),
            None => Ok(()),
        }
    }
    fn describe(&self) -> String {
        match self.state.borrow().as_ref() {
            Some(s) => format!("the state file {} (segment pins)", s.path().display()),
            None => "the state file".into(),
        }
    }
}

fn io_err<'p>(path: &'p Path, action: &'p str) -> impl FnOnce(io::Error) -> DriveError + 'p {
    move |source| DriveError::Io {
        action: format!("{action} {}", path.display()),
        source,
    }
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all(); // durability of the name; best effort where unsupported
        }
    }
}

/// Crash testing: with `ANYPATCH_TEST_KILL_AT=N` in the environment, the
/// process kills itself with SIGKILL at the Nth step of the journal
/// protocol, exactly as a power cut or `kill -9` would stop it; with
/// `ANYPATCH_TEST_STOP_AT=N` it stops itself (SIGSTOP) there instead, so a
/// test can act while it holds its locks. Nothing happens otherwise, and
/// nothing at all without the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
pub(crate) fn failpoint() {}

#[cfg(feature = "test-hooks")]
pub(crate) fn failpoint() {
    use std::sync::OnceLock;
    static AT: OnceLock<(Option<u64>, Option<u64>)> = OnceLock::new();
    static STEP: AtomicU64 = AtomicU64::new(0);
    let at = *AT.get_or_init(|| {
        let var = |name| std::env::var(name).ok().and_then(|v| v.parse().ok());
        (var("ANYPATCH_TEST_KILL_AT"), var("ANYPATCH_TEST_STOP_AT"))
    });
    if at == (None, None) {
        return;
    }
    let step = STEP.fetch_add(1, Ordering::Relaxed) + 1;
    let signal = if at.0 == Some(step) {
        rustix::process::Signal::KILL
    } else if at.1 == Some(step) {
        rustix::process::Signal::STOP
    } else {
        return;
    };
    let _ = rustix::process::kill_process(rustix::process::getpid(), signal);
}
