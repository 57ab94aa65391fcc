//! The signature block: every Ed25519 entry verified over the header
//! section, and the trusted keys required (`crate::layout::read_signatures`).

use super::*;

impl Applier {
    /// Checks the buffered signature block and keeps what it found.
    pub(super) fn check_signatures(&mut self) -> Result<(), ApplyError> {
        let section = core::mem::take(&mut self.trust.section);
        self.trust.signers =
            crate::layout::read_signatures(&self.input.buf, &section, &self.trust.keys)?;
        Ok(())
    }
}
