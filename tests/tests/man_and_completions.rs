//! The man pages and shell completions that `PROG --generate-docs DIR`
//! writes (packaging/docgen): every page renders with `man -l` and lists
//! every option its `--help` lists, one page per subcommand; the bash and
//! fish completions complete subcommands and options in the real shells;
//! the zsh one is valid zsh. Needs man-db, bash, zsh and fish
//! (`scripts/setup-deps docs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anypatch_tests::bin;

/// The docs of both binaries, generated once into one directory.
fn docs() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        for prog in ["mkpatch", "applypatch"] {
            let o = run(Command::new(bin(prog))
                .arg("--generate-docs")
                .arg(dir.path()));
            assert!(
                o.status.success(),
                "{prog} --generate-docs failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        dir
    })
    .path()
}

fn run(cmd: &mut Command) -> Output {
    let name = cmd.get_program().to_string_lossy().into_owned();
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e} (install it: scripts/setup-deps docs)"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `PROG [SUB] --help`.
fn help(prog: &str, sub: Option<&str>) -> String {
    let o = run(Command::new(bin(prog)).args(sub).arg("--help"));
    assert!(o.status.success(), "{prog} {sub:?} --help failed");
    text(&o.stdout)
}

/// The subcommands `mkpatch --help` lists (clap's own `help` aside).
fn subcommands(prog: &str) -> Vec<String> {
    help(prog, None)
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// The long options an option line of `--help` starts with.
fn long_options(help: &str) -> BTreeSet<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| {
            l.split([' ', ',', '='])
                .find(|w| w.starts_with("--") && w.len() > 2)
                .map(str::to_owned)
        })
        .collect()
}

