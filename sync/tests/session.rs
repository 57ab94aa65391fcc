//! Whole sync sessions in memory: the sender and receiver state machines
//! joined by the wire encoding, the receiver hashing its image group by
//! group while messages flow. Every result must be the new image, in a
//! new file and in place, and the bytes each way must stay near what
//! changed.

use std::cell::RefCell;
use std::collections::VecDeque;

use anypatch_sync::matcher::OldImage;
use anypatch_sync::receiver::{Counts, Mode, Ready, Receiver, SyncError};
use anypatch_sync::sender::{image_root, Sender};
use anypatch_sync::tree::{leaf_range, GROUP_LEAVES, LEAF};
use anypatch_sync::wire::{decode, Decoded, Message};

mod common;
use common::{leaves_of, noise};

/// An image both read by the receiver and written by the test, as an
/// in-place target is.
struct Target(RefCell<Vec<u8>>);

impl OldImage for Target {
    fn size(&self) -> u64 {
        self.0.borrow().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.borrow().as_slice().read_at(buf, offset)
    }
}

/// Through the wire and back, counting bytes.
fn wire(m: Message, bytes: &mut u64) -> Message {
    let e = m.encode();
    *bytes += e.len() as u64;
    match decode(&e) {
        Ok(Decoded::Message(m, n)) if n == e.len() => m,
        other => panic!("{other:?}"),
    }
}

#[derive(Debug)]
struct Outcome {
    result: Vec<u8>,
    up: u64,
    down: u64,
    counts: Counts,
    /// Answers (leaves, keys, data) the receiver had taken before the
    /// sender's root arrived: it compared while the sender still hashed.
    answers_before_root: u64,
}

/// `tamper` may change each message the sender sends.
fn sync_with(
    old: &[u8],
    new: &[u8],
    mode: Mode,
    mut tamper: impl FnMut(Message) -> Message,
) -> Result<Outcome, SyncError> {
    let new_leaves = leaves_of(new);
    let root = image_root(new, new.len() as u64, &new_leaves).expect("root");
    let mut sender = Sender::new(new, new.len() as u64, 0xfeed);
    // The sender hashes its image a group per round, as the receiver does.
    let mut sender_groups = new_leaves.chunks(GROUP_LEAVES);
    let mut root_sent = false;
    let mut answers_before_root = 0;
    let mut root_taken = false;

    let target = Target(RefCell::new(old.to_vec()));
    let own = leaves_of(old);
    let mut output = vec![0u8; 0];
    let mut receiver = Receiver::new(&target, old.len() as u64, mode);
    let (mut up, mut down) = (0, 0);
    let mut to_receiver: VecDeque<Message> = sender.start().into();
    let mut own_groups = own.chunks(GROUP_LEAVES).enumerate();
    let mut own_finished = false;

    for _round in 0..100_000 {
        // The sender hashes one more group, and sends its root after the last.
        match sender_groups.next() {
            Some(values) => to_receiver.extend(sender.hashed(values)),
            None if !root_sent => {
                root_sent = true;
                to_receiver.extend(sender.tree_done(root));
            }
            None => {}
        }
        // The receiver hashes one more group of its image per round.
        match own_groups.next() {
            Some((g, values)) => receiver.own_group(g as u64, values)?,
            None if !own_finished => {
                own_finished = true;
                receiver.own_done()?;
            }
            None => {}
        }
        // A few messages down.
        for _ in 0..3 {
            if let Some(m) = to_receiver.pop_front() {
                let answer = matches!(
                    m,
                    Message::Leaves { .. } | Message::Keys { .. } | Message::Data { .. }
                );
                root_taken |= matches!(m, Message::Root { .. });
                receiver.take(wire(tamper(m), &mut down))?;
                answers_before_root += u64::from(answer && !root_taken);
            }
        }
        // Everything the receiver has to say goes up and is answered.
        for m in receiver.outgoing() {
            let answer = sender
                .answer(wire(m, &mut up))
                .map_err(|e| SyncError::Sender(e.to_string()))?;
            to_receiver.extend(answer);
        }
        let new_len = receiver.new_len().unwrap_or(0) as usize;
        for ready in receiver.ready() {
            write(&target, &mut output, old, mode, new_len, ready);
        }
        if receiver.is_done() {
            assert!(
                to_receiver.is_empty(),
                "the sender still had {to_receiver:?}"
            );
            assert_eq!(sender.finished(), Some(*root.as_bytes()));
            let counts = receiver.counts();
            let result = match mode {
                Mode::Copy => output,
                Mode::InPlace => {
                    let mut t = target.0.borrow().clone();
                    t.truncate(new.len());
                    t
                }
            };
            return Ok(Outcome {
                result,
                up,
                down,
                counts,
                answers_before_root,
            });
        }
    }
    panic!("the session did not end");
}

