//! Live sync of an image between two machines (spec/SYNC.md, a draft).
//!
//! What exists: the hash tree both sides compare ([`tree`]), whose values
//! are BLAKE3's own interior nodes over 64 KiB leaves, so one pass over an
//! image gives both the tree and the image's BLAKE3; and the hashing of an
//! image's leaves on all cores, group by group in order ([`hash`]), so a
//! side can compare while it hashes; and the messages of a session, with a
//! decoder that refuses what is malformed or oversized ([`wire`]); and
//! what the receiver finds in its own image for a leaf that differs
//! ([`matcher`]); both sides of a session as state machines
//! ([`sender`], [`receiver`]) and the drivers that run them over byte
//! streams ([`drive`]), the sender streaming its tree as it is hashed
//! ([`growing`]).
#![forbid(unsafe_code)]

pub mod cache;
pub mod drive;
pub mod growing;
pub mod hash;
pub mod matcher;
pub mod pace;
pub mod packing;
pub mod progress;
pub mod receiver;
pub mod sender;
pub mod tree;
pub mod wire;

pub use hash::hash_leaves;
pub use tree::{differing, group_values, leaf_value, root, Value, GROUP, GROUP_LEAVES, LEAF};
