//! Crash-safe in-place apply: a redo journal in a state file.
//!
//! The units the engine hands out (verified segments, copy chunks, zero
//! runs) are gathered into batches of at most [`BATCH_BYTES`]. Each batch is
//! made durable in three ordered steps, each ended by an fsync:
//!
//! 1. the batch (each unit's offset, length and bytes) goes into the state
//!    file's journal, sealed with a BLAKE3;
//! 2. the target gets the bytes that differ from what it holds (zero runs
//!    become holes in regular files where the file system can punch them);
//! 3. the state file's progress slot records the offset up to which the
//!    target is final: the end of the batch's last unit.
//!
//! Holding a batch back is safe because no unit reads target bytes before
//! its own start (the in-place rule), and the batch lies before it.
//!
//! After a crash at any point, the next run finds the state file, replays a
//! journal batch that is intact but not yet committed (so a write that was
//! lost or torn is redone, never trusted), and resumes the engine at the
//! committed offset. Units never read target bytes before their own
//! start (the in-place rule), so what lies after the resume point is still
//! the old image. A resumed apply ends by hashing the whole target against
//! the patch's new BLAKE3, and the state file is removed only after that.
//!
//! State file layout (little endian), three fixed areas:
//!
//! | offset   | size | content |
//! |----------|------|---------|
//! | 0x0000   | 128  | identity: magic `ANYPSTAT`, version 1, patch hash, new hash, old_len, new_len; BLAKE3 of the rest |
//! | 0x1000   | 56   | progress slot A: sequence, committed offset; BLAKE3 |
//! | 0x1200   | 56   | progress slot B (slots alternate; the valid one with the higher sequence counts) |
//! | 0x2000   | 88   | journal record: sequence, unit count, batch length, BLAKE3 of the batch; BLAKE3 of the record |
//! | 0x3000   | len  | journal batch: per unit, offset (u64), length (u64), kind (u8: 1 bytes follow, 0 zeros) and its bytes |

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{DriveError, Sink};

const MAGIC: &[u8; 8] = b"ANYPSTAT";
const VERSION: u32 = 1;
const IDENTITY_AT: u64 = 0x0000;
const SLOT_AT: [u64; 2] = [0x1000, 0x1200];
const JOURNAL_AT: u64 = 0x2000;
const JOURNAL_DATA_AT: u64 = 0x3000;
/// Differing byte runs closer than this are written as one.
const WRITE_MERGE_GAP: usize = 64;
/// Default for the most unit bytes held in one journal batch (a batch also
/// ends after [`BATCH_UNITS`] units). A single larger unit is a batch of its own.
pub const BATCH_BYTES: usize = 0x40_0000;
const BATCH_UNITS: usize = 0x1000;
/// Target bytes compared per read when writing only what differs.
const COMPARE_CHUNK: usize = 0x4_0000;

/// What a state file is about: the patch and the two images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub patch_hash: [u8; 32],
    pub new_hash: [u8; 32],
    pub old_len: u64,
    pub new_len: u64,
}

impl Identity {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(128);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&self.patch_hash);
        v.extend_from_slice(&self.new_hash);
        v.extend_from_slice(&self.old_len.to_le_bytes());
        v.extend_from_slice(&self.new_len.to_le_bytes());
        seal(v)
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let b = unseal(b, 96)?;
        if &b[..8] != MAGIC || u32::from_le_bytes(b[8..12].try_into().ok()?) != VERSION {
            return None;
        }
        Some(Self {
            patch_hash: b[16..48].try_into().ok()?,
            new_hash: b[48..80].try_into().ok()?,
            old_len: u64::from_le_bytes(b[80..88].try_into().ok()?),
            new_len: u64::from_le_bytes(b[88..96].try_into().ok()?),
        })
    }
}

/// Appends BLAKE3 of `v` to it.
fn seal(mut v: Vec<u8>) -> Vec<u8> {
    let h = blake3::hash(&v);
    v.extend_from_slice(h.as_bytes());
    v
}

