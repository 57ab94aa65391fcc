//! Both sides of a session over byte streams, with threads: what a
//! transport (QUIC streams, or anything that reads and writes bytes)
//! needs to run a sync. The receiver hashes its image, reads both of the
//! sender's streams and writes its target at once (spec/SYNC.md section 7).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::cache;
use crate::growing::{GrowingTree, Growth};
use crate::hash::hash_leaves;
use crate::receiver::{Counts, Mode, Ready, Receiver, SyncError};
use crate::sender::{AnswerError, Sender};
use crate::tree::{leaf_range, Value, GROUP_LEAVES};
use crate::wire::{decode, Decoded, Message, BLOCK, FRAME_HEADER};

/// How a receiver runs.
#[derive(Debug, Clone, Default)]
pub struct ReceiveOptions {
    /// Threads hashing the old image.
    pub threads: usize,
    /// Where the old image's leaf values are looked up before hashing it,
    /// and where the result's are kept (in place here; for
    /// [`Target::Copy`] the caller keeps [`Received::leaves`] once the
    /// file is in its place, as a rename changes its ctime).
    pub cache: Option<anypatch_hash_cache::Cache>,
    /// Counters a progress line reads while the session runs.
    pub progress: std::sync::Arc<crate::progress::SyncProgress>,
}

/// What a receiver did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    pub new_len: u64,
    /// Bytes of messages sent to the sender.
    pub bytes_up: u64,
    /// Bytes of messages received from it.
    pub bytes_down: u64,
    /// Bytes written to the target.
    pub bytes_written: u64,
    pub counts: Counts,
    /// The old image's leaf values came from the cache: it was not read
    /// to be hashed.
    pub old_from_cache: bool,
    /// The new image's leaf values, when a cache was given.
    pub leaves: Vec<Value>,
}

/// Where the result goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// Over the old image itself (opened for reading and writing): only
    /// the blocks that differ are written.
    InPlace(&'a File),
    /// Into this empty file, whole, the old image staying as it is.
    Copy(&'a File),
}

enum Event {
    Own(u64, Vec<Value>),
    OwnDone,
    OwnFailed(io::Error),
    Message(Message, usize),
    Closed(io::Result<()>),
}

/// Runs the receiver's side: `old` is the old image (for
/// [`Target::InPlace`], the target itself), `control_in` and `data_in`
/// the sender's two streams, `control_out` the stream to it. Returns when
/// the new image is whole and its BLAKE3 matched the sender's, with the
/// target synced to disk.
pub fn receive(
    old: &File,
    target: Target<'_>,
    control_in: impl Read + Send + 'static,
    data_in: impl Read + Send + 'static,
    control_out: impl Write,
    opts: &ReceiveOptions,
) -> Result<Received, SyncError> {
    let streams = (control_in, data_in, control_out);
    run_receiver(old, Some(target), Mode::InPlace, streams, opts).map(|(r, _)| r)
}

/// What a dry run found ([`measure`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    pub new_len: u64,
    /// Bytes of messages sent to the sender: what a sync would send (a
    /// `MEASURE` is as long as the `WANT_DATA` it stands for).
    pub bytes_up: u64,
    /// Bytes a sync would receive: what the dry run received, with the
    /// sizes the sender gave in place of the `DATA` it did not send.
    pub bytes_down: u64,
    /// Of which the `DATA` messages.
    pub data_bytes: u64,
    pub counts: Counts,
    /// The dry run's time, up to the probe: hashing and comparing both
    /// images, matching and compressing, as a sync does them.
    pub compare_secs: f64,
    /// Filler bytes the sender sent to time the link, and how long they took.
    pub probe_bytes: u64,
    pub probe_secs: f64,
}

impl Measured {
    /// The link's rate the probe saw, in bytes per second.
    pub fn rate(&self) -> Option<f64> {
        (self.probe_secs > 0.0).then(|| self.probe_bytes as f64 / self.probe_secs)
    }

    /// An estimate of a sync's time: the dry run's, and its `DATA` at the
    /// rate the probe saw. A sync overlaps the two, so it is an upper
    /// bound as long as the link's rate holds.
    pub fn estimated_secs(&self) -> f64 {
        self.compare_secs + self.rate().map_or(0.0, |r| self.data_bytes as f64 / r)
    }
}

