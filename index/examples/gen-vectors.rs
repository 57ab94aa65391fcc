//! Regenerates the index test vectors in `spec/index-vectors/` (or the
//! directory given): `cargo run -p anypatch-index --example gen-vectors`.
//! Run it after a deliberate format change, and commit the result.

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/index-vectors")
        });
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    anypatch_index::vectors::write_all(&dir)?;
    eprintln!("wrote the index test vectors to {}", dir.display());
    Ok(())
}
