//! Regenerates the test vectors in `spec/vectors/` (or the directory given).
//! Run it after a deliberate format or producer change:
//! `cargo run -p anypatch-tests --bin gen-vectors`.

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| anypatch_tests::root().join("spec/vectors"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    anypatch_tests::vectors::write_all(&dir)?;
    eprintln!("wrote test vectors to {}", dir.display());
    Ok(())
}