/// The probe's size: the `DATA` a sync would send, at least 256 KiB (to
/// see the link's rate, not its round trip) and at most 4 MiB.
fn probe_len(data_bytes: u64) -> u32 {
    data_bytes.clamp(256 << 10, 4 << 20) as u32
}

/// A dry run of [`receive`] (`applypatch --check`): compares `old` with
/// the sender's image and matches its blocks exactly as an in-place sync
/// would, but asks the sender how many bytes the wanted blocks would take
/// instead of taking them, then times a probe of the link. Writes nothing.
pub fn measure(
    old: &File,
    control_in: impl Read + Send + 'static,
    data_in: impl Read + Send + 'static,
    control_out: impl Write,
    opts: &ReceiveOptions,
) -> Result<Measured, SyncError> {
    // Nothing is built, so nothing is kept in the cache; the old image's
    // values are still looked up there.
    let streams = (control_in, data_in, control_out);
    run_receiver(old, None, Mode::InPlace, streams, opts).map(|(_, m)| m.unwrap_or_default())
}

type Streams<CI, DI, CO> = (CI, DI, CO);

/// The receiver's loop; `target` None is a dry run in `mode`.
fn run_receiver<CI, DI, CO>(
    old: &File,
    target: Option<Target<'_>>,
    dry_mode: Mode,
    (control_in, data_in, mut control_out): Streams<CI, DI, CO>,
    opts: &ReceiveOptions,
) -> Result<(Received, Option<Measured>), SyncError>
where
    CI: Read + Send + 'static,
    DI: Read + Send + 'static,
    CO: Write,
{
    let started = Instant::now();
    let old_len = image_len(old).map_err(SyncError::Io)?;
    let progress = &*opts.progress;
    progress.start(old_len);
    let mode = match target {
        Some(Target::InPlace(_)) => Mode::InPlace,
        Some(Target::Copy(_)) => Mode::Copy,
        None => dry_mode,
    };
    let mut receiver = Receiver::new(old, old_len, mode);
    let mut done = Received::default();
    let mut probe = Probe::default();
    if target.is_none() {
        receiver.dry_run();
    }
    // Stat before reading: the identity must be no younger than the bytes.
    let old_id = match &opts.cache {
        Some(_) => cache::identity(old).map_err(SyncError::Io)?,
        None => None,
    };
    let cached = opts
        .cache
        .as_ref()
        .zip(old_id.as_ref())
        .and_then(|(c, id)| cache::lookup(c, id, old_len));
    done.old_from_cache = cached.is_some();
    if opts.cache.is_some() && target.is_some() {
        receiver.keep_leaf_values();
    }
    let threads = opts.threads.max(1);
    let pause = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();

    let result = std::thread::scope(|s| {
        let own_tx = tx.clone();
        let (pause, stop) = (&pause, &stop);
        s.spawn(move || {
            let each_group = |g: u64, values: &[Value]| {
                progress.hashed(values.len());
                // A slow link: wait rather than hold more values.
                while pause.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                !stop.load(Ordering::Relaxed) && own_tx.send(Event::Own(g, values.to_vec())).is_ok()
            };
            let r = match cached {
                Some(values) => {
                    let _ = values
                        .chunks(GROUP_LEAVES)
                        .zip(0..)
                        .all(|(v, g)| each_group(g, v));
                    Ok(())
                }
                None => hash_leaves(old, old_len, threads, each_group).map(drop),
            };
            let _ = own_tx.send(match r {
                Ok(_) => Event::OwnDone,
                Err(e) => Event::OwnFailed(e),
            });
        });
        // Not joined: a sender that keeps its streams open must not keep
        // the receiver waiting once the image is whole (a reader ends when
        // its stream does, or at its next message).
        for stream in [
            Box::new(control_in) as Box<dyn Read + Send>,
            Box::new(data_in),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || read_messages(stream, &tx));
        }
        drop(tx);

        let mut open_streams = 2;
        // Once the link has failed, what already arrived is still taken and
        // written (it is verified like the rest), then the failure is said.
        let mut broken: Option<SyncError> = None;
        let r = (|| loop {
            let event = match broken.take() {
                None => rx
                    .recv()
                    .map_err(|_| SyncError::Sender("every stream ended".into()))?,
                Some(failure) => match rx.try_recv() {
                    Ok(event) => {
                        broken = Some(failure);
                        event
                    }
                    Err(_) => return Err(failure),
                },
            };
            match event {
                Event::Own(g, values) => receiver.own_group(g, &values)?,
                Event::OwnDone => receiver.own_done()?,
                Event::OwnFailed(e) => return Err(SyncError::Io(e)),
                Event::Message(Message::Fill(bytes), n) if probe.sent.is_some() => {
                    done.bytes_down += n as u64;
                    probe.got += bytes.len() as u64;
                }
                // A dry run ends with the probe: what else arrives (the
                // root, which it does not check) is not taken.
                Event::Message(_, n) if probe.sent.is_some() => done.bytes_down += n as u64,
                Event::Message(m, n) => {
                    done.bytes_down += n as u64;
                    if matches!(m, Message::Measured(_)) {
                        probe.measured_frames += n as u64;
                    }
                    receiver.take(m)?;
                }
                Event::Closed(Err(e)) => {
                    broken.get_or_insert(SyncError::Link(e));
                }
                Event::Closed(Ok(())) => {
                    open_streams -= 1;
                    if open_streams == 0 && !receiver.is_done() {
                        broken.get_or_insert(SyncError::Sender(
                            "it closed the session before the image was whole".into(),
                        ));
                    }
                }
            }
            pause.store(!receiver.wants_own_groups(), Ordering::Relaxed);
            let new_len = receiver.new_len().unwrap_or(0);
            for ready in receiver.ready() {
                progress.settled(new_len, &ready);
                if let Some(target) = target {
                    done.bytes_written += write_leaf(old, old_len, target, new_len, ready)
                        .map_err(SyncError::Write)?;
                }
            }
            let mut outgoing = receiver.outgoing();
            if target.is_none() && receiver.is_done() {
                // A dry run: before it says it is done, it times the link.
                match probe.sent {
                    None => {
                        let last = outgoing.pop();
                        let len = probe_len(receiver.counts().data_bytes_measured);
                        probe.compared = started.elapsed();
                        probe.want = len.into();
                        probe.sent = Some(Instant::now());
                        outgoing.push(Message::Probe { len });
                        probe.done = last;
                    }
                    Some(at) if probe.got >= probe.want && probe.took.is_none() => {
                        probe.took = Some(at.elapsed());
                        outgoing.extend(probe.done.take());
                    }
                    Some(_) => {}
                }
            }
            if broken.is_none() {
                let sent = outgoing.iter().try_for_each(|m| {
                    let bytes = m.encode();
                    done.bytes_up += bytes.len() as u64;
                    control_out.write_all(&bytes)
                });
                if let Err(e) = sent.and_then(|()| control_out.flush()) {
                    broken = Some(SyncError::Link(e));
                }
            }
            progress.update(new_len, &done);
            if receiver.is_done() && (target.is_some() || probe.took.is_some()) {
                done.new_len = new_len;
                return Ok(());
            }
        })();
        stop.store(true, Ordering::Relaxed);
        drop(control_out);
        r
    });
    result?;
    let Some(target) = target else {
        let counts = receiver.counts();
        // What came down, with the sizes of DATA in place of MEASURED and
        // without the probe's filler.
        let probe_frames = probe
            .want
            .div_ceil(u64::from(crate::wire::MAX_PAYLOAD) - 64)
            * FRAME_HEADER as u64;
        let extra = probe.measured_frames + probe.want + probe_frames;
        return Ok((
            done.clone(),
            Some(Measured {
                new_len: done.new_len,
                bytes_up: done.bytes_up.saturating_sub(PROBE_UP),
                bytes_down: done.bytes_down.saturating_sub(extra) + counts.data_bytes_measured,
                data_bytes: counts.data_bytes_measured,
                counts,
                compare_secs: probe.compared.as_secs_f64(),
                probe_bytes: probe.want,
                probe_secs: probe.took.unwrap_or_default().as_secs_f64(),
            }),
        ));
    };
    let out = match target {
        Target::InPlace(f) | Target::Copy(f) => f,
    };
    // A device keeps its size: the image is its first `new_len` bytes. A
    // file is sized only if it must be: truncating to the same size still
    // changes its times, and so its identity for the cache.
    let meta = out.metadata().map_err(SyncError::Write)?;
    if meta.is_file() && meta.len() != done.new_len {
        out.set_len(done.new_len).map_err(SyncError::Write)?;
    }
    out.sync_all().map_err(SyncError::Write)?;
    done.counts = receiver.counts();
    if let (Some(c), Some(leaves)) = (&opts.cache, receiver.leaf_values()) {
        // Stat after the last write: the entry vouches for these bytes.
        if let (Target::InPlace(f), Ok(Some(id))) = (target, cache::identity(out)) {
            cache::store(c, f, &id, done.new_len, &leaves);
        }
        done.leaves = leaves;
    }
    Ok((done, None))
}

