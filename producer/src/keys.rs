//! Ed25519 signing keys: generation, key files and header signatures.

use std::fmt;
use std::io::Read;

use anypatch_format::{signed_message, SignatureBlock, SignatureEntry, SIG_ALG_ED25519};
use ed25519_dalek::{Signer as _, SigningKey};

/// An Ed25519 secret key (its 32-byte seed). Debug output never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {:02x?})", &self.public_key()[..4])
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> std::io::Result<Self> {
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
        Ok(Self(seed))
    }

    /// The key with this 32-byte seed, as read from a key file.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(seed)
    }

    /// The seed, for writing the secret key file.
    pub fn seed(&self) -> &[u8; 32] {
        &self.0
    }

    /// The matching public key.
    pub fn public_key(&self) -> [u8; 32] {
        SigningKey::from_bytes(&self.0).verifying_key().to_bytes()
    }

    /// The signature block for a header section: one Ed25519 signature over
    /// the signature context and the section.
    pub fn sign_header_section(&self, section: &[u8]) -> SignatureBlock {
        let key = SigningKey::from_bytes(&self.0);
        let message = signed_message(section);
        SignatureBlock {
            entries: vec![SignatureEntry {
                algorithm: SIG_ALG_ED25519,
                public_key: key.verifying_key().to_bytes(),
                signature: key.sign(&message).to_bytes(),
            }],
        }
    }
}
