//! Man pages and shell completions for the anypatch CLIs, made from their
//! clap definitions so they never drift from `--help`.
//!
//! Each binary calls [`run_if_requested`] first thing in `main`: given
//! exactly `PROG --generate-docs DIR`, it writes the files below into DIR and
//! exits; given anything else, it does nothing and the binary parses its
//! command line as usual. The flag is hidden: it is for `scripts/install`,
//! `scripts/build-deb` and packagers, not for users.
//!
//! What DIR receives (see [`generate`]):
//!
//! ```text
//! man/man1/PROG.1  man/man1/PROG-SUB.1 ...   one page per visible subcommand
//! completions/bash/PROG                      for /usr/share/bash-completion/completions/
//! completions/zsh/_PROG                      for /usr/share/zsh/vendor-completions/
//! completions/fish/PROG.fish                 for /usr/share/fish/vendor_completions.d/
//! ```
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Command;
use clap_complete::Shell;

/// The hidden flag: `PROG --generate-docs DIR`.
pub const FLAG: &str = "--generate-docs";

/// If the command line is exactly `PROG --generate-docs DIR`, writes the man
/// pages and completions of `command()` into DIR, prints each file's path
/// on stdout and returns the exit code (1, with the reason on stderr, when a
/// file cannot be written). Otherwise returns `None` without calling
/// `command`.
pub fn run_if_requested(command: impl FnOnce() -> Command) -> Option<ExitCode> {
    let dir = requested(std::env::args_os())?;
    let cmd = command();
    let name = cmd.get_name().to_owned();
    Some(match generate(cmd, &dir) {
        Ok(files) => {
            let mut out = io::stdout().lock();
            let listed = files
                .iter()
                .try_for_each(|f| writeln!(out, "{}", f.display()))
                .and_then(|()| out.flush());
            match listed {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&name, &format!("cannot write to stdout: {e}")),
            }
        }
        Err(e) => fail(&name, &e.to_string()),
    })
}

/// The DIR of `PROG --generate-docs DIR`, if that is the whole command line.
pub fn requested(args: impl IntoIterator<Item = OsString>) -> Option<PathBuf> {
    let mut args = args.into_iter().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == FLAG => Some(PathBuf::from(dir)),
        _ => None,
    }
}

/// Writes the man pages (section 1: one for `cmd`, one per visible
/// subcommand, named `PROG-SUB.1`) and the bash, zsh and fish completions of
/// `cmd` under `dir`, creating the directories. Returns the files written.
pub fn generate(cmd: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_owned();
    let man = dir.join("man").join("man1");
    create_dir(&man)?;
    let mut files = Vec::new();
    // Built, the subcommands have their display names (`mkpatch-inspect`),
    // which clap_mangen uses for the page's name and file.
    let mut built = cmd.clone().disable_help_subcommand(true);
    built.build();
    // Every page's footer names the package's version, which clap gives
    // only the top command.
    let source = format!("{name} {}", built.get_version().unwrap_or_default());
    write_pages(&built, &source, &man, &mut files)?;

    for (shell, sub, file) in [
        (Shell::Bash, "bash", name.clone()),
        (Shell::Zsh, "zsh", format!("_{name}")),
        (Shell::Fish, "fish", format!("{name}.fish")),
    ] {
        let shell_dir = dir.join("completions").join(sub);
        create_dir(&shell_dir)?;
        let path = shell_dir.join(file);
        let mut cmd = cmd.clone();
        let written = File::create(&path).and_then(|f| {
            let mut out = BufWriter::new(f);
            clap_complete::generate(shell, &mut cmd, name.as_str(), &mut out);
            out.flush()
        });
        written.map_err(|e| with_path(e, "cannot write", &path))?;
        files.push(path);
    }
    Ok(files)
}

/// The page of `cmd` and of each of its visible subcommands, at any depth
/// (as `clap_mangen::generate_to`, with `source` in every footer).
fn write_pages(
    cmd: &Command,
    source: &str,
    dir: &Path,
    files: &mut Vec<PathBuf>,
) -> io::Result<()> {
    let page = clap_mangen::Man::new(cmd.clone()).source(source);
    let path = dir.join(page.get_filename());
    page.generate_to(dir)
        .map_err(|e| with_path(e, "cannot write", &path))?;
    files.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, source, dir, files)?;
    }
    Ok(())
}

fn create_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(|e| with_path(e, "cannot create the directory", dir))
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn fail(name: &str, why: &str) -> ExitCode {
    let _ = writeln!(io::stderr(), "{name}: {FLAG}: {why}");
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// Only the whole command line `PROG --generate-docs DIR` asks for docs;
    /// anything else is left to the binary's own parser.
    #[test]
    fn only_the_exact_command_line_asks() {
        assert_eq!(
            requested(args(&["mkpatch", FLAG, "out"])),
            Some(PathBuf::from("out"))
        );
        assert_eq!(requested(args(&["mkpatch", FLAG])), None);
        assert_eq!(requested(args(&["mkpatch", FLAG, "out", "x"])), None);
        assert_eq!(requested(args(&["mkpatch", "old", FLAG])), None);
        assert_eq!(requested(args(&["mkpatch"])), None);
    }
}
