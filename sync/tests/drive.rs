//! Sessions over real byte streams (Unix socket pairs) and real files:
//! both drivers, to a new file and in place, and a session cut off in the
//! middle and run again (spec/SYNC.md section 8).

mod common;
use common::noise;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anypatch_sync::drive::{receive, send, ReceiveOptions, Received, Sent, Target};
use anypatch_sync::growing::GrowingTree;
use anypatch_sync::hash_leaves;
use anypatch_sync::sender::image_root;

fn sparse_pair() -> (Vec<u8>, Vec<u8>) {
    let old = noise(8 << 20, 1);
    let mut new = old.clone();
    for i in 0..20 {
        let at = (i * 397 * 4096 + 1234) % (old.len() - 100);
        new[at..at + 100].copy_from_slice(&noise(100, i as u64 + 10));
    }
    new.extend_from_slice(&noise(100_000, 3));
    (old, new)
}

/// A stream that fails after `left` bytes, as a dropped link does.
struct CutAfter<R> {
    inner: R,
    left: usize,
}

impl<R: Read> Read for CutAfter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "link dropped",
            ));
        }
        let n = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..n])?;
        self.left -= n;
        Ok(n)
    }
}

/// One session from the new image at `new_path` to `old` (the target).
fn session(
    new_path: &Path,
    old: &File,
    target: Target<'_>,
    cut_data_after: Option<usize>,
) -> (Result<Received, String>, Sent) {
    let image = File::open(new_path).expect("new image");
    let len = image.metadata().expect("stat").len();
    let leaves = hash_leaves(&image, len, 2, |_, _| true).expect("hash new");
    let root = image_root(&image, len, &leaves).expect("root");
    let tree = GrowingTree::whole(len, leaves, root);
    let (control_s, control_r) = UnixStream::pair().expect("pair");
    let (mut data_s, data_r) = UnixStream::pair().expect("pair");
    std::thread::scope(|s| {
        let sender = s.spawn(move || {
            let control_in = control_s.try_clone().expect("clone");
            let r = send(&image, &tree, 7, control_in, &control_s, &mut data_s);
            r.unwrap_or_default()
        });
        let control_in = control_r.try_clone().expect("clone");
        // Closes the receiver's ends once it returns, as a transport does:
        // its detached readers hold clones, and the sender waits for EOF.
        let closers = [
            control_r.try_clone().expect("clone"),
            data_r.try_clone().expect("clone"),
        ];
        let data_in: Box<dyn Read + Send> = match cut_data_after {
            Some(left) => Box::new(CutAfter {
                inner: data_r,
                left,
            }),
            None => Box::new(data_r),
        };
        let r = receive(
            old,
            target,
            control_in,
            data_in,
            control_r,
            &ReceiveOptions {
                threads: 2,
                cache: None,
                ..ReceiveOptions::default()
            },
        )
        .map_err(|e| e.to_string());
        for c in closers {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        (r, sender.join().expect("sender thread"))
    })
}

fn write(path: &Path, bytes: &[u8]) {
    File::create(path)
        .and_then(|mut f| f.write_all(bytes))
        .expect("write");
}

#[test]
fn a_sync_to_a_new_file_and_in_place_makes_the_new_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = sparse_pair();
    let (old_p, new_p, out_p) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("out"),
    );
    write(&old_p, &old);
    write(&new_p, &new);

    let old_f = File::open(&old_p).expect("old");
    let out = File::create(&out_p).expect("out");
    let (r, sent) = session(&new_p, &old_f, Target::Copy(&out), None);
    let r = r.expect("sync to a new file");
    assert!(std::fs::read(&out_p).expect("read") == new);
    assert!(sent.finished);
    assert_eq!(r.bytes_written, new.len() as u64);
    assert_eq!((r.bytes_up, r.bytes_down), (sent.bytes_up, sent.bytes_down));

    let t = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&old_p)
        .expect("target");
    let (r, _) = session(&new_p, &t, Target::InPlace(&t), None);
    let r = r.expect("sync in place");
    assert!(std::fs::read(&old_p).expect("read") == new);
    // Only the changed blocks (20 edits, some across two blocks) and the
    // appended tail were written.
    assert!(
        r.bytes_written <= 40 * 4096 + 100_000 + 4096,
        "wrote {}",
        r.bytes_written
    );
    eprintln!("in place: {r:?}");
}

