//! The Debian packages that scripts/build-deb makes (cargo-deb), installed
//! on a fresh Debian: a minimal bookworm (debootstrap --variant=minbase, with
//! man-db and bash-completion), cached in /var/cache/anypatch-tests and made
//! again when missing, used through a throwaway overlay in a chroot inside a
//! private mount namespace, so the cache is never changed. There, `dpkg -i`
//! both packages; both binaries run; `man -w` finds every page; bash-completion
//! loads both completions by itself (lazily, by command name); the zsh and fish
//! ones, the initramfs hook, the dracut module and the static applypatch are
//! where they belong; a real round trip (mkpatch, applypatch -o, cmp); then
//! `dpkg -r` leaves the file system as it was before the install.
//!
//! Needs root, debootstrap, dpkg-dev and cargo-deb (`scripts/setup-deps deb`)
//! and, the first time on a machine, the Debian mirror (about 2 minutes).
//! ANYPATCH_DEB_TARGET_DIR, when set, is the cargo target dir build-deb uses
//! (to build the packaged binaries apart from the tests' own).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anypatch_tests::{root, without_test_package_env};

/// The cached base system, and what it was made with (a different recipe
/// makes it again).
const BASE: &str = "/var/cache/anypatch-tests/bookworm-minbase";
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const INCLUDE: &str = "man-db,bash-completion";

fn run(cmd: &mut Command) -> Output {
    let name = cmd.get_program().to_string_lossy().into_owned();
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e} (scripts/setup-deps deb installs it)"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The recipe of the base, written beside it.
fn recipe() -> String {
    format!("debootstrap --variant=minbase --include={INCLUDE} {SUITE} {MIRROR}\n")
}

/// The cached base: made with debootstrap when missing or made otherwise.
fn base() -> PathBuf {
    let base = PathBuf::from(BASE);
    let stamp = PathBuf::from(format!("{BASE}.recipe"));
    if base.join("usr/bin/dpkg").is_file() && fs::read_to_string(&stamp).ok() == Some(recipe()) {
        return base;
    }
    let tmp = PathBuf::from(format!("{BASE}.tmp"));
    for dir in [&tmp, &base] {
        if dir.exists() {
            fs::remove_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot remove {}: {e}", dir.display()));
        }
    }
    fs::create_dir_all(base.parent().expect("BASE has a parent")).expect("create the cache dir");
    eprintln!("deb: making the {SUITE} minbase in {BASE} (once per machine)");
    ok(
        run(Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={INCLUDE}"))
            .arg(SUITE)
            .arg(&tmp)
            .arg(MIRROR)),
        "debootstrap (needs the Debian mirror)",
    );
    // The downloaded .debs are not needed again.
    ok(
        run(Command::new("sh")
            .arg("-c")
            .arg("rm -f \"$1\"/var/cache/apt/archives/*.deb")
            .arg("sh")
            .arg(&tmp)),
        "cleaning the base's apt cache",
    );
    fs::rename(&tmp, &base).expect("rename the new base into place");
    fs::write(&stamp, recipe()).expect("write the base's recipe");
    base
}

/// scripts/build-deb into `out`: the two .deb paths.
fn build_debs(out: &Path) -> Vec<PathBuf> {
    let mut cmd = Command::new("bash");
    without_test_package_env(&mut cmd);
    cmd.arg(root().join("scripts/build-deb")).arg(out);
    if let Some(dir) = std::env::var_os("ANYPATCH_DEB_TARGET_DIR") {
        cmd.env("CARGO_TARGET_DIR", dir);
    }
    let said = ok(run(&mut cmd), "scripts/build-deb");
    let debs: Vec<PathBuf> = said.lines().rev().take(2).map(PathBuf::from).collect();
    for deb in &debs {
        assert!(
            deb.is_file() && deb.extension().is_some_and(|e| e == "deb"),
            "scripts/build-deb's last lines are not two .deb files: {said}"
        );
    }
    debs
}

/// Run in the chroot, as root, after the .debs are copied to /tmp/debs.
/// Prints `CHECK name: value` lines for the test to read; fails at the first
/// failing command.
const IN_CHROOT: &str = r#"
set -euo pipefail
# HOME in /tmp: what the programs keep for their user (mkpatch's hash
# cache) is the user's, not the package's, so it is left out of the snapshots.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME=/tmp/home
mkdir -p "$HOME"
cd /tmp
# Everything outside the package manager's own state and caches.
snapshot() {
    find / -xdev \( -path /proc -o -path /tmp -o -path /dev -o -path /run \
        -o -path /var/lib/dpkg -o -path /var/cache -o -path /var/log \) -prune -o -print | sort
}
snapshot >/tmp/before
command -v mkpatch >/dev/null && { echo "mkpatch is there before the install" >&2; exit 1; }