fn write(
    target: &Target,
    output: &mut Vec<u8>,
    old: &[u8],
    mode: Mode,
    new_len: usize,
    ready: Ready,
) {
    match (mode, ready) {
        (Mode::Copy, Ready::Unchanged { leaf }) => {
            let r = leaf_range(new_len as u64, leaf);
            output.extend_from_slice(&old[r.start as usize..r.end as usize]);
        }
        (Mode::Copy, Ready::Changed { offset, bytes, .. }) => {
            assert_eq!(output.len() as u64, offset);
            output.extend_from_slice(&bytes);
        }
        (Mode::InPlace, Ready::Unchanged { .. }) => {}
        (Mode::InPlace, Ready::Changed { offset, bytes, .. }) => {
            let mut t = target.0.borrow_mut();
            let end = offset as usize + bytes.len();
            if t.len() < end {
                t.resize(end, 0);
            }
            t[offset as usize..end].copy_from_slice(&bytes);
        }
    }
}

fn sync(old: &[u8], new: &[u8], mode: Mode) -> Outcome {
    let o = sync_with(old, new, mode, |m| m).unwrap_or_else(|e| panic!("{e}"));
    assert!(o.result == new, "{mode:?}: the result is not the new image");
    o
}

/// Old and new images of the corpus's shapes, 8 MiB.
fn pairs() -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    let n = 8 << 20;
    let old = noise(n, 1);
    let mut out = Vec::new();

    let mut sparse = old.clone();
    for i in 0..20 {
        let at = (i * 397 * 4096 + 1234) % (n - 100);
        sparse[at..at + 100].copy_from_slice(&noise(100, i as u64 + 10));
    }
    out.push(("sparse", old.clone(), sparse));

    let mut shift = b"!".to_vec();
    shift.extend_from_slice(&old);
    for i in 0..30usize {
        let at = (i * 277_777) % (shift.len() - 200);
        if i % 2 == 0 {
            shift.splice(at..at, noise(1 + i * 3, i as u64 + 50));
        } else {
            shift.drain(at..at + 1 + i * 3);
        }
    }
    out.push(("shift", old.clone(), shift));

    let mut moved = old.clone();
    let (a, b, span) = (n / 8, n / 2, n / 16);
    let (head, tail) = moved.split_at_mut(b);
    head[a..a + span].swap_with_slice(&mut tail[..span]);
    out.push(("moved", old.clone(), moved));

    let mut append = old.clone();
    append.push(b'0');
    out.push(("append", old.clone(), append));

    let mut grow = old.clone();
    grow.extend_from_slice(&noise(3 << 20, 77));
    out.push(("grow", old.clone(), grow));

    out.push(("shrink", old.clone(), old[..n / 3 + 5].to_vec()));
    out.push(("identical", old.clone(), old.clone()));
    out.push(("from empty", Vec::new(), noise(200_000, 5)));
    out.push(("to empty", noise(200_000, 5), Vec::new()));
    out.push(("one leaf", noise(5000, 6), noise(4000, 6)));
    out.push(("zeros", old.clone(), vec![0; n]));
    out
}