#[test]
fn a_sync_cut_off_mid_way_is_finished_by_running_it_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = sparse_pair();
    let (old_p, new_p) = (dir.path().join("old"), dir.path().join("new"));
    write(&old_p, &old);
    write(&new_p, &new);

    // The whole session's bytes down, for comparison.
    let full = {
        let copy = dir.path().join("copy");
        std::fs::copy(&old_p, &copy).expect("copy");
        let t = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&copy)
            .expect("target");
        session(&new_p, &t, Target::InPlace(&t), None)
            .0
            .expect("full sync")
            .bytes_down
    };

    let t = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&old_p)
        .expect("target");
    let (r, _) = session(&new_p, &t, Target::InPlace(&t), Some(60_000));
    let e = r.expect_err("the link dropped");
    eprintln!("first run: {e}");
    assert!(e.contains("the link to the sender broke"), "{e}");
    let now = std::fs::read(&old_p).expect("read");
    assert!(
        now != new && now != old,
        "the first run should have written part of the image"
    );

    let (r, _) = session(&new_p, &t, Target::InPlace(&t), None);
    let r = r.expect("the rerun finishes");
    assert!(std::fs::read(&old_p).expect("read") == new);
    assert!(
        r.bytes_down < full,
        "rerun {} bytes down, a whole sync {full}",
        r.bytes_down
    );
    eprintln!(
        "whole sync {full} bytes down, rerun after the cut {}",
        r.bytes_down
    );
}

/// A data stream that says when its first bytes go out.
struct Signal<W> {
    inner: W,
    first: Option<std::sync::mpsc::Sender<()>>,
}

impl<W: Write> Write for Signal<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(tx) = self.first.take() {
            let _ = tx.send(());
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn the_sender_answers_while_it_still_hashes_and_sends_its_root_last() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The change is in the first of eight groups.
    let old = noise(8 << 20, 5);
    let mut new = old.clone();
    new[5000..9000].copy_from_slice(&noise(4000, 6));
    let (old_p, new_p) = (dir.path().join("old"), dir.path().join("new"));
    write(&old_p, &old);
    write(&new_p, &new);
    let image = File::open(&new_p).expect("new");
    let len = new.len() as u64;
    let leaves = hash_leaves(&image, len, 1, |_, _| true).expect("hash new");
    let root = image_root(&image, len, &leaves).expect("root");
    // The test is the sender's hashing: it gives the first group only.
    let tree = GrowingTree::new(len);
    tree.grow(&leaves[..16]);

    let (control_s, control_r) = UnixStream::pair().expect("pair");
    let (data_s, data_r) = UnixStream::pair().expect("pair");
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let target = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&old_p)
        .expect("target");
    std::thread::scope(|s| {
        let (image, tree) = (&image, &tree);
        let sender = s.spawn(move || {
            let data = Signal {
                inner: data_s,
                first: Some(first_tx),
            };
            send(
                image,
                tree,
                9,
                control_s.try_clone().expect("clone"),
                &control_s,
                data,
            )
        });
        let closers = [
            control_r.try_clone().expect("clone"),
            data_r.try_clone().expect("clone"),
        ];
        let target = &target;
        let receiver = s.spawn(move || {
            let r = receive(
                target,
                Target::InPlace(target),
                control_r.try_clone().expect("clone"),
                data_r,
                control_r,
                &ReceiveOptions {
                    threads: 2,
                    cache: None,
                    ..ReceiveOptions::default()
                },
            );
            for c in closers {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
            r
        });
        // The changed blocks come while 7 of 8 groups are not hashed (a
        // bound on a hang, not a timing: it waits for an event).
        first_rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("DATA before the sender's tree was whole");
        assert!(tree.finished().is_none());
        assert!(!receiver.is_finished(), "done without the root");
        tree.grow(&leaves[16..]);
        tree.end(Ok(root));
        let r = receiver.join().expect("receiver").expect("the sync");
        let sent = sender.join().expect("sender").expect("the sender");
        assert!(sent.finished);
        assert!(sent.answered_while_hashing > 0, "{sent:?}");
        assert!(
            r.counts.blocks_wanted > 0 && r.counts.blocks_wanted <= 3,
            "{r:?}"
        );
    });
    assert!(std::fs::read(&old_p).expect("read") == new);
}