dpkg -i /tmp/debs/*.deb >/tmp/dpkg-i.log 2>&1 || { cat /tmp/dpkg-i.log >&2; exit 1; }
echo "CHECK packages: $(dpkg-query -W -f='${Package}=${Status} ' anypatch-mkpatch anypatch-applypatch)"
echo "CHECK mkpatch: $(mkpatch --version)"
echo "CHECK applypatch: $(applypatch --version)"
echo "CHECK static: $(/usr/lib/anypatch/applypatch-static --version)"
echo "CHECK man: $(man -w mkpatch applypatch mkpatch-inspect | tr '\n' ' ')"
# bash-completion's own lookup: the completion loaded by command name.
echo "CHECK bash: $(bash -c 'source /usr/share/bash-completion/bash_completion
    __load_completion mkpatch && __load_completion applypatch
    complete -p mkpatch applypatch' | tr '\n' ' ')"
for f in /usr/share/zsh/vendor-completions/_mkpatch /usr/share/zsh/vendor-completions/_applypatch \
         /usr/share/fish/vendor_completions.d/mkpatch.fish /usr/share/fish/vendor_completions.d/applypatch.fish \
         /usr/share/initramfs-tools/hooks/anypatch /usr/lib/dracut/modules.d/90anypatch/module-setup.sh \
         /usr/share/doc/anypatch-applypatch/copyright /usr/share/doc/anypatch-mkpatch/copyright \
         /usr/share/doc/anypatch-applypatch/initramfs.md \
         /usr/share/doc/anypatch-applypatch/examples/initramfs-tools/scripts/local-premount/anypatch; do
    [ -s "$f" ] || { echo "missing $f" >&2; exit 1; }
done
# Both licences, in the Debian copyright format.
for pkg in anypatch-applypatch anypatch-mkpatch; do
    grep -q '^License: MIT$' /usr/share/doc/$pkg/copyright &&
        grep -q '^License: Apache-2.0$' /usr/share/doc/$pkg/copyright ||
        { echo "the copyright file of $pkg lacks a licence" >&2; exit 1; }
done
echo "CHECK hook: $(stat -c %a /usr/share/initramfs-tools/hooks/anypatch) $(stat -c %a /usr/lib/dracut/modules.d/90anypatch/module-setup.sh)"

# A real round trip: 4 MiB, a few changed ranges.
head -c 4194304 /dev/urandom >old
cp old new
printf 'changed' | dd of=new bs=1 seek=1000 conv=notrunc status=none
head -c 65536 /dev/urandom | dd of=new bs=1 seek=2000000 conv=notrunc status=none
mkpatch old new -o p 2>/dev/null
applypatch old p -o out
cmp out new
echo "CHECK roundtrip: ok, patch $(stat -c %s p) bytes"
rm -f old new out p

dpkg -r anypatch-mkpatch anypatch-applypatch >/tmp/dpkg-r.log 2>&1 || { cat /tmp/dpkg-r.log >&2; exit 1; }
snapshot >/tmp/after
if ! diff /tmp/before /tmp/after >/tmp/left; then
    echo "dpkg -r left this behind or took this away:" >&2
    cat /tmp/left >&2
    exit 1
fi
echo "CHECK removed: $(dpkg-query -W -f='${Status}' anypatch-mkpatch 2>&1 || true)"
"#;

/// Run on the host inside `unshare -m`: the overlay, the chroot, the script.
const IN_NAMESPACE: &str = r#"
set -euo pipefail
base=$1 work=$2 script=$3
shift 3
mkdir -p "$work/upper" "$work/wd" "$work/root"
mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/wd" "$work/root"
mount -t proc proc "$work/root/proc"
mkdir -p "$work/root/tmp/debs"
cp "$@" "$work/root/tmp/debs/"
chroot "$work/root" /bin/bash <"$script"
"#;

#[test]
fn the_debs_install_work_and_remove_cleanly_on_a_fresh_debian() {
    let base = base();
    let work = tempfile::tempdir().expect("tempdir");
    let debs = build_debs(&work.path().join("debs"));
    let script = work.path().join("in-chroot.sh");
    fs::write(&script, IN_CHROOT).expect("write the chroot script");

    let out = ok(
        run(Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "bash",
                "-c",
                IN_NAMESPACE,
                "bash",
            ])
            .arg(&base)
            .arg(work.path().join("chroot"))
            .arg(&script)
            .args(&debs)),
        "installing the packages in a chroot of the fresh Debian",
    );
    let check = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("CHECK {name}: ")))
            .unwrap_or_else(|| panic!("no CHECK {name} in:\n{out}"))
            .trim()
            .to_owned()
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        check("packages"),
        "anypatch-applypatch=install ok installed anypatch-mkpatch=install ok installed"
    );
    assert_eq!(check("mkpatch"), format!("mkpatch {version}"));
    assert_eq!(check("applypatch"), format!("applypatch {version}"));
    assert_eq!(check("static"), format!("applypatch {version}"));
    assert_eq!(
        check("man"),
        "/usr/share/man/man1/mkpatch.1.gz /usr/share/man/man1/applypatch.1.gz \
         /usr/share/man/man1/mkpatch-inspect.1.gz"
    );
    let bash = check("bash");
    for prog in ["mkpatch", "applypatch"] {
        assert!(
            bash.contains(&format!(" {prog} ")) || bash.ends_with(&format!(" {prog}")),
            "bash-completion did not load a completion for {prog}: {bash}"
        );
    }
    assert_eq!(check("hook"), "755 755");
    assert!(check("roundtrip").starts_with("ok, patch "), "{out}");
    assert!(
        check("removed").contains("not-installed")
            || check("removed").contains("no packages found"),
        "anypatch-mkpatch is still known to dpkg after dpkg -r: {}",
        check("removed")
    );
}