#[test]
fn every_pair_syncs_exactly_to_a_new_file_and_in_place() {
    for (name, old, new) in pairs() {
        for mode in [Mode::Copy, Mode::InPlace] {
            let o = sync(&old, &new, mode);
            eprintln!(
                "{name:>10} {mode:?}: up {} B, down {} B, {:?}",
                o.up, o.down, o.counts
            );
        }
    }
}

#[test]
fn little_goes_either_way_when_little_changed() {
    let pairs = pairs();
    let (_, old, new) = &pairs[0];
    let o = sync(old, new, Mode::InPlace);
    // 20 changed blocks of 4 KiB in 8 MiB: the data down is at most those
    // blocks (noise does not compress) plus the tree (16 B per MiB, the
    // leaves and keys of 20 groups and leaves) and framing.
    let changed = 20 * 2 * 4096; // a 100-byte edit may straddle two blocks
    assert!(
        o.down < changed + 20 * (16 * 16 + 16 * 20 + 64) + 8 * 16 + 1024,
        "down {}",
        o.down
    );
    assert!(o.up < 20 * 64, "up {}", o.up);
    assert_eq!(o.counts.leaves_retried, 0);
}

#[test]
fn shifted_data_is_found_not_sent() {
    let pairs = pairs();
    let (_, old, new) = pairs.iter().find(|p| p.0 == "shift").expect("shift pair");
    for mode in [Mode::Copy, Mode::InPlace] {
        let o = sync(old, new, mode);
        // One block around each of the 30 edits and the prepended byte.
        assert!(o.counts.blocks_wanted <= 31 * 2, "{mode:?}: {:?}", o.counts);
        assert!(
            o.down < 62 * 4096 + 128 * (16 * 20 + 16) + 8 * 16 * 16 + 1024,
            "{mode:?}: down {}",
            o.down
        );
    }
}

#[test]
fn moved_data_is_found_when_its_source_was_looked_at_first() {
    let pairs = pairs();
    let (_, old, new) = pairs.iter().find(|p| p.0 == "moved").expect("moved pair");
    // Two regions swapped: the later one's new data is the earlier one's
    // old data, which the matcher has seen by then; the earlier one's is
    // asked for (spec/SYNC.md section 9). In place, the earlier region is
    // rewritten by then, so both are asked.
    let o = sync(old, new, Mode::Copy);
    assert_eq!(
        (o.counts.blocks_found, o.counts.blocks_wanted),
        (128, 128),
        "{:?}",
        o.counts
    );
    let o = sync(old, new, Mode::InPlace);
    assert_eq!(
        (o.counts.blocks_found, o.counts.blocks_wanted),
        (0, 256),
        "{:?}",
        o.counts
    );
}

/// Rewrites DATA on its way: decodes the sender's zstd stream, lets
/// `change` alter the raw bytes, and encodes them into a stream of its
/// own, so that what the receiver gets decodes and only its content lies.
struct Restream {
    from: anypatch_sync::packing::Unpacker,
    to: anypatch_sync::packing::Packer,
}

impl Restream {
    fn new() -> Self {
        Self {
            from: anypatch_sync::packing::Unpacker::new().expect("unpacker"),
            to: anypatch_sync::packing::Packer::new().expect("packer"),
        }
    }

    fn data(&mut self, m: Message, change: impl FnOnce(&mut [u8])) -> Message {
        match m {
            Message::Data {
                offset,
                raw_len,
                codec: 3,
                bytes,
            } => {
                let mut raw = vec![0; raw_len as usize];
                self.from
                    .unpack(&bytes, &mut raw)
                    .expect("the sender's stream");
                change(&mut raw);
                Message::Data {
                    offset,
                    raw_len,
                    codec: 3,
                    bytes: self.to.pack(&raw).expect("pack"),
                }
            }
            m => m,
        }
    }
}

