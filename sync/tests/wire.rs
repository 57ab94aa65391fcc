//! The session messages: every kind survives a round trip, and the decoder
//! refuses what spec/SYNC.md section 5 does not allow, without panicking
//! and without waiting for more than the limit.

use anypatch_sync::wire::{decode, BlockKey, Decoded, Measure, Message, Range, MAX_PAYLOAD};
use proptest::prelude::*;

fn all_kinds() -> Vec<Message> {
    vec![
        Message::Image {
            len: 1 << 31,
            leaf_log2: 16,
            group_leaves: 16,
            key_seed: 99,
        },
        Message::Groups {
            first: 3,
            values: vec![[1; 16], [2; 16]],
        },
        Message::Groups {
            first: 0,
            values: vec![],
        },
        Message::Leaves {
            group: 2,
            values: vec![[3; 16]; 16],
        },
        Message::Keys {
            leaf: 40,
            keys: vec![
                BlockKey {
                    weak: 0xdead_beef,
                    strong: [0xfe; 16]
                };
                16
            ],
        },
        Message::Data {
            offset: 1 << 40,
            raw_len: 65536,
            codec: 2,
            bytes: vec![9; 1000],
        },
        Message::Error("no such image".into()),
        Message::WantLeaves(vec![0, 5, u32::MAX]),
        Message::WantKeys(vec![]),
        Message::WantData(vec![
            Range {
                offset: 4096,
                len: 8192,
            },
            Range { offset: 0, len: 1 },
        ]),
        Message::Done { root: [0xab; 32] },
        Message::Root { root: [7; 32] },
        Message::Measure(vec![Range {
            offset: 65536,
            len: 4096,
        }]),
        Message::Measured(vec![Measure {
            range: Range {
                offset: 65536,
                len: 4096,
            },
            packed: 1234,
        }]),
        Message::Measured(vec![]),
        Message::Fill(vec![5; 300]),
        Message::Probe { len: 1 << 20 },
    ]
}

#[test]
fn every_kind_round_trips_and_needs_all_its_bytes() {
    for m in all_kinds() {
        let bytes = m.encode();
        assert_eq!(
            decode(&bytes),
            Ok(Decoded::Message(m.clone(), bytes.len())),
            "{m:?}"
        );
        // Any prefix asks for more, never decodes or fails.
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut]) {
                Ok(Decoded::Need(n)) => assert!(n > cut, "{m:?} cut at {cut} asks for {n}"),
                other => panic!("{m:?} cut at {cut}: {other:?}"),
            }
        }
        // Bytes after it are the next message's.
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        assert_eq!(decode(&two), Ok(Decoded::Message(m, bytes.len())));
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn refused(bytes: &[u8]) -> String {
    match decode(bytes) {
        Err(e) => e.to_string(),
        other => panic!("accepted: {other:?}"),
    }
}

#[test]
fn an_oversized_length_is_refused_before_the_payload_arrives() {
    let mut header = vec![0x05];
    header.extend_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
    assert!(refused(&header).contains("at most"));
    header[1..5].copy_from_slice(&MAX_PAYLOAD.to_le_bytes());
    assert_eq!(decode(&header), Ok(Decoded::Need(5 + MAX_PAYLOAD as usize)));
}

#[test]
fn malformed_payloads_are_refused_with_what_was_wrong() {
    assert!(refused(&frame(0x01, &[0; 19])).contains("too many"));
    assert!(refused(&frame(0x01, &[0; 17])).contains("inside"));
    assert!(refused(&frame(0x07, &[0; 33])).contains("ROOT has 1 bytes too many"));
    assert!(refused(&frame(0x07, &[0; 31])).contains("inside"));
    assert!(refused(&frame(0x08, &[0; 15])).contains("MEASURED ends inside"));
    assert!(refused(&frame(0x15, &[0; 4097 * 12])).contains("more than 4096"));
    assert!(refused(&frame(0x16, &(17u32 << 20).to_le_bytes())).contains("PROBE of"));
    assert!(refused(&frame(0x16, &[0; 5])).contains("too many"));
    assert!(refused(&frame(0x02, &[0; 4 + 17])).contains("GROUPS ends inside an item"));
    assert!(refused(&frame(0x03, &[0; 4 + 17 * 16])).contains("more than 16"));
    assert!(refused(&frame(0x04, &[0; 4 + 17 * 20])).contains("more than 16"));
    assert!(refused(&frame(0x11, &[0; 4097 * 4])).contains("more than 4096"));
    assert!(refused(&frame(0x13, &[0; 13])).contains("WANT_DATA ends inside"));
    assert!(refused(&frame(0x14, &[0; 31])).contains("inside"));
    assert!(refused(&frame(0x7f, &[])).contains("unknown message kind 0x7f"));
    assert!(refused(&frame(0x05, &[0; 12])).contains("inside"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    /// Whatever a peer sends, the decoder answers: a message no longer
    /// than what it was given, a need beyond it, or a refusal.
    #[test]
    fn any_bytes_decode_or_refuse_without_panicking(kind in 0u8..0x20, payload in proptest::collection::vec(any::<u8>(), 0..600), extra in 0usize..8) {
        let mut bytes = frame(kind, &payload);
        bytes.extend(std::iter::repeat_n(0u8, extra));
        match decode(&bytes) {
            Ok(Decoded::Message(m, used)) => {
                prop_assert_eq!(used, 5 + payload.len());
                prop_assert_eq!(m.encode(), bytes[..used].to_vec());
            }
            Ok(Decoded::Need(n)) => prop_assert!(n > bytes.len()),
            Err(_) => {}
        }
    }
}