#[test]
fn a_dry_run_writes_nothing_and_tells_what_a_sync_carries() {
    use anypatch_sync::drive::measure;
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = sparse_pair();
    let (old_p, new_p) = (dir.path().join("old"), dir.path().join("new"));
    write(&old_p, &old);
    write(&new_p, &new);
    let mtime = std::fs::metadata(&old_p)
        .and_then(|m| m.modified())
        .expect("mtime");

    let image = File::open(&new_p).expect("new");
    let len = new.len() as u64;
    let leaves = hash_leaves(&image, len, 1, |_, _| true).expect("hash new");
    let root = image_root(&image, len, &leaves).expect("root");
    let tree = GrowingTree::whole(len, leaves, root);
    let (control_s, control_r) = UnixStream::pair().expect("pair");
    let (mut data_s, data_r) = UnixStream::pair().expect("pair");
    // Read only: a dry run that tried to write would fail.
    let old_f = File::open(&old_p).expect("old");
    let (m, sent) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let control_in = control_s.try_clone().expect("clone");
            send(&image, &tree, 7, control_in, &control_s, &mut data_s)
        });
        let closers = [
            control_r.try_clone().expect("clone"),
            data_r.try_clone().expect("clone"),
        ];
        let m = measure(
            &old_f,
            control_r.try_clone().expect("clone"),
            data_r,
            control_r,
            &ReceiveOptions {
                threads: 2,
                ..Default::default()
            },
        );
        for c in closers {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        (m, sender.join().expect("sender"))
    });
    let m = m.expect("the dry run");
    assert!(sent.expect("sender").finished);
    assert!(std::fs::read(&old_p).expect("read") == old, "OLD changed");
    assert_eq!(
        std::fs::metadata(&old_p)
            .and_then(|m| m.modified())
            .expect("mtime"),
        mtime
    );
    // The probe's filler came, and was timed.
    assert!(m.probe_bytes >= 256 << 10 && m.probe_secs > 0.0, "{m:?}");

    // A real sync of a copy: the dry run's figures are its figures.
    let copy = dir.path().join("copy");
    std::fs::copy(&old_p, &copy).expect("copy");
    let t = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&copy)
        .expect("target");
    let r = session(&new_p, &t, Target::InPlace(&t), None)
        .0
        .expect("the sync");
    assert_eq!(m.new_len, r.new_len);
    assert_eq!(m.counts.blocks_wanted, r.counts.blocks_wanted);
    assert_eq!(m.counts.blocks_found, r.counts.blocks_found);
    // Up: the same requests, how many per message depending on when the
    // answers arrive (10%); down: within 2% (the same data compressed in
    // the same stream; KEYS are the same size whatever the seed).
    let near = |a: u64, b: u64| a.abs_diff(b) * 50 <= b;
    assert!(
        m.bytes_up.abs_diff(r.bytes_up) * 10 <= r.bytes_up,
        "up {} vs {}",
        m.bytes_up,
        r.bytes_up
    );
    assert!(
        near(m.bytes_down, r.bytes_down),
        "down {} vs {}",
        m.bytes_down,
        r.bytes_down
    );
    eprintln!("dry run {m:?}\nsync {r:?}");
}