/// The first `len` bytes of `b` if the 32 bytes after them are their BLAKE3.
fn unseal(b: &[u8], len: usize) -> Option<&[u8]> {
    let (body, rest) = b.split_at_checked(len)?;
    (rest.get(..32)? == blake3::hash(body).as_bytes()).then_some(body)
}

fn slot(seq: u64, done: u64) -> Vec<u8> {
    let mut v = seq.to_le_bytes().to_vec();
    v.extend_from_slice(&done.to_le_bytes());
    seal(v)
}

fn journal_record(seq: u64, units: u64, batch: &[u8]) -> Vec<u8> {
    let mut v = seq.to_le_bytes().to_vec();
    v.extend_from_slice(&units.to_le_bytes());
    v.extend_from_slice(&(batch.len() as u64).to_le_bytes());
    v.extend_from_slice(blake3::hash(batch).as_bytes());
    seal(v)
}

/// Applies every unit of an encoded batch to the target; returns the end of the last.
fn apply_batch(batch: &[u8], target: &mut InPlaceTarget<'_>) -> io::Result<u64> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "damaged journal batch");
    let (mut rest, mut end) = (batch, 0);
    while !rest.is_empty() {
        let head = rest.get(..17).ok_or_else(bad)?;
        let offset = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        rest = &rest[17..];
        if head[16] == 1 {
            let n = usize::try_from(len).map_err(|_| bad())?;
            let data = rest.get(..n).ok_or_else(bad)?;
            target.write_changed(offset, data)?;
            rest = &rest[n..];
        } else {
            target.zero(offset, len)?;
        }
        end = offset + len;
    }
    Ok(end)
}

/// Where the state of an in-place apply of `target` lives by default:
/// beside a regular file; for a block device, under /var/lib/anypatch.
pub fn default_state_path(target: &Path, is_regular: bool) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "target".into());
    if is_regular {
        target.with_file_name(format!(".{name}.anypatch-state"))
    } else {
        PathBuf::from("/var/lib/anypatch").join(format!("{name}.anypatch-state"))
    }
}

/// An open state file.
#[derive(Debug)]
pub struct State {
    file: File,
    path: PathBuf,
    pub identity: Identity,
    seq: u64,
    /// New-file offset before which the target is final.
    pub done: u64,
}

