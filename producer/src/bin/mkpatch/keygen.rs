//! `mkpatch keygen`, and reading the `--sign` key.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use anypatch_format::{key_file_text, key_id, parse_key_file, Hex, KeyKind};
use anypatch_producer::SecretKey;

use crate::Failure;

/// Reads a secret key file, warning (as ssh does) when other users can read
/// it: anyone who can read it can sign patches that appliers trust.
pub(crate) fn read_secret_key(path: &Path) -> Result<SecretKey, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let seed =
        parse_key_file(&text, KeyKind::Secret).with_context(|| format!("{}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            say!(
                "mkpatch: warning: the secret key {} can be read by other users (mode {mode:04o}), \
                 who could then sign patches; fix it with: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    Ok(SecretKey::from_seed(seed))
}

/// The public key file beside a secret key file: `x.key` -> `x.pub`, else `x.pub` appended.
fn public_path(secret: &Path) -> PathBuf {
    if secret.extension().is_some_and(|e| e == "key") {
        secret.with_extension("pub")
    } else {
        let mut s = secret.as_os_str().to_owned();
        s.push(".pub");
        PathBuf::from(s)
    }
}

pub(crate) fn run_keygen(secret_path: &Path, quiet: bool) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    // `keygen -o release.pub` would put the secret key where people look
    // for the one to hand out.
    if secret_path.extension().is_some_and(|e| e == "pub") {
        return Err(anyhow!(
            "refusing to write the secret key to {}: a .pub name is for the public key, which \
             mkpatch writes beside the secret one; give a name like release.key",
            secret_path.display()
        )
        .into());
    }
    let public_path = public_path(secret_path);
    let key = SecretKey::generate().context("cannot read random bytes from /dev/urandom")?;
    let write_new = |path: &Path, text: String, mode: u32| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| {
                format!(
                    "cannot create {} (an existing key is never overwritten)",
                    path.display()
                )
            })?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write_new(
        secret_path,
        key_file_text(key.seed(), KeyKind::Secret),
        0o600,
    )?;
    if let Err(e) = write_new(
        &public_path,
        key_file_text(&key.public_key(), KeyKind::Public),
        0o644,
    ) {
        let _ = std::fs::remove_file(secret_path); // no secret key without its public half
        return Err(e.into());
    }
    if quiet {
        return Ok(());
    }
    say!(
        "mkpatch: wrote {} (secret: keep it private) and {} (key id {})",
        secret_path.display(),
        public_path.display(),
        Hex(&key_id(&key.public_key()))
    );
    Ok(())
}