/// `man -l PAGE` as plain ASCII, without hyphenation or justification, so
/// an option is never split across lines.
fn render(page: &Path) -> String {
    let o = run(Command::new("man")
        .args(["--nh", "--nj", "--warnings=all", "-l"])
        .arg(page)
        .env("LC_ALL", "C")
        .env("MANWIDTH", "200")
        .env("MANPAGER", "cat"));
    assert!(
        o.status.success(),
        "man -l {} failed: {}",
        page.display(),
        text(&o.stderr)
    );
    assert!(
        o.stderr.is_empty(),
        "man -l {} warns: {}",
        page.display(),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// One page for each binary and each of mkpatch's subcommands; each renders
/// cleanly, is named after its command, and lists every long option its
/// `--help` lists.
#[test]
fn every_command_has_a_page_that_renders() {
    let subs = subcommands("mkpatch");
    assert!(
        subs.len() >= 4,
        "mkpatch --help lists too few subcommands: {subs:?}"
    );
    let mut pages: Vec<(&str, Option<&str>)> = vec![("mkpatch", None), ("applypatch", None)];
    pages.extend(subs.iter().map(|s| ("mkpatch", Some(s.as_str()))));
    for (prog, sub) in pages {
        let name = match sub {
            Some(sub) => format!("{prog}-{sub}"),
            None => prog.to_owned(),
        };
        let page: PathBuf = docs().join("man/man1").join(format!("{name}.1"));
        assert!(page.is_file(), "no man page {}", page.display());
        let shown = render(&page);
        for section in ["NAME", "SYNOPSIS", "OPTIONS"] {
            assert!(
                shown.lines().any(|l| l == section),
                "{name}.1 has no {section} section:\n{shown}"
            );
        }
        assert!(
            shown.contains(&format!("{name} - ")),
            "{name}.1 does not name {name}:\n{shown}"
        );
        let options = long_options(&help(prog, sub));
        assert!(options.contains("--help"), "{name}: no options parsed");
        for option in options {
            assert!(shown.contains(&option), "{name}.1 does not list {option}");
        }
    }
}

/// What the bash completion of `PROG` offers for the command line `words`
/// (the last word being completed), run in a real bash the way readline
/// runs it: the function `complete -p PROG` names, with COMP_WORDS,
/// COMP_CWORD, COMP_LINE and COMP_POINT set.
fn bash_complete(prog: &str, words: &[&str]) -> Vec<String> {
    let script = docs().join("completions/bash").join(prog);
    let program = r#"
        set -e
        source "$1"; shift
        spec=$(complete -p "$1")
        fn=$(sed -E 's/.* -F ([^ ]+) .*/\1/' <<<"$spec")
        COMP_WORDS=("$@")
        COMP_CWORD=$(($# - 1))
        COMP_LINE="$*"
        COMP_POINT=${#COMP_LINE}
        "$fn" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let o = run(Command::new("bash")
        .args(["--norc", "--noprofile", "-c", program, "bash"])
        .arg(&script)
        .args([prog])
        .args(&words[1..]));
    assert!(
        o.status.success(),
        "bash completion of {words:?} failed: {}",
        text(&o.stderr)
    );
    text(&o.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_options() {
    assert_eq!(bash_complete("mkpatch", &["mkpatch", "ins"]), ["inspect"]);
    assert_eq!(bash_complete("mkpatch", &["mkpatch", "ke"]), ["keygen"]);
    assert_eq!(
        bash_complete("mkpatch", &["mkpatch", "inspect", "--js"]),
        ["--json"]
    );
    assert_eq!(
        bash_complete("mkpatch", &["mkpatch", "--from-i"]),
        ["--from-index"]
    );
    assert_eq!(
        bash_complete("applypatch", &["applypatch", "--trusted-k"]),
        ["--trusted-key"]
    );
    // Every subcommand is offered after a bare `mkpatch `.
    let offered = bash_complete("mkpatch", &["mkpatch", ""]);
    for sub in subcommands("mkpatch") {
        assert!(offered.contains(&sub), "{sub} not offered: {offered:?}");
    }
}

/// fish's own completer (`complete --do-complete`) with the script loaded.
#[test]
fn fish_completes_subcommands_and_options() {
    let complete = |line: &str| -> Vec<String> {
        let prog = line.split(' ').next().unwrap_or_default();
        let script = docs().join("completions/fish").join(format!("{prog}.fish"));
        let o = run(Command::new("fish")
            .args([
                "--no-config",
                "-c",
                "source $argv[1]; complete --do-complete $argv[2]",
            ])
            .arg(&script)
            .arg(line));
        assert!(o.status.success(), "fish failed: {}", text(&o.stderr));
        // Each candidate is the word, a tab, its description.
        text(&o.stdout)
            .lines()
            .filter_map(|l| l.split('\t').next())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(complete("mkpatch ins"), ["inspect"]);
    assert_eq!(complete("mkpatch inspect --js"), ["--json"]);
    assert_eq!(complete("applypatch --in-pl"), ["--in-place"]);
}

/// The zsh script parses (`zsh -n`) and declares itself for its command.
#[test]
fn zsh_completion_is_valid_zsh() {
    for prog in ["mkpatch", "applypatch"] {
        let script = docs().join("completions/zsh").join(format!("_{prog}"));
        let o = run(Command::new("zsh").arg("-n").arg(&script));
        assert!(o.status.success(), "zsh -n _{prog}: {}", text(&o.stderr));
        let body = std::fs::read_to_string(&script).expect("read");
        assert!(
            body.starts_with(&format!("#compdef {prog}")),
            "_{prog} does not start with #compdef {prog}"
        );
    }
}

/// scripts/install puts the binaries, every page and the three completions
/// where man, bash-completion, zsh and fish look under the prefix: `man -w`
/// finds a subcommand's page through the prefix's MANPATH, and the
/// installed bash completion completes.
#[test]
fn install_puts_pages_and_completions_under_the_prefix() {
    let prefix = tempfile::tempdir().expect("tempdir");
    let bin_dir = bin("mkpatch")
        .parent()
        .expect("a binary has a directory")
        .to_owned();
    let _ = bin("applypatch");
    let o = run(Command::new(anypatch_tests::root().join("scripts/install"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg(prefix.path()));
    assert!(o.status.success(), "scripts/install: {}", text(&o.stderr));
    let p = prefix.path();
    for prog in ["mkpatch", "applypatch"] {
        let o = run(Command::new(p.join("bin").join(prog)).arg("--version"));
        assert!(text(&o.stdout).starts_with(prog), "{prog} --version");
        for file in [
            format!("share/bash-completion/completions/{prog}"),
            format!("share/zsh/site-functions/_{prog}"),
            format!("share/fish/vendor_completions.d/{prog}.fish"),
        ] {
            assert!(p.join(&file).is_file(), "{file} not installed");
        }
    }
    for sub in subcommands("mkpatch") {
        let o = run(Command::new("man")
            .args(["-w", &format!("mkpatch-{sub}")])
            .env("MANPATH", p.join("share/man")));
        assert!(
            o.status.success(),
            "man -w mkpatch-{sub}: {}",
            text(&o.stderr)
        );
        assert!(text(&o.stdout).starts_with(&p.display().to_string()));
    }
    let o = run(Command::new("bash").args([
        "--norc",
        "--noprofile",
        "-c",
        r#"source "$1"; COMP_WORDS=(mkpatch ind); COMP_CWORD=1; _mkpatch mkpatch ind mkpatch; echo "${COMPREPLY[*]}""#,
        "bash",
    ])
    .arg(p.join("share/bash-completion/completions/mkpatch")));
    assert_eq!(text(&o.stdout).trim(), "index", "{}", text(&o.stderr));
}