/// The bytes of a `PROBE` message.
const PROBE_UP: u64 = FRAME_HEADER as u64 + 4;

/// A dry run's timing of the link.
#[derive(Default)]
struct Probe {
    /// When the `PROBE` went out.
    sent: Option<Instant>,
    want: u64,
    got: u64,
    took: Option<Duration>,
    /// The dry run's time before the probe.
    compared: Duration,
    /// The receiver's `DONE`, held until the probe is over.
    done: Option<Message>,
    /// Bytes of `MEASURED` messages received.
    measured_frames: u64,
}

/// Decodes messages from `stream` into `tx` until it ends.
fn read_messages(mut stream: Box<dyn Read + Send>, tx: &mpsc::Sender<Event>) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0; 1 << 16];
    let end = loop {
        // Whole messages first.
        loop {
            match decode(&buf) {
                Ok(Decoded::Message(m, n)) => {
                    buf.drain(..n);
                    if tx.send(Event::Message(m, n)).is_err() {
                        return;
                    }
                }
                Ok(Decoded::Need(_)) => break,
                Err(e) => {
                    let _ = tx.send(Event::Closed(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e,
                    ))));
                    return;
                }
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => break Ok(()),
            Ok(0) => {
                break Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the stream ended inside a message ({} of at least {FRAME_HEADER} bytes)",
                        buf.len()
                    ),
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let _ = tx.send(Event::Closed(end));
}