impl State {
    /// Opens an existing state file; `Ok(None)` when there is none.
    pub fn open(path: &Path) -> Result<Option<Self>, DriveError> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, "cannot open the state file")(e)),
        };
        let damaged = || {
            DriveError::Refused(format!(
                "the state file {} is damaged; if the target was never written, remove it and run again",
                path.display()
            ))
        };
        let mut id = [0u8; 128];
        file.read_exact_at(&mut id, IDENTITY_AT)
            .map_err(|_| damaged())?;
        let identity = Identity::decode(&id).ok_or_else(damaged)?;
        let (mut seq, mut done) = (0, 0);
        for at in SLOT_AT {
            let mut b = [0u8; 48];
            if file.read_exact_at(&mut b, at).is_ok() {
                if let Some(body) = unseal(&b, 16) {
                    let s = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
                    if s >= seq {
                        seq = s;
                        done = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
                    }
                }
            }
        }
        Ok(Some(Self {
            file,
            path: path.to_path_buf(),
            identity,
            seq,
            done,
        }))
    }

    /// Creates a state file for a new apply, durably, before the first write.
    pub fn create(path: &Path, identity: Identity) -> Result<Self, DriveError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(io_err(dir, "cannot create the state directory"))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(io_err(path, "cannot create the state file"))?;
        let state = Self {
            file,
            path: path.to_path_buf(),
            identity,
            seq: 0,
            done: 0,
        };
        let write = |b: &[u8], at| state.file.write_all_at(b, at);
        write(&identity.encode(), IDENTITY_AT)
            .and_then(|()| write(&slot(0, 0), SLOT_AT[0]))
            .and_then(|()| state.file.sync_all())
            .map_err(io_err(path, "cannot write the state file"))?;
        sync_dir(path);
        Ok(state)
    }

    /// Replays a journal batch that is intact but not committed. Returns
    /// whether one was replayed.
    pub fn replay(&mut self, target: &mut InPlaceTarget<'_>) -> Result<bool, DriveError> {
        let mut rec = [0u8; 88];
        if self.file.read_exact_at(&mut rec, JOURNAL_AT).is_err() {
            return Ok(false);
        }
        let Some(body) = unseal(&rec, 56) else {
            return Ok(false);
        };
        let word = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
        let (seq, len) = (word(0), word(16));
        // Committed already, or larger than any batch this program writes.
        if seq <= self.seq
            || len > 2 * (BATCH_BYTES as u64 + u64::from(anypatch_apply::format::MAX_SEGMENT_LEN))
        {
            return Ok(false);
        }
        let mut batch = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut batch, JOURNAL_DATA_AT)
            .map_err(io_err(&self.path, "cannot read the journal"))?;
        if blake3::hash(&batch).as_bytes()[..] != body[24..56] {
            return Ok(false); // torn journal write: the target was not touched for it
        }
        let end =
            apply_batch(&batch, target).map_err(io_err(target.path, "cannot write the target"))?;
        target.sync()?;
        self.commit(end)?;
        Ok(true)
    }

    /// Step 1: journals a batch durably.
    fn journal(&mut self, units: u64, batch: &[u8]) -> io::Result<()> {
        failpoint();
        self.file.write_all_at(batch, JOURNAL_DATA_AT)?;
        self.file
            .write_all_at(&journal_record(self.seq + 1, units, batch), JOURNAL_AT)?;
        failpoint();
        self.file.sync_data()
    }

    /// Step 3: records that the target is final before `done`.
    fn commit(&mut self, done: u64) -> Result<(), DriveError> {
        failpoint();
        self.seq += 1;
        let at = SLOT_AT[(self.seq % 2) as usize];
        self.file
            .write_all_at(&slot(self.seq, done), at)
            .and_then(|()| {
                failpoint();
                self.file.sync_data()
            })
            .map_err(io_err(&self.path, "cannot write the state file"))?;
        self.done = done;
        Ok(())
    }

    /// Removes the state file once the apply is complete and verified.
    pub fn remove(self) -> Result<(), DriveError> {
        std::fs::remove_file(&self.path)
            .map_err(io_err(&self.path, "cannot remove the state file"))?;
        sync_dir(&self.path);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The target of an in-place apply: reads for comparison, writes what differs.
#[derive(Debug)]
pub struct InPlaceTarget<'a> {
    pub file: &'a File,
    pub path: &'a Path,
    pub is_regular: bool,
    /// Target bytes actually written (differing bytes, and zeros where no hole could be punched).
    pub bytes_written: u64,
    scratch: Vec<u8>,
}

impl<'a> InPlaceTarget<'a> {
    pub fn new(file: &'a File, path: &'a Path, is_regular: bool) -> Self {
        Self {
            file,
            path,
            is_regular,
            bytes_written: 0,
            scratch: Vec::new(),
        }
    }

    /// Writes only the byte runs of `data` that differ from the target,
    /// comparing [`COMPARE_CHUNK`] bytes at a time.
    fn write_changed(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        for (k, chunk) in data.chunks(COMPARE_CHUNK).enumerate() {
            self.write_changed_chunk(offset + (k * COMPARE_CHUNK) as u64, chunk)?;
        }
        Ok(())
    }