#[test]
fn a_sender_whose_data_is_not_its_image_is_refused_after_one_retry() {
    let pairs = pairs();
    let (_, old, new) = &pairs[0];
    // Flip a byte of every DATA: the first build fails, the whole leaf is
    // asked again, that fails too, and the sync stops.
    let mut t = Restream::new();
    let e = sync_with(old, new, Mode::InPlace, |m| t.data(m, |raw| raw[0] ^= 1))
        .expect_err("a lying sender");
    assert!(e.to_string().contains("do not match its own tree"), "{e}");

    // Only the first DATA is wrong: one retry, then an exact result.
    let mut first = true;
    let mut t = Restream::new();
    let o = sync_with(old, new, Mode::Copy, |m| {
        let flip = first && matches!(m, Message::Data { .. });
        first &= !flip;
        t.data(m, |raw| {
            if flip {
                raw[0] ^= 1
            }
        })
    })
    .expect("one bad DATA is retried");
    assert_eq!(o.counts.leaves_retried, 1);
    assert!(o.result == *new);
}

#[test]
fn a_sender_that_announces_another_root_is_refused() {
    let pairs = pairs();
    let (_, old, new) = &pairs[0];
    // Every group and leaf it sends is its image's; only the root, sent
    // last, is another: the image built from its groups does not have it.
    let e = sync_with(old, new, Mode::Copy, |m| match m {
        Message::Root { mut root } => {
            root[0] ^= 1;
            Message::Root { root }
        }
        m => m,
    })
    .expect_err("a wrong root");
    assert!(
        e.to_string()
            .contains("does not have the BLAKE3 it announced"),
        "{e}"
    );
}

#[test]
fn the_receiver_compares_and_is_answered_while_the_sender_still_hashes() {
    // 8 MiB whose second and seventh MiB changed: the receiver asks about
    // the second group as soon as both sides hashed it, long before the
    // sender has hashed its last group and sent its root.
    let old = noise(8 << 20, 11);
    let mut new = old.clone();
    new[(1 << 20) + 100..(1 << 20) + 5000].fill(1);
    new[(6 << 20) + 7..(6 << 20) + 9].fill(2);
    let o = sync(&old, &new, Mode::InPlace);
    assert!(o.result == new);
    assert!(
        o.answers_before_root > 0,
        "no answer came before the root: {:?}",
        o.counts
    );
}

#[test]
fn a_receiver_ends_only_with_the_root_which_comes_last() {
    // Both images equal: every leaf is settled by the groups alone.
    let image = noise(3 << 20, 4);
    let leaves = leaves_of(&image);
    let len = image.len() as u64;
    let root = image_root(&image[..], len, &leaves).expect("root");
    let mut sender = Sender::new(&image[..], len, 5);
    let mut receiver = Receiver::new(&image[..], len, Mode::InPlace);
    let mut down: Vec<Message> = sender.start();
    // No root before every group was given.
    assert!(sender.tree_done(root).is_empty());
    down.extend(sender.hashed(&leaves));
    for (g, values) in leaves.chunks(GROUP_LEAVES).enumerate() {
        receiver.own_group(g as u64, values).expect("own group");
    }
    receiver.own_done().expect("own done");
    // A root before the groups it covers is refused.
    let mut early = Receiver::new(&image[..], len, Mode::InPlace);
    early.take(down[0].clone()).expect("image");
    let e = early
        .take(Message::Root {
            root: *root.as_bytes(),
        })
        .expect_err("an early root");
    assert!(e.to_string().contains("the root comes last"), "{e}");

    for m in down {
        receiver.take(m).expect("groups");
    }
    assert_eq!(receiver.ready().len(), 48, "every leaf settled");
    assert!(!receiver.is_done(), "done without the sender's root");
    // A root that is not the one of the groups sent ends the session.
    let mut liar = Receiver::new(&image[..], len, Mode::InPlace);
    let mut lying = Sender::new(&image[..], len, 5);
    let mut msgs = lying.start();
    msgs.extend(lying.hashed(&leaves));
    for m in msgs {
        liar.take(m).expect("groups");
    }
    for (g, values) in leaves.chunks(GROUP_LEAVES).enumerate() {
        liar.own_group(g as u64, values).expect("own group");
    }
    let mut other = *root.as_bytes();
    other[31] ^= 0x80;
    let e = liar
        .take(Message::Root { root: other })
        .expect_err("a lying root");
    assert!(e.to_string().contains("BLAKE3 it announced"), "{e}");

    for m in sender.tree_done(root) {
        receiver.take(m).expect("root");
    }
    assert!(receiver.is_done());
    assert!(matches!(
        receiver.outgoing().last(),
        Some(Message::Done { root: r }) if r == root.as_bytes()
    ));
}