/// The length of an image: a regular file's size, a block device's by
/// seeking to its end (its metadata says 0).
pub fn image_len(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut f = file;
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(len)
}

/// Writes one leaf of the result; returns the bytes written. In place,
/// the target was `old_len` bytes long before the session.
fn write_leaf(
    old: &File,
    old_len: u64,
    target: Target<'_>,
    new_len: u64,
    ready: Ready,
) -> io::Result<u64> {
    match (target, ready) {
        (Target::InPlace(_), Ready::Unchanged { .. }) => Ok(0),
        (Target::Copy(out), Ready::Unchanged { leaf }) => {
            let r = leaf_range(new_len, leaf);
            let mut bytes = vec![0; (r.end - r.start) as usize];
            old.read_exact_at(&mut bytes, r.start)?;
            out.write_all_at(&bytes, r.start)?;
            Ok(bytes.len() as u64)
        }
        (Target::Copy(out), Ready::Changed { offset, bytes, .. }) => {
            out.write_all_at(&bytes, offset)?;
            Ok(bytes.len() as u64)
        }
        (Target::InPlace(t), Ready::Changed { offset, bytes, .. }) => {
            // Only the blocks that differ from what is there now.
            let mut now = vec![0; bytes.len()];
            let have = (old_len.saturating_sub(offset) as usize).min(bytes.len());
            t.read_exact_at(&mut now[..have], offset)?;
            let mut written = 0;
            for (i, (new, cur)) in bytes
                .chunks(BLOCK as usize)
                .zip(now.chunks(BLOCK as usize))
                .enumerate()
            {
                let at = i * BLOCK as usize;
                if at + new.len() > have || new != cur {
                    t.write_all_at(new, offset + at as u64)?;
                    written += new.len() as u64;
                }
            }
            Ok(written)
        }
    }
}

/// What a sender did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// The receiver said it holds the whole new image.
    pub finished: bool,
    /// Requests answered before the sender's tree was whole.
    pub answered_while_hashing: u64,
    /// The zstd level `DATA` was compressed at last ([`crate::pace`]).
    pub level: i32,
}

enum SendEvent {
    Tree(Growth),
    Message(Message, usize),
    Closed(io::Result<()>),
}

