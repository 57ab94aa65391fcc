//! What a file type is called in messages.

use std::fs::FileType;
use std::os::unix::fs::FileTypeExt;

/// What a file of type `kind` is called in messages: "regular file",
/// "directory", "FIFO (named pipe)", "character device", "block device",
/// "socket", "symbolic link" or "special file". Call it when refusing a path
/// for what it is.
pub fn kind_name(kind: FileType) -> &'static str {
    names(kind).1
}

/// [`kind_name`] with its article, for "OUT is a directory": "a regular
/// file", "a FIFO (named pipe)", ...
pub fn a_kind(kind: FileType) -> &'static str {
    names(kind).0
}

/// The name with and without its article.
fn names(kind: FileType) -> (&'static str, &'static str) {
    let both = [
        (kind.is_file(), "a regular file"),
        (kind.is_dir(), "a directory"),
        (kind.is_fifo(), "a FIFO (named pipe)"),
        (kind.is_char_device(), "a character device"),
        (kind.is_block_device(), "a block device"),
        (kind.is_socket(), "a socket"),
        (kind.is_symlink(), "a symbolic link"),
    ];
    let with = both
        .into_iter()
        .find_map(|(is, name)| is.then_some(name))
        .unwrap_or("a special file");
    // Every name above starts with "a ".
    (with, &with[2..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_well() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let kind = |p: &std::path::Path| std::fs::symlink_metadata(p).expect("stat").file_type();
        assert_eq!(kind_name(kind(&file)), "regular file");
        assert_eq!(a_kind(kind(dir.path())), "a directory");
        std::os::unix::fs::symlink(&file, dir.path().join("l")).expect("symlink");
        assert_eq!(a_kind(kind(&dir.path().join("l"))), "a symbolic link");
        assert_eq!(
            kind_name(kind(std::path::Path::new("/dev/null"))),
            "character device"
        );
    }
}