/// A change made to the sender's messages on their way.
type Tamper = Box<dyn FnMut(Message) -> Message>;

#[test]
fn unasked_or_malformed_answers_are_refused() {
    let old = noise(3 << 20, 1);
    let mut new = old.clone();
    new[100] ^= 1;
    let cases: Vec<(&str, Tamper)> = vec![
        (
            "not asked",
            Box::new(|m| match m {
                Message::Leaves { values, .. } => Message::Leaves { group: 2, values },
                m => m,
            }),
        ),
        (
            "leaves for group",
            Box::new(|m| match m {
                Message::Leaves { group, mut values } => {
                    values.pop();
                    Message::Leaves { group, values }
                }
                m => m,
            }),
        ),
        (
            "more groups",
            Box::new(|m| match m {
                // One group too many after the last.
                Message::Groups {
                    first: 2,
                    mut values,
                } => {
                    values.push([0; 16]);
                    Message::Groups { first: 2, values }
                }
                m => m,
            }),
        ),
        (
            "it said: go away",
            Box::new(|m| match m {
                Message::Keys { .. } => Message::Error("go away".into()),
                m => m,
            }),
        ),
    ];
    for (want, tamper) in cases {
        let e = sync_with(&old, &new, Mode::Copy, tamper).expect_err(want);
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
}

#[test]
fn a_sender_refuses_what_its_image_does_not_have() {
    let new = noise(3 << 20, 2);
    let l = leaves_of(&new);
    let root = image_root(&new[..], new.len() as u64, &l).expect("root");
    let mut s = Sender::new(&new[..], new.len() as u64, 1);
    use anypatch_sync::wire::Range;
    // Before it hashed a group, it does not answer about it.
    s.hashed(&l[..GROUP_LEAVES]);
    let e = s
        .answer(Message::WantLeaves(vec![1]))
        .expect_err("not sent");
    assert!(
        e.to_string()
            .contains("group 1 asked; 1 of the image's 3 groups were sent"),
        "{e}"
    );
    s.answer(Message::WantLeaves(vec![0]))
        .expect("group 0 was sent");
    s.hashed(&l[GROUP_LEAVES..]);
    assert_eq!(s.tree_done(root).len(), 1);
    for (m, want) in [
        (
            Message::WantLeaves(vec![3]),
            "group 3 asked; 3 of the image's 3 groups were sent",
        ),
        (
            Message::WantKeys(vec![48]),
            "leaf 48 asked; the image has 48",
        ),
        (
            Message::WantData(vec![Range {
                offset: 1,
                len: 4096,
            }]),
            "block aligned",
        ),
        (
            Message::WantData(vec![Range {
                offset: LEAF - 4096,
                len: 8192,
            }]),
            "inside one leaf",
        ),
        (
            Message::WantData(vec![Range {
                offset: 3 << 20,
                len: 4096,
            }]),
            "inside the image",
        ),
        (
            Message::WantData(vec![Range { offset: 0, len: 0 }]),
            "not empty",
        ),
        (
            Message::Groups {
                first: 0,
                values: vec![],
            },
            "only a sender sends",
        ),
    ] {
        let e = s.answer(m).expect_err(want);
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
}
