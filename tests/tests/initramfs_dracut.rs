//! The dracut module (packaging/dracut/90anypatch/module-setup.sh), run by
//! the real dracut (Debian's dracut-core) as `dracut --add`-style explicit
//! module: it must put the static applypatch (scripts/build-static) into the
//! image as /usr/sbin/applypatch, byte for byte, and dracut must refuse the
//! module when that binary is missing (its check()). The module sits under
//! dracut's real modules directory only inside a private mount namespace
//! (a bind mount of a copy with the module added), so the host is not
//! changed. Needs root, dracut-core and cpio (`scripts/setup-deps initramfs`).
//!
//! The initramfs-tools hook is exercised by the qemu boot test
//! (tests/boot/run builds its initramfs through it); this image is not
//! booted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anypatch_tests::{root, without_test_package_env};

const MODULES_D: &str = "/usr/lib/dracut/modules.d";

fn run(cmd: &mut Command) -> Output {
    let name = cmd.get_program().to_string_lossy().into_owned();
    cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {name}: {e} (scripts/setup-deps initramfs installs it)")
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The static binary, built once by scripts/build-static.
fn static_applypatch() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = run(without_test_package_env(&mut Command::new("bash"))
            .arg(root().join("scripts/build-static")));
        let said = text(&out.stdout);
        assert!(
            out.status.success(),
            "scripts/build-static failed: {said}{}",
            text(&out.stderr)
        );
        PathBuf::from(said.lines().last().expect("the binary's path").trim())
    })
}

/// `dracut -m anypatch` with the module added to a copy of dracut's modules
/// directory, bind-mounted over the real one in a private mount namespace;
/// `static_bin` is what ANYPATCH_STATIC names.
fn dracut(work: &Path, image: &Path, static_bin: &Path) -> Output {
    let modules = work.join("modules.d");
    if !modules.exists() {
        let copied = run(Command::new("cp").arg("-a").arg(MODULES_D).arg(&modules));
        assert!(
            copied.status.success(),
            "cannot copy {MODULES_D} (is dracut-core installed?): {}",
            text(&copied.stderr)
        );
        let added = run(Command::new("cp")
            .arg("-a")
            .arg(root().join("packaging/dracut/90anypatch"))
            .arg(&modules));
        assert!(
            added.status.success(),
            "cannot add the module: {}",
            text(&added.stderr)
        );
    }
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1\" /usr/lib/dracut/modules.d && shift && exec dracut \"$@\"")
        .arg("sh")
        .arg(&modules)
        .args([
            "--no-hostonly",
            "--no-kernel",
            "--no-compress",
            "--no-early-microcode",
            // dracut strips what it installs (strip -g -p, when binutils is
            // there), which changes the bytes of even a stripped binary;
            // without it the image's copy must equal the build's.
            "--nostrip",
            "--modules",
            "anypatch",
            "--force",
        ])
        .arg(image)
        .arg("0.0.0-anypatch-test")
        .env("ANYPATCH_STATIC", static_bin))
}

#[test]
fn the_dracut_module_puts_the_static_applypatch_in() {
    let work = tempfile::tempdir().expect("tempdir");
    let image = work.path().join("initrd.img");
    let out = dracut(work.path(), &image, static_applypatch());
    assert!(
        out.status.success(),
        "dracut --modules anypatch failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Unpack the (uncompressed) cpio and compare.
    let unpacked = work.path().join("unpacked");
    fs::create_dir(&unpacked).expect("mkdir");
    let cpio = run(Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && cpio -id --quiet <\"$2\"")
        .arg("sh")
        .arg(&unpacked)
        .arg(&image));
    assert!(
        cpio.status.success(),
        "cpio -id failed: {}",
        text(&cpio.stderr)
    );
    let inside = unpacked.join("usr/sbin/applypatch");
    let got = fs::read(&inside)
        .unwrap_or_else(|e| panic!("no /usr/sbin/applypatch in the dracut image: {e}"));
    let want = fs::read(static_applypatch()).expect("read the static applypatch");
    assert!(
        got == want,
        "the image's /usr/sbin/applypatch is not the static applypatch"
    );

    // The binary runs from the image, on its own (it is static).
    let version = run(Command::new(&inside).arg("--version"));
    assert_eq!(
        text(&version.stdout).trim(),
        format!("applypatch {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_dracut_module_is_refused_without_its_binary() {
    let work = tempfile::tempdir().expect("tempdir");
    let image = work.path().join("initrd.img");
    let out = dracut(work.path(), &image, &work.path().join("no-such-applypatch"));
    assert!(
        !out.status.success(),
        "dracut included the module without its binary: {}",
        text(&out.stderr)
    );
    let said = text(&out.stderr);
    assert!(
        said.contains("anypatch"),
        "dracut's refusal does not name the module: {said}"
    );
}
