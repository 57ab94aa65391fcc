//! A client's access token (`applypatch --token-file FILE`): what the
//! server's access file names for an image or a patch (see `access`).
//!
//! The token is a secret: it is read from a file, never from a command
//! line (where `ps` shows it), and nothing prints it: its `Debug` says only
//! its length, and no error message quotes it.

use std::path::Path;

/// Longest token accepted: it must fit in a protocol line (4096 bytes).
pub const MAX_TOKEN: usize = 1024;

/// A token: 1 to [`MAX_TOKEN`] printable ASCII characters, no spaces, so
/// that it is one word on a protocol line and a valid HTTP header value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({} characters, not shown)", self.0.len())
    }
}

impl Token {
    /// A token from its text; the error says what is wrong without quoting it.
    pub fn new(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the token is empty".into());
        }
        if text.len() > MAX_TOKEN {
            return Err(format!(
                "the token is {} bytes long; at most {MAX_TOKEN} are accepted",
                text.len()
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token must be printable ASCII without spaces (letters, digits, punctuation)"
                    .into(),
            );
        }
        Ok(Self(text.to_owned()))
    }

    /// Reads the token from the first line of `path`. The second value is a
    /// warning to show when other users may read the file (as ssh warns
    /// about keys): anyone who can read it can fetch what it guards.
    pub fn read_file(path: &Path) -> Result<(Self, Option<String>), String> {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        // A token file is one short line: never read more than a few KiB of it.
        let mut bytes = Vec::new();
        file.take(MAX_TOKEN as u64 + 2)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
        let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        let first = first.strip_suffix(b"\r").unwrap_or(first);
        let text = std::str::from_utf8(first).map_err(|_| {
            format!(
                "the token file {} must hold the token on its first line, in printable ASCII",
                path.display()
            )
        })?;
        let token = Self::new(text.trim()).map_err(|why| {
            format!(
                "the token file {}: {why}; it must hold the token on its first line",
                path.display()
            )
        })?;
        let warning = std::fs::metadata(path)
            .ok()
            .map(|m| m.permissions().mode() & 0o7777)
            .filter(|mode| mode & 0o077 != 0)
            .map(|mode| {
                format!(
                    "warning: the token file {} can be read by other users (mode {mode:04o}), who could then fetch what it guards; fix it with: chmod 600 {}",
                    path.display(),
                    path.display()
                )
            });
        Ok((token, warning))
    }

    /// The secret itself, for the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_printable_word_and_never_shown() {
        let t = Token::new("s3cret-42").expect("a token");
        assert_eq!(t.expose(), "s3cret-42");
        assert!(!format!("{t:?}").contains("s3cret"));
        for bad in ["", "two words", "tab\there", "é", "a\nb"] {
            let e = Token::new(bad).expect_err(bad);
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        assert!(Token::new(&"x".repeat(MAX_TOKEN + 1)).is_err());
    }

    #[test]
    fn the_file_gives_its_first_line_and_a_warning_if_others_can_read_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret \r\nsecond line\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let (t, warning) = Token::read_file(&path).expect("read");
        assert_eq!(t.expose(), "s3cret");
        assert_eq!(warning, None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let (_, warning) = Token::read_file(&path).expect("read");
        let warning = warning.expect("a warning for mode 0644");
        assert!(
            warning.contains("0644") && warning.contains("chmod 600"),
            "{warning}"
        );
        std::fs::write(&path, "two words\n").expect("write");
        let e = Token::read_file(&path).expect_err("spaces");
        assert!(!e.contains("two words"), "the error quotes the token: {e}");
    }
}
