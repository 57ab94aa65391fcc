//! The sections of a patch, each checked whole once it is buffered: the
//! header section, the signature block, a page and the trailer.

use alloc::vec::Vec;

use anypatch_format::{
    key_id, parse_header_section, Hash, Header, Page, PageRef, PreambleRepr, SignatureBlock,
    Trailer, SIG_ALG_ED25519,
};
use ruzstd::decoding::FrameDecoder;

use super::frames::unpack_page;
use super::rules::Rules;
use crate::ApplyError;

/// One signature found in the patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signer {
    /// The signer's Ed25519 public key.
    pub public_key: [u8; 32],
    /// Its short id: the first 8 bytes of its BLAKE3.
    pub key_id: [u8; 8],
    /// The signature verifies over the header section.
    pub valid: bool,
    /// The key is one of the trusted keys given to [`read_signatures`].
    pub trusted: bool,
}

/// Parses and checks the header section (preamble, header body and header
/// hash): the hash first, so a damaged version or feature field is damage;
/// then the header's own codec against the feature bits.
pub fn read_header_section(section: &[u8]) -> Result<(PreambleRepr, Header), ApplyError> {
    let (repr, header) = parse_header_section(section)?;
    let rules = Rules {
        required_features: repr.required_features,
        ..Rules::default()
    };
    rules.codec_feature(header.codec, "codec")?;
    Ok((repr, header))
}

/// Verifies every signature in `block` over the header `section` and, when
/// `trusted` is not empty, requires a valid one by a trusted key. A known
/// algorithm's signature that fails means the patch was altered after
/// signing: refused, trusted keys or not. An entry of an algorithm this
/// reader does not know is only not counted (spec 3.4).
pub fn read_signatures(
    block: &[u8],
    section: &[u8],
    trusted: &[[u8; 32]],
) -> Result<Vec<Signer>, ApplyError> {
    let block = SignatureBlock::parse(block)?;
    let signers: Vec<Signer> = block
        .entries
        .iter()
        .map(|e| Signer {
            public_key: e.public_key,
            key_id: key_id(&e.public_key),
            valid: e.verifies(section),
            trusted: trusted.contains(&e.public_key),
        })
        .collect();
    if let Some(bad) = block
        .entries
        .iter()
        .zip(&signers)
        .find(|(e, s)| e.algorithm == SIG_ALG_ED25519 && !s.valid)
    {
        return Err(ApplyError::BadSignature {
            key_id: bad.1.key_id,
        });
    }
    if trusted.is_empty() || signers.iter().any(|s| s.valid && s.trusted) {
        return Ok(signers);
    }
    Err(
        match signers.iter().find(|s| s.trusted).or(signers.first()) {
            None => ApplyError::Unsigned,
            Some(s) if s.trusted => ApplyError::BadSignature { key_id: s.key_id },
            Some(s) => ApplyError::UntrustedSigner { key_id: s.key_id },
        },
    )
}

/// Checks page `page` (counting from 0) against the ref that named it and
/// parses it; a compact page is decoded into `content` first (its inline
/// ops are read from there).
pub fn read_page(
    bytes: &[u8],
    named: &PageRef,
    page: u64,
    rules: &Rules,
    dec: &mut FrameDecoder,
    content: &mut Vec<u8>,
) -> Result<Page, ApplyError> {
    if *blake3::hash(bytes).as_bytes() != named.hash {
        return Err(ApplyError::PageHash { page });
    }
    Ok(if rules.compact_pages() {
        unpack_page(dec, bytes, content, page)?;
        Page::parse_compact(content)?
    } else {
        Page::parse(bytes)?
    })
}

/// Checks the trailer against the hash of every patch byte before it, and
/// the patch's length (`consumed`, trailer included) against the header.
/// Returns the patch hash.
pub fn read_trailer(
    bytes: &[u8],
    patch_hash: Hash,
    consumed: u64,
    header: &Header,
) -> Result<Hash, ApplyError> {
    let trailer = Trailer::parse(bytes)?;
    if trailer.patch_hash != patch_hash {
        return Err(ApplyError::PatchHash);
    }
    if consumed != header.patch_len {
        return Err(ApplyError::LengthMismatch {
            field: "patch_len",
            got: consumed,
            expected: header.patch_len,
        });
    }
    Ok(patch_hash)
}
