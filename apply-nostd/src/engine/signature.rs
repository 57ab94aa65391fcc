//! The signature block: every Ed25519 entry verified over the header
//! section, and the trusted keys required.

use super::*;

impl Applier {
    /// Verifies every signature in the buffered signature block over the
    /// header section and, when trusted keys were given, requires one of them.
    pub(super) fn check_signatures(&mut self) -> Result<(), ApplyError> {
        let block = SignatureBlock::parse(&self.inbuf)?;
        let section = core::mem::take(&mut self.header_section);
        self.signers = block
            .entries
            .iter()
            .map(|e| Signer {
                public_key: e.public_key,
                key_id: key_id(&e.public_key),
                valid: e.verifies(&section),
                trusted: self.trusted_keys.contains(&e.public_key),
            })
            .collect();
        // A known algorithm's signature that fails means the patch was
        // altered after signing: refused, trusted keys or not. An entry of an
        // algorithm this applier does not know is only not counted (3.4).
        if let Some(bad) = block
            .entries
            .iter()
            .zip(&self.signers)
            .find(|(e, s)| e.algorithm == SIG_ALG_ED25519 && !s.valid)
        {
            return Err(ApplyError::BadSignature {
                key_id: bad.1.key_id,
            });
        }
        if self.trusted_keys.is_empty() || self.signers.iter().any(|s| s.valid && s.trusted) {
            return Ok(());
        }
        Err(
            match self
                .signers
                .iter()
                .find(|s| s.trusted)
                .or(self.signers.first())
            {
                None => ApplyError::Unsigned,
                Some(s) if s.trusted => ApplyError::BadSignature { key_id: s.key_id },
                Some(s) => ApplyError::UntrustedSigner { key_id: s.key_id },
            },
        )
    }
}