/// Runs the sender's side over `image`, whose tree `tree` is being (or
/// was) computed, with block keys seeded by `seed`: answers `OK`'s
/// session at once, sends the groups as the tree gives them and its root
/// last, reads requests from `control_in`, answers on `control_out`, and
/// sends data on `data_out`. Returns when the receiver says it is done or
/// goes away.
pub fn send(
    image: &File,
    tree: &GrowingTree,
    seed: u64,
    control_in: impl Read + Send + 'static,
    mut control_out: impl Write,
    mut data_out: impl Write,
) -> io::Result<Sent> {
    let mut sender = Sender::new(image, tree.len(), seed);
    let mut sent = Sent::default();
    let (tx, rx) = mpsc::channel();
    let tree_tx = tx.clone();
    tree.watch(move |g| tree_tx.send(SendEvent::Tree(g.clone())).is_ok());
    // Not joined: the receiver may keep its stream open after DONE.
    std::thread::spawn(move || {
        let mut stream = control_in;
        let mut buf = Vec::new();
        let mut chunk = vec![0; 1 << 16];
        let end = loop {
            match decode(&buf) {
                Ok(Decoded::Message(m, n)) => {
                    buf.drain(..n);
                    if tx.send(SendEvent::Message(m, n)).is_err() {
                        return;
                    }
                    continue;
                }
                Ok(Decoded::Need(_)) => {}
                Err(e) => break Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            match stream.read(&mut chunk) {
                Ok(0) => break Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let _ = tx.send(SendEvent::Closed(end));
    });

    let mut out = sender.start();
    let mut pace = crate::pace::Pace::default();
    let mut hashed: Vec<Value> = Vec::new();
    let mut tree_whole = false;
    let mut event = rx.recv().ok();
    while let Some(e) = event.take() {
        match e {
            // Leaves are gathered while more events wait, so that groups
            // go out a few hundred at a time, not one message each.
            SendEvent::Tree(Growth::Leaves(values)) => hashed.extend(values),
            e => {
                out.extend(sender.hashed(&std::mem::take(&mut hashed)));
                match e {
                    SendEvent::Tree(Growth::Leaves(_)) => {}
                    SendEvent::Tree(Growth::Root(root)) => {
                        out.extend(sender.tree_done(root));
                        tree_whole = true;
                    }
                    SendEvent::Tree(Growth::Failed(why)) => {
                        let _ = control_out.write_all(&Message::Error(why.clone()).encode());
                        let _ = control_out.flush();
                        return Err(io::Error::other(why));
                    }
                    SendEvent::Message(m, n) => {
                        sent.bytes_up += n as u64;
                        if !tree_whole {
                            sent.answered_while_hashing += 1;
                        }
                        let raw = match &m {
                            Message::WantData(ranges) => {
                                ranges.iter().map(|r| u64::from(r.len)).sum()
                            }
                            _ => 0,
                        };
                        let began = Instant::now();
                        match sender.answer(m) {
                            Ok(a) => {
                                out.extend(a);
                                if raw > 0 {
                                    pace.packed(raw, began.elapsed());
                                }
                            }
                            Err(AnswerError::Io(e)) => return Err(e),
                            Err(e @ AnswerError::Refused(_)) => {
                                let _ =
                                    control_out.write_all(&Message::Error(e.to_string()).encode());
                                let _ = control_out.flush();
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    e.to_string(),
                                ));
                            }
                        }
                    }
                    SendEvent::Closed(r) => {
                        r?;
                        return Ok(sent);
                    }
                }
            }
        }
        event = rx.try_recv().ok();
        // Nothing waiting, or enough answers held: send them.
        if event.is_none() || out.len() >= 64 || sender.finished().is_some() {
            out.extend(sender.hashed(&std::mem::take(&mut hashed)));
            for a in out.drain(..) {
                let bytes = a.encode();
                sent.bytes_down += bytes.len() as u64;
                match a {
                    Message::Data { .. } => {
                        let began = Instant::now();
                        data_out.write_all(&bytes)?;
                        pace.wrote(began.elapsed());
                    }
                    Message::Fill(_) => data_out.write_all(&bytes)?,
                    _ => control_out.write_all(&bytes)?,
                }
            }
            control_out.flush()?;
            data_out.flush()?;
            let level = pace.next_level(sender.level());
            if level != sender.level() {
                sender.set_level(level)?;
            }
            sent.level = sender.level();
            if sender.finished().is_some() {
                sent.finished = true;
                return Ok(sent);
            }
            if event.is_none() {
                event = rx.recv().ok();
            }
        }
    }
    Ok(sent)
}