    fn write_changed_chunk(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        self.scratch.resize(data.len(), 0);
        let have = read_up_to(self.file, &mut self.scratch, offset)?;
        let same = |i: usize| i < have && self.scratch[i] == data[i];
        let mut i = 0;
        while i < data.len() {
            if same(i) {
                i += 1;
                continue;
            }
            // A differing run, extended over equal gaps shorter than WRITE_MERGE_GAP.
            let (start, mut end, mut gap) = (i, i + 1, 0);
            while end < data.len() && gap < WRITE_MERGE_GAP {
                gap = if same(end) { gap + 1 } else { 0 };
                end += 1;
            }
            let end = end - gap;
            self.file
                .write_all_at(&data[start..end], offset + start as u64)?;
            self.bytes_written += (end - start) as u64;
            i = end;
        }
        Ok(())
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
            self.write_changed(offset + done, &zeros[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), DriveError> {
        failpoint();
        self.file
            .sync_data()
            .map_err(io_err(self.path, "cannot flush the target"))
    }
}

/// Reads as much of `buf` as the file has at `offset`; returns the count.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A [`Sink`] that applies units in journaled batches.
#[derive(Debug)]
pub struct JournaledSink<'s, 't> {
    state: &'s mut State,
    target: InPlaceTarget<'t>,
    batch: Vec<u8>,
    batch_limit: usize,
    units: u64,
    batch_end: u64,
    /// An error from inside the protocol, with its full context.
    error: Option<DriveError>,
}

impl<'s, 't> JournaledSink<'s, 't> {
    /// `batch_limit`: most unit bytes per journal batch, at most [`BATCH_BYTES`].
    pub fn new(state: &'s mut State, target: InPlaceTarget<'t>, batch_limit: usize) -> Self {
        let batch_limit = batch_limit.clamp(1, BATCH_BYTES);
        Self {
            state,
            target,
            batch: Vec::new(),
            batch_limit,
            units: 0,
            batch_end: 0,
            error: None,
        }
    }

    /// Target bytes written so far, and the error behind a failed call.
    pub fn into_parts(self) -> (u64, Option<DriveError>) {
        (self.target.bytes_written, self.error)
    }

    fn add(&mut self, offset: u64, data: Option<&[u8]>, len: u64) -> io::Result<()> {
        if !self.batch.is_empty()
            && (self.batch.len() + data.map_or(0, <[u8]>::len) > self.batch_limit
                || self.units as usize >= BATCH_UNITS)
        {
            self.flush()?;
        }
        self.batch.extend_from_slice(&offset.to_le_bytes());
        self.batch.extend_from_slice(&len.to_le_bytes());
        self.batch.push(u8::from(data.is_some()));
        if let Some(d) = data {
            self.batch.extend_from_slice(d);
        }
        self.units += 1;
        self.batch_end = offset + len;
        Ok(())
    }

    /// The three ordered steps for the pending batch (see the module docs).
    fn commit_batch(&mut self) -> Result<(), DriveError> {
        self.state
            .journal(self.units, &self.batch)
            .map_err(io_err(&self.state.path, "cannot write the journal"))?;
        failpoint();
        apply_batch(&self.batch, &mut self.target)
            .map_err(io_err(self.target.path, "cannot write the target"))?;
        self.target.sync()?;
        self.state.commit(self.batch_end)?;
        self.batch.clear();
        self.units = 0;
        Ok(())
    }
}

impl Sink for JournaledSink<'_, '_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.add(offset, Some(data), data.len() as u64)
    }
    fn zero(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.add(offset, None, len)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.commit_batch().map_err(|e| {
            let msg = e.to_string();
            self.error = Some(e);
            io::Error::other(msg)
        })
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
/// protocol, exactly as a power cut or `kill -9` would stop it. The crash
/// tests use it to stop at every step; it does nothing otherwise.
fn failpoint() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static AT: OnceLock<Option<u64>> = OnceLock::new();
    static STEP: AtomicU64 = AtomicU64::new(0);
    if let Some(at) = *AT.get_or_init(|| {
        std::env::var("ANYPATCH_TEST_KILL_AT")
            .ok()
            .and_then(|v| v.parse().ok())
    }) {
        if STEP.fetch_add(1, Ordering::Relaxed) + 1 == at {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
        }
    }
}
