//! `applypatch OLD quic://HOST/NAME` where NAME is an image (a live sync,
//! spec/SYNC.md) on loopback: every small corpus pair synced to `-o` and in
//! place equals NEW and carries far less than NEW where little changed; a
//! second run writes nothing; the access file's tokens; outputs that must be
//! refused with nothing written; and the hash cache, which must not be
//! believed once OLD changed behind its back. Then what a user sees (the
//! progress line on a terminal only, the JSON summary) and what a hostile
//! or unlucky user does: signals mid-sync, two runs on one target, a full
//! disk, a symlink to OLD, a block device, names that try to leave the
//! served directory, a wrong certificate, a host that does not answer.

mod net_support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anypatch_tests::{bin, corpus_pairs, corpus_small};
use net_support::{b3, run, size, Serve};
use serde_json::Value;

/// A directory of images served by `mkpatch serve`, and a work directory
/// with its own hash cache ($XDG_CACHE_HOME) for the client.
struct Site {
    serve: Serve,
    served: tempfile::TempDir,
    _state: tempfile::TempDir,
    work: tempfile::TempDir,
}

impl Site {
    /// Serves the files `files` (name, source) with `access` as the access file, if any.
    fn new(files: &[(&str, &Path)], access: Option<&str>) -> Self {
        let served = tempfile::tempdir().expect("served");
        let state = tempfile::tempdir().expect("state");
        let work = tempfile::tempdir().expect("work");
        for (name, from) in files {
            let to = served.path().join(name);
            if std::fs::hard_link(from, &to).is_err() {
                std::fs::copy(from, &to).expect("copy a served file");
            }
        }
        let mut extra: Vec<&OsStr> = Vec::new();
        let access_path = work.path().join("access");
        if let Some(text) = access {
            std::fs::write(&access_path, text).expect("access file");
            std::fs::set_permissions(
                &access_path,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .expect("chmod");
            extra.push(OsStr::new("--access"));
            extra.push(access_path.as_os_str());
        }
        let serve = Serve::start_with(served.path(), state.path(), "127.0.0.1:0", &extra);
        Self {
            serve,
            served,
            _state: state,
            work,
        }
    }

    /// A copy of `from` in the work directory, named `name`.
    fn copy(&self, from: &Path, name: &str) -> PathBuf {
        let to = self.work.path().join(name);
        std::fs::copy(from, &to).expect("copy into the work dir");
        to
    }

    /// `applypatch OLD quic://…/NAME --server-cert FP ARGS... --json`,
    /// with the cache under the work directory.
    fn sync(&self, old: &Path, name: &str, args: &[&OsStr]) -> Output {
        run(&mut self.command(old, name, args))
    }

    /// The command [`Site::sync`] runs.
    fn command(&self, old: &Path, name: &str, args: &[&OsStr]) -> Command {
        let mut cmd = Command::new(bin("applypatch"));
        cmd.env("XDG_CACHE_HOME", self.work.path().join("cache"))
            .arg(old)
            .arg(self.serve.url(name))
            .args(["--server-cert", &self.serve.fingerprint, "--json"])
            .args(args);
        cmd
    }
}

/// The JSON report of a run that must have succeeded.
fn synced(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sync failed ({}): {text} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let j: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["status"], "synced", "{j}");
    j
}

fn num(j: &Value, field: &str) -> u64 {
    j[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {field} in {j}"))
}

/// A run that must have been refused (exit 1); its message, stdout's JSON
/// error and stderr together.
fn refused(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "must be refused: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let j: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(j["ok"], false, "{j}");
    format!("{} {}", j["error"], String::from_utf8_lossy(&out.stderr))
}

fn pair(name: &str) -> (PathBuf, PathBuf) {
    let dir = corpus_small();
    (
        dir.join(format!("{name}.old")),
        dir.join(format!("{name}.new")),
    )
}

/// Pairs where most of NEW is in OLD at the same or another offset: the
/// sync must carry a small share of NEW (here under 1/8).
const FEW_CHANGES: [&str; 3] = ["sparse", "moved", "append"];

#[test]
fn every_corpus_pair_syncs_exactly_to_output_and_in_place() {
    let pairs = corpus_pairs(corpus_small());
    assert!(
        pairs.len() >= 7,
        "the small corpus has its pairs: {pairs:?}"
    );
    let news: Vec<(String, PathBuf)> = pairs
        .iter()
        .map(|p| (format!("{p}.img"), pair(p).1))
        .collect();
    let files: Vec<(&str, &Path)> = news
        .iter()
        .map(|(n, p)| (n.as_str(), p.as_path()))
        .collect();
    let site = Site::new(&files, None);
    let no_cache = OsStr::new("--no-cache");
    for name in &pairs {
        let (old_src, new) = pair(name);
        let want = b3(&new);
        let new_len = size(&new);
        let img = format!("{name}.img");

        // To a new file: OLD stays as it was.
        let old = site.copy(&old_src, &format!("{name}.old"));
        let out_path = site.work.path().join(format!("{name}.out"));
        let j = synced(&site.sync(
            &old,
            &img,
            &[no_cache, OsStr::new("-o"), out_path.as_os_str()],
        ));
        assert_eq!(b3(&out_path), want, "{name}: -o equals NEW");
        assert_eq!(b3(&old), b3(&old_src), "{name}: OLD untouched by -o");
        assert_eq!(num(&j, "new_len"), new_len, "{name}: {j}");
        assert_eq!(j["old_from_cache"], false, "{name}: --no-cache: {j}");
        // Never more than all of NEW and its framing (1/16 more).
        assert!(
            num(&j, "bytes_down") <= new_len + new_len / 16,
            "{name}: {j}"
        );
        if FEW_CHANGES.contains(&name.as_str()) {
            assert!(num(&j, "bytes_down") < new_len / 8, "{name}: {j}");
        }
        eprintln!("{name} -o: {j}");
        std::fs::remove_file(&out_path).expect("rm out");

        // In place.
        let j = synced(&site.sync(&old, &img, &[no_cache, OsStr::new("--in-place")]));
        assert_eq!(b3(&old), want, "{name}: in place equals NEW");
        assert_eq!(size(&old), new_len, "{name}: its length");
        assert!(num(&j, "bytes_written") <= new_len, "{name}: {j}");
        if FEW_CHANGES.contains(&name.as_str()) {
            assert!(num(&j, "bytes_down") < new_len / 8, "{name}: {j}");
        }
        if name == "sparse" {
            // 0.1% of blocks rewritten: only those are written.
            assert!(num(&j, "bytes_written") < new_len / 16, "{name}: {j}");
        }
        eprintln!("{name} in place: {j}");

        // Again, on a target that is NEW already: nothing to write.
        let j = synced(&site.sync(&old, &img, &[no_cache, OsStr::new("--in-place")]));
        assert_eq!(num(&j, "bytes_written"), 0, "{name}: a synced target: {j}");
        assert!(
            num(&j, "bytes_down") < 64 << 10,
            "{name}: a synced target: {j}"
        );
        assert_eq!(b3(&old), want, "{name}: still NEW");
        std::fs::remove_file(&old).expect("rm old");
    }
}

/// The SYNC line's name is the rest of the line: an image whose name has
/// a space syncs (it was once read as a name and a token), also behind a
/// token, which goes on the AUTH line before it.
#[test]
fn an_image_whose_name_has_a_space_syncs() {
    let (old_src, new) = pair("sparse");
    let site = Site::new(
        &[("my vm.img", &new), ("guarded vm.img", &new)],
        Some("my* -\nguarded* s3cret\n"),
    );
    let right = site.work.path().join("right");
    std::fs::write(&right, "s3cret\n").expect("token");
    std::fs::set_permissions(&right, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    for (name, extra) in [
        ("my vm.img", Vec::new()),
        (
            "guarded vm.img",
            vec![OsStr::new("--token-file"), right.as_os_str()],
        ),
    ] {
        let old = site.copy(&old_src, "old");
        let mut args = vec![OsStr::new("--in-place")];
        args.extend(extra);
        let j = synced(&site.sync(&old, name, &args));
        assert!(num(&j, "bytes_written") > 0, "{name}: {j}");
        assert_eq!(b3(&old), b3(&new), "{name}: the result is NEW");
    }
}

#[test]
fn tokens_in_the_access_file_guard_names() {
    let (old_src, new) = pair("sparse");
    let patch_dir = tempfile::tempdir().expect("patch dir");
    let patch = patch_dir.path().join("secret.anyp");
    net_support::ok(
        Command::new(bin("mkpatch"))
            .arg("-q")
            .arg(&old_src)
            .arg(&new)
            .arg("-o")
            .arg(&patch),
    );
    let site = Site::new(
        &[
            ("open.img", &new),
            ("secret.img", &new),
            ("secret.anyp", &patch),
            ("unlisted.img", &new),
        ],
        Some("open.img -\nsecret* s3cret\n"),
    );
    let wrong = site.work.path().join("wrong");
    let right = site.work.path().join("right");
    std::fs::write(&wrong, "s3cre7\n").expect("token");
    std::fs::write(&right, "s3cret\n").expect("token");
    for f in [&wrong, &right] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let old = site.copy(&old_src, "old");
    let before = b3(&old);
    let in_place = OsStr::new("--in-place");
    let token = OsStr::new("--token-file");

    let msg = refused(&site.sync(&old, "secret.img", &[in_place]));
    assert!(msg.contains("token"), "no token: {msg}");
    let msg = refused(&site.sync(&old, "secret.img", &[in_place, token, wrong.as_os_str()]));
    assert!(msg.contains("token"), "a wrong token: {msg}");
    assert_eq!(b3(&old), before, "nothing written when refused");
    let msg = refused(&site.sync(&old, "unlisted.img", &[in_place, token, right.as_os_str()]));
    assert!(
        msg.contains("not open"),
        "a name the file does not list: {msg}"
    );
    assert_eq!(b3(&old), before, "nothing written when refused");

    // The patch under the guarded prefix, fetched (GET), not synced: the
    // same rules, the token sent on an AUTH line before the GET.
    let out = site.work.path().join("from-patch");
    let dash_o = OsStr::new("-o");
    let msg = refused(&site.sync(&old, "secret.anyp", &[dash_o, out.as_os_str()]));
    assert!(msg.contains("token"), "a guarded patch: {msg}");
    assert!(!out.exists(), "nothing written for a refused patch");
    let msg = refused(&site.sync(
        &old,
        "secret.anyp",
        &[dash_o, out.as_os_str(), token, wrong.as_os_str()],
    ));
    assert!(
        msg.contains("token"),
        "a guarded patch, a wrong token: {msg}"
    );
    assert!(!out.exists(), "nothing written for a refused patch");
    let got = site.sync(
        &old,
        "secret.anyp",
        &[dash_o, out.as_os_str(), token, right.as_os_str()],
    );
    assert!(got.status.success(), "the right token fetches: {got:?}");
    assert_eq!(b3(&out), b3(&new), "the guarded patch applied");
    // Also in place (the patch is spooled, then applied).
    let spooled = site.copy(&old_src, "spooled");
    let got = site.sync(
        &spooled,
        "secret.anyp",
        &[OsStr::new("--in-place"), token, right.as_os_str()],
    );
    assert!(got.status.success(), "the right token fetches: {got:?}");
    assert_eq!(b3(&spooled), b3(&new), "the guarded patch applied in place");

    // The open name needs no token; the guarded one works with its token.
    let copy = site.copy(&old_src, "old2");
    synced(&site.sync(&copy, "open.img", &[in_place]));
    assert_eq!(b3(&copy), b3(&new));
    let got = site.sync(&old, "secret.img", &[in_place, token, right.as_os_str()]);
    synced(&got);
    assert_eq!(b3(&old), b3(&new), "the right token syncs");
    assert!(
        !String::from_utf8_lossy(&got.stderr).contains("warning"),
        "a token file only its owner reads: no warning: {got:?}"
    );
}

/// A token file others can read is warned about; a token never shows in
/// what applypatch prints; a token is refused where it would cross the
/// network in the clear, or where there is no network at all.
#[test]
fn tokens_are_kept_secret() {
    use std::os::unix::fs::PermissionsExt;
    let (old_src, new) = pair("sparse");
    let site = Site::new(&[("secret.img", &new)], Some("secret* Tok-5ecret\n"));
    let old = site.copy(&old_src, "old");
    let right = site.work.path().join("right");
    std::fs::write(&right, "Tok-5ecret\n").expect("token");
    std::fs::set_permissions(&right, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let wrong = site.work.path().join("wrong");
    std::fs::write(&wrong, "Tok-5ecreX\n").expect("token");
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let token = OsStr::new("--token-file");
    let in_place = OsStr::new("--in-place");
    let shows = |out: &Output| {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        all.contains("5ecre")
    };

    let got = site.sync(&old, "secret.img", &[in_place, token, wrong.as_os_str()]);
    refused(&got);
    assert!(!shows(&got), "a wrong token is not shown: {got:?}");
    let got = site.sync(&old, "secret.img", &[in_place, token, right.as_os_str()]);
    synced(&got);
    let err = String::from_utf8_lossy(&got.stderr);
    assert!(
        err.contains("warning") && err.contains("0644") && err.contains("chmod 600"),
        "a token file others can read: {err}"
    );
    assert!(!shows(&got), "the token is not shown: {got:?}");
    assert_eq!(b3(&old), b3(&new));

    // Plain http://: refused before anything is sent.
    let out = site.work.path().join("out");
    let mut cmd = Command::new(bin("applypatch"));
    cmd.arg("--json")
        .arg(&old)
        .arg("http://127.0.0.1:9/p.anyp")
        .args(["--trusted-key", "k.pub"])
        .arg(token)
        .arg(&right)
        .arg("-o")
        .arg(&out);
    let msg = refused(&run(&mut cmd));
    assert!(msg.contains("https://"), "{msg}");
    assert!(!out.exists());
    // A local patch: a token means nothing there.
    let mut cmd = Command::new(bin("applypatch"));
    cmd.arg("--json")
        .arg(&old)
        .arg(&new)
        .arg(token)
        .arg(&right)
        .arg("-o")
        .arg(&out);
    let msg = refused(&run(&mut cmd));
    assert!(msg.contains("--token-file is for a URL"), "{msg}");
    assert!(!out.exists());
}

#[test]
fn outputs_and_urls_that_must_be_refused_write_nothing() {
    let (old_src, new) = pair("sparse");
    let site = Site::new(&[("new.img", &new)], None);
    let old = site.copy(&old_src, "old");
    let before = b3(&old);
    let dash_o = OsStr::new("-o");

    // -o naming OLD itself.
    let msg = refused(&site.sync(&old, "new.img", &[dash_o, old.as_os_str()]));
    assert!(msg.contains("old file itself"), "{msg}");
    assert_eq!(b3(&old), before, "OLD untouched");

    // -o a FIFO: refused before anything opens it for writing (which would block).
    let fifo = site.work.path().join("fifo");
    net_support::ok(Command::new("mkfifo").arg(&fifo));
    let msg = refused(&site.sync(&old, "new.img", &[dash_o, fifo.as_os_str()]));
    assert!(msg.contains("FIFO"), "{msg}");

    // -o a directory: nothing made in it.
    let dir = site.work.path().join("dir");
    std::fs::create_dir(&dir).expect("dir");
    let msg = refused(&site.sync(&old, "new.img", &[dash_o, dir.as_os_str()]));
    assert!(msg.contains("directory"), "{msg}");
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        0,
        "nothing in the directory"
    );

    // A name the server does not have.
    let out = site.work.path().join("out");
    let msg = refused(&site.sync(&old, "missing.img", &[dash_o, out.as_os_str()]));
    assert!(msg.contains("missing.img"), "{msg}");
    assert!(!out.exists(), "no output for a missing image");
    let msg = refused(&site.sync(&old, "missing.img", &[OsStr::new("--in-place")]));
    assert!(msg.contains("missing.img"), "{msg}");

    // No way to trust the server: an image has no signature to check.
    let mut cmd = Command::new(bin("applypatch"));
    cmd.env("XDG_CACHE_HOME", site.work.path().join("cache"))
        .arg("--in-place")
        .arg("--json")
        .arg(&old)
        .arg(site.serve.url("new.img"));
    let msg = refused(&run(&mut cmd));
    assert!(msg.contains("--server-cert"), "{msg}");
    assert_eq!(b3(&old), before, "OLD untouched");
    let _ = &site.served;
}

/// Seconds and nanoseconds of a file's mtime, for `touch -d @S.N`.
fn mtime(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).expect("stat");
    format!("@{}.{:09}", m.mtime(), m.mtime_nsec())
}

#[test]
fn the_hash_cache_is_used_and_not_believed_once_old_changed() {
    let (old_src, new) = pair("sparse");
    let site = Site::new(&[("new.img", &new)], None);
    let old = site.copy(&old_src, "old");
    let want = b3(&new);
    let in_place = OsStr::new("--in-place");

    synced(&site.sync(&old, "new.img", &[in_place]));
    assert_eq!(b3(&old), want);
    // The cache trusts a file's hashes only once its mtime is more than
    // 2 s old (a write in the same tick would not change it).
    std::thread::sleep(std::time::Duration::from_millis(2600));
    // A second run hashes OLD's groups anyway, which stores them.
    synced(&site.sync(&old, "new.img", &[in_place]));
    std::thread::sleep(std::time::Duration::from_millis(2600));
    let j = synced(&site.sync(&old, "new.img", &[in_place]));
    assert_eq!(j["old_from_cache"], true, "a synced, unchanged OLD: {j}");
    assert_eq!(num(&j, "bytes_written"), 0, "{j}");

    // One byte changed, the mtime put back: the cache's hashes are stale.
    let at = mtime(&old);
    let mut bytes = std::fs::read(&old).expect("read");
    let i = bytes.len() / 2 + 12345;
    bytes[i] ^= 0x5a;
    std::fs::write(&old, &bytes).expect("write");
    net_support::ok(Command::new("touch").arg("-d").arg(&at).arg(&old));
    assert_eq!(mtime(&old), at, "the mtime restored");
    let j = synced(&site.sync(&old, "new.img", &[in_place]));
    assert_eq!(j["old_from_cache"], false, "a changed OLD: {j}");
    assert!(
        num(&j, "bytes_written") > 0,
        "the changed byte rewritten: {j}"
    );
    assert_eq!(
        b3(&old),
        want,
        "exactly NEW after a change the cache missed"
    );
}

/// `sh -c` quoting.
fn quote(s: &OsStr) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"))
}

/// Runs `cmd` with its stderr on a pseudo-terminal (`script`), stdout to
/// `stdout` when given; returns what the terminal showed.
fn on_tty(cmd: &Command, stdout: Option<&Path>) -> (Option<i32>, String) {
    let mut line: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))))
        .collect();
    line.insert(0, "env".into());
    line.push(quote(cmd.get_program()));
    line.extend(cmd.get_args().map(quote));
    if let Some(out) = stdout {
        line.push(format!(">{}", quote(out.as_os_str())));
    }
    let out = run(Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .stdin(std::process::Stdio::null()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn progress_shows_on_a_terminal_only_and_json_stays_json() {
    let (old_src, new) = pair("sparse");
    let site = Site::new(&[("new.img", &new)], None);
    let in_place = OsStr::new("--in-place");
    let no_cache = OsStr::new("--no-cache");
    let progress = |shown: &str| {
        ["hashed ", "compared ", "received ", "written ", "ETA"]
            .iter()
            .all(|w| shown.contains(w))
    };

    // A terminal, the summary on it: the progress line is drawn.
    let old = site.copy(&old_src, "old");
    let cmd = site.command(&old, "new.img", &[in_place, no_cache]);
    let mut plain = Command::new(bin("applypatch"));
    plain
        .env("XDG_CACHE_HOME", site.work.path().join("cache"))
        .arg(&old)
        .arg(site.serve.url("new.img"))
        .args(["--server-cert", &site.serve.fingerprint])
        .args([in_place, no_cache]);
    let (code, shown) = on_tty(&plain, None);
    assert_eq!(code, Some(0), "{shown}");
    assert!(progress(&shown), "no progress line on a terminal: {shown}");
    assert!(shown.contains("applypatch: synced"), "{shown}");
    assert_eq!(b3(&old), b3(&new));

    // A terminal with --json, stdout to a file: progress on the terminal,
    // and stdout exactly one JSON object.
    site.copy(&old_src, "old");
    let json = site.work.path().join("out.json");
    let (code, shown) = on_tty(&cmd, Some(&json));
    assert_eq!(code, Some(0), "{shown}");
    assert!(progress(&shown), "no progress line with --json: {shown}");
    let text = std::fs::read_to_string(&json).expect("json");
    let j: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(j["status"], "synced", "{j}");
    for field in [
        "bytes_up",
        "bytes_down",
        "bytes_written",
        "seconds",
        "new_len",
    ] {
        assert!(j[field].is_number(), "{field} in {j}");
    }

    // -q on a terminal: nothing drawn.
    let old = site.copy(&old_src, "old");
    plain.arg("-q");
    let (code, shown) = on_tty(&plain, None);
    assert_eq!(code, Some(0), "{shown}");
    assert!(!shown.contains("hashed "), "-q drew progress: {shown}");
    assert_eq!(b3(&old), b3(&new));

    // stderr a file (a pipe here): no progress, no terminal codes.
    let old = site.copy(&old_src, "old");
    let out = site.sync(&old, "new.img", &[in_place, no_cache]);
    synced(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("hashed ") && !err.contains('\x1b'), "{err}");
}

/// A site serving one 24 MiB image whose every block differs from OLD, so
/// that a sync takes many steps; the old image's bytes.
fn changed_site() -> (Site, PathBuf, PathBuf) {
    let src = tempfile::tempdir().expect("src");
    let (old, new) = (src.path().join("old"), src.path().join("new"));
    std::fs::write(&old, net_support::noise(11, 24 << 20)).expect("old");
    std::fs::write(&new, net_support::noise(12, 24 << 20)).expect("new");
    let site = Site::new(&[("new.img", &new)], None);
    let old_src = site.copy(&old, "old.src");
    let new_src = site.copy(&new, "new.src");
    (site, old_src, new_src)
}

/// Whether process `pid` is stopped.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

/// Starts `cmd`, which stops itself once 8 MiB of the new image are
/// settled (the test hook), and waits until it has.
fn start_stopped(mut cmd: Command) -> std::process::Child {
    use std::process::Stdio;
    let child = cmd
        .env("ANYPATCH_TEST_SYNC_STOP_AT", (8u64 << 20).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("applypatch starts");
    let pid = child.id();
    net_support::wait_for(
        std::time::Duration::from_secs(120),
        "the sync to stop itself mid-way",
        || stopped(pid),
    );
    child
}

/// A server stopped by a signal mid-sync tells its client why at once, in
/// the connection's close, instead of leaving it to find out from the idle
/// timeout; the server itself ends cleanly.
#[test]
fn a_server_stopped_mid_sync_tells_its_client_why() {
    let (mut site, old_src, _new) = changed_site();
    let out = site.work.path().join("out.img");
    let args = [OsStr::new("-o"), out.as_os_str(), OsStr::new("--no-cache")];
    let child = start_stopped(site.command(&old_src, "new.img", &args));
    let status = site.serve.stop("TERM");
    assert!(status.success(), "the server's exit: {status:?}");
    net_support::signal(child.id(), "CONT");
    let r = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&r.stderr);
    assert_ne!(r.status.code(), Some(0), "{r:?}");
    assert!(err.contains("the server is stopping (SIGTERM)"), "{err}");
    assert!(!out.exists(), "no output from a sync cut off");
}

/// Files in `dir` other than `keep`.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn signals_mid_sync_leave_old_new_or_what_the_same_command_finishes() {
    let (site, old_src, new) = changed_site();
    let want = b3(&new);
    let in_place = OsStr::new("--in-place");
    let no_cache = OsStr::new("--no-cache");
    let dash_o = OsStr::new("-o");
    let out = site.work.path().join("out.img");
    for (sig, number) in [("INT", 2), ("TERM", 15)] {
        // In place: stopped mid-way (the image a mix of verified leaves),
        // saying so; the same command finishes it, fetching less.
        let old = site.copy(&old_src, "old");
        let child = start_stopped(site.command(&old, "new.img", &[in_place, no_cache]));
        net_support::signal(child.id(), sig);
        net_support::signal(child.id(), "CONT");
        let r = child.wait_with_output().expect("wait");
        assert_eq!(
            r.status.code(),
            Some(128 + number),
            "SIG{sig} in place: {r:?}"
        );
        let text = String::from_utf8_lossy(&r.stdout);
        let j: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(j["error_class"], "interrupted", "{j}");
        assert_eq!(j["signal"], format!("SIG{sig}"), "{j}");
        assert!(num(&j, "bytes_down") > 0, "what it did by then: {j}");
        assert!(
            String::from_utf8_lossy(&r.stderr).contains("run the same command again"),
            "{r:?}"
        );
        assert_ne!(b3(&old), want, "SIG{sig}: stopped before the end");
        let j = synced(&site.sync(&old, "new.img", &[in_place, no_cache]));
        assert_eq!(b3(&old), want, "SIG{sig}: the rerun finishes the job");
        assert!(
            num(&j, "bytes_down") < (24 << 20) - (4 << 20),
            "SIG{sig}: the rerun fetched what was written again: {j}"
        );

        // To -o over an existing file: 128 + the signal, the JSON says so,
        // the existing file is as it was and no temporary file is left.
        std::fs::write(&out, b"an older output").expect("out");
        let child =
            start_stopped(site.command(&old_src, "new.img", &[dash_o, out.as_os_str(), no_cache]));
        net_support::signal(child.id(), sig);
        net_support::signal(child.id(), "CONT");
        let r = child.wait_with_output().expect("wait");
        assert_eq!(r.status.code(), Some(128 + number), "SIG{sig} -o: {r:?}");
        let text = String::from_utf8_lossy(&r.stdout);
        let j: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(j["error_class"], "interrupted", "{j}");
        assert_eq!(j["signal"], format!("SIG{sig}"), "{j}");
        assert_eq!(std::fs::read(&out).expect("out"), b"an older output");
        assert_eq!(
            others(
                site.work.path(),
                &["old", "old.src", "new.src", "out.img", "access", "cache"]
            ),
            Vec::<String>::new(),
            "SIG{sig}: a temporary file left behind"
        );
        synced(&site.sync(&old_src, "new.img", &[dash_o, out.as_os_str(), no_cache]));
        assert_eq!(b3(&out), want, "SIG{sig}: the same command writes NEW");
    }
}

#[test]
fn a_second_sync_of_the_same_target_is_refused_by_the_lock() {
    let (site, old_src, new) = changed_site();
    let in_place = OsStr::new("--in-place");
    let no_cache = OsStr::new("--no-cache");
    let old = site.copy(&old_src, "old");
    let first = start_stopped(site.command(&old, "new.img", &[in_place, no_cache]));
    let msg = refused(&site.sync(&old, "new.img", &[in_place, no_cache]));
    assert!(
        msg.contains("locked by another run") && msg.contains(&first.id().to_string()),
        "the second run names the first: {msg}"
    );
    net_support::signal(first.id(), "CONT");
    let r = first.wait_with_output().expect("wait");
    synced(&r);
    assert_eq!(b3(&old), b3(&new), "the first run finished undisturbed");
}

#[test]
fn a_full_disk_for_o_leaves_nothing_behind() {
    let (site, old_src, _new) = changed_site();
    let small = site.work.path().join("small");
    std::fs::create_dir(&small).expect("mount point");
    let json = site.work.path().join("full.json");
    let listing = site.work.path().join("full.ls");
    let cmd = site.command(
        &old_src,
        "new.img",
        &[OsStr::new("-o"), small.join("new.img").as_os_str()],
    );
    let mut line: Vec<String> = vec!["env".into()];
    line.extend(
        cmd.get_envs()
            .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v)))),
    );
    line.push(quote(cmd.get_program()));
    line.extend(cmd.get_args().map(quote));
    // A 4 MiB file system in a mount namespace of its own.
    let script = format!(
        "mount -t tmpfs -o size=4m tmpfs {d} && {{ {} >{j}; echo $? >{j}.code; ls -A {d} >{l}; }}",
        line.join(" "),
        d = quote(small.as_os_str()),
        j = quote(json.as_os_str()),
        l = quote(listing.as_os_str()),
    );
    let r = run(Command::new("unshare").args(["-m", "sh", "-c", &script]));
    assert!(r.status.success(), "{r:?}");
    let code = std::fs::read_to_string(format!("{}.code", json.display())).expect("code");
    assert_eq!(code.trim(), "1", "{r:?}");
    let text = std::fs::read_to_string(&json).expect("json");
    let j: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(j["error_class"], "io", "{j}");
    let error = j["error"].as_str().unwrap_or_default();
    assert!(error.contains("No space left"), "{j}");
    assert!(error.contains("nothing was created"), "{j}");
    assert!(
        j["bytes_down"].is_number() && j["seconds"].is_number(),
        "what it did: {j}"
    );
    assert_eq!(
        std::fs::read_to_string(&listing).expect("ls"),
        "",
        "left on the full disk"
    );
}

#[test]
fn an_output_that_is_a_symlink_to_old_is_refused() {
    let (old_src, new) = pair("sparse");
    let site = Site::new(&[("new.img", &new)], None);
    let old = site.copy(&old_src, "old");
    let link = site.work.path().join("link");
    std::os::unix::fs::symlink(&old, &link).expect("symlink");
    let msg = refused(&site.sync(&old, "new.img", &[OsStr::new("-o"), link.as_os_str()]));
    assert!(msg.contains("old file itself"), "{msg}");
    assert_eq!(b3(&old), b3(&old_src), "OLD untouched");
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_is_synced_in_place() {
    let (old_src, new) = pair("sparse");
    let site = Site::new(&[("new.img", &new)], None);
    let backing = site.copy(&old_src, "backing");
    let out = net_support::ok(Command::new("losetup").args(["-f", "--show"]).arg(&backing));
    let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let j = synced(&site.sync(Path::new(&dev.0), "new.img", &[OsStr::new("--in-place")]));
    assert_eq!(num(&j, "new_len"), size(&new), "{j}");
    drop(dev);
    // The device is the file's first bytes: NEW, and OLD's length kept.
    let bytes = std::fs::read(&backing).expect("backing");
    let new_bytes = std::fs::read(&new).expect("new");
    assert_eq!(
        &bytes[..new_bytes.len()],
        &new_bytes[..],
        "the device holds NEW"
    );
}

#[test]
fn names_never_leave_the_served_directory() {
    let (old_src, new) = pair("sparse");
    let site = Site::new(&[("new.img", &new)], None);
    // Outside the served directory, and links to it and inside it.
    let outside = site.work.path().join("outside.img");
    std::fs::copy(&new, &outside).expect("outside");
    std::os::unix::fs::symlink(&outside, site.served.path().join("out-link.img")).expect("link");
    std::os::unix::fs::symlink("new.img", site.served.path().join("in-link.img")).expect("link");
    // An absolute link, even to a file inside, is not followed (the server
    // resolves names beneath the directory only), and a FIFO is refused
    // without blocking the server.
    std::os::unix::fs::symlink(
        site.served.path().join("new.img"),
        site.served.path().join("abs-link.img"),
    )
    .expect("link");
    net_support::ok(Command::new("mkfifo").arg(site.served.path().join("fifo.img")));
    std::fs::create_dir(site.served.path().join("sub")).expect("sub");
    let old = site.copy(&old_src, "old");
    let before = b3(&old);
    let served = site
        .served
        .path()
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    for name in [
        "../work-outside.img".to_string(),
        format!("../{served}/new.img"),
        format!("sub/../../{served}/new.img"),
        "/etc/passwd".into(),
        format!("{}", outside.display()),
        "./new.img".into(),
        "out-link.img".into(),
        "abs-link.img".into(),
        "fifo.img".into(),
        "sub".into(),
    ] {
        for args in [
            &[OsStr::new("--in-place")][..],
            &[OsStr::new("-o"), site.work.path().join("o").as_os_str()][..],
        ] {
            let msg = refused(&site.sync(&old, &name, args));
            assert!(
                msg.contains("without '..'")
                    || msg.contains("no file")
                    || msg.contains("not a regular file"),
                "{name}: {msg}"
            );
            assert_eq!(b3(&old), before, "{name}: OLD untouched");
            assert!(!site.work.path().join("o").exists(), "{name}: an output");
        }
    }
    // A link that stays inside is served.
    synced(&site.sync(&old, "in-link.img", &[OsStr::new("--in-place")]));
    assert_eq!(b3(&old), b3(&new));
}

#[test]
fn a_wrong_certificate_or_a_silent_host_fails_clearly() {
    let (old_src, new) = pair("sparse");
    let site = Site::new(&[("new.img", &new)], None);
    let old = site.copy(&old_src, "old");
    let before = b3(&old);
    // One hex digit of the pinned fingerprint changed.
    let fp = &site.serve.fingerprint;
    let last = fp.chars().last().expect("a fingerprint");
    let wrong = format!(
        "{}{}",
        &fp[..fp.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    let mut cmd = Command::new(bin("applypatch"));
    cmd.env("XDG_CACHE_HOME", site.work.path().join("cache"))
        .args(["--in-place", "--json"])
        .arg(&old)
        .arg(site.serve.url("new.img"))
        .args(["--server-cert", &wrong]);
    let msg = refused(&run(&mut cmd));
    assert!(msg.contains("not trusted"), "{msg}");
    assert_eq!(b3(&old), before);

    // A port where nothing answers: retried as a fetch is, and given up
    // after the retries in a row (one here, through the test hook; 12 and
    // about three minutes otherwise), not retried forever.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
    let port = silent.local_addr().expect("addr").port();
    let mut cmd = Command::new(bin("applypatch"));
    cmd.env("XDG_CACHE_HOME", site.work.path().join("cache"))
        .env("ANYPATCH_TEST_RETRIES", "1")
        .args(["--in-place", "--json"])
        .arg(&old)
        .arg(format!("quic://127.0.0.1:{port}/new.img"))
        .args(["--server-cert", fp]);
    let msg = refused(&run(&mut cmd));
    assert!(
        msg.contains(&format!(
            "127.0.0.1:{port} did not answer within 10 s; retrying in 0.2 s (1 of 1)"
        )) && msg.contains(&format!(
            "gave up after 2 attempts in a row; last: 127.0.0.1:{port} did not answer within 10 s"
        )),
        "{msg}"
    );
    assert_eq!(b3(&old), before);
}

/// Lines a child writes on stderr, gathered as they come by a thread.
fn gather_stderr(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    use std::io::BufRead;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = seen.clone();
    let err = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let mut s = sink.lock().expect("stderr");
            s.push_str(&line);
            s.push('\n');
        }
    });
    seen
}

#[test]
fn a_server_that_is_not_up_yet_is_retried_and_refusals_are_not() {
    use std::process::Stdio;
    let (old_src, new) = pair("sparse");
    let served = tempfile::tempdir().expect("served");
    let state = tempfile::tempdir().expect("state");
    let work = tempfile::tempdir().expect("work");
    std::fs::copy(&new, served.path().join("new.img")).expect("served image");
    let old = work.path().join("old");
    std::fs::copy(&old_src, &old).expect("old");
    // A first run of the server makes its certificate and finds a port.
    let first = Serve::start(served.path(), state.path());
    let (port, fp) = (first.port, first.fingerprint.clone());
    drop(first);
    // The port held by a socket that never answers until the server comes.
    let silent = std::net::UdpSocket::bind(("127.0.0.1", port)).expect("the port again");
    let out = work.path().join("out");
    let mut client = Command::new(bin("applypatch"))
        .env("XDG_CACHE_HOME", work.path().join("cache"))
        .arg(&old)
        .arg(format!("quic://127.0.0.1:{port}/new.img"))
        .args(["--server-cert", &fp, "--json", "-o"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("applypatch starts");
    let stderr = gather_stderr(&mut client);
    net_support::wait_for(
        std::time::Duration::from_secs(60),
        "the client to say it retries (or to end)",
        || {
            stderr.lock().expect("stderr").contains("retrying in")
                || client.try_wait().ok().flatten().is_some()
        },
    );
    drop(silent);
    let _server = Serve::start_with(
        served.path(),
        state.path(),
        &format!("127.0.0.1:{port}"),
        &[],
    );
    let r = client.wait_with_output().expect("wait");
    let said = stderr.lock().expect("stderr").clone();
    let j = synced(&Output {
        stderr: said.clone().into_bytes(),
        ..r
    });
    assert!(
        said.contains(&format!(
            "quic://127.0.0.1:{port}/new.img: 127.0.0.1:{port} did not answer within 10 s; retrying in 0.2 s (1 of 12)"
        )),
        "the notice a fetch gives: {said}"
    );
    assert_eq!(b3(&out), b3(&new), "{j}");

    // Refusals are final at once: a wrong certificate, no such name, and a
    // name its token guards.
    let site = Site::new(&[("new.img", &new)], Some("new.img secret-token\n"));
    let fp = &site.serve.fingerprint;
    let last = fp.chars().last().expect("a fingerprint");
    let wrong = format!(
        "{}{}",
        &fp[..fp.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    for (name, cert, why) in [
        ("new.img", wrong.as_str(), "not trusted"),
        ("missing.img", fp.as_str(), "not open to anyone"),
        ("new.img", fp.as_str(), "needs its token"),
    ] {
        let mut cmd = Command::new(bin("applypatch"));
        cmd.env("XDG_CACHE_HOME", site.work.path().join("cache"))
            .args(["--in-place", "--json"])
            .arg(&old)
            .arg(site.serve.url(name))
            .args(["--server-cert", cert]);
        let r = run(&mut cmd);
        let msg = refused(&r);
        assert!(msg.contains(why), "{name}: {msg}");
        assert!(!msg.contains("retrying"), "{name} was retried: {msg}");
    }
}

#[test]
fn two_runs_writing_one_new_output_the_second_is_refused() {
    use std::io::Write;
    use std::process::Stdio;
    let (site, old_src, new) = changed_site();
    let (dash_o, no_cache) = (OsStr::new("-o"), OsStr::new("--no-cache"));
    let keep = [
        "old.src",
        "new.src",
        "fresh.img",
        "patched.img",
        "p.patch",
        "cache",
    ];

    // Two live syncs to a NEW that does not exist yet: each would build its
    // own temporary file, and the last rename would win.
    let out = site.work.path().join("fresh.img");
    let first =
        start_stopped(site.command(&old_src, "new.img", &[dash_o, out.as_os_str(), no_cache]));
    let msg = refused(&site.sync(&old_src, "new.img", &[dash_o, out.as_os_str(), no_cache]));
    assert!(
        msg.contains("being written by another run") && msg.contains(&first.id().to_string()),
        "the second run names the first: {msg}"
    );
    assert!(!out.exists(), "the refused run made nothing");
    net_support::signal(first.id(), "CONT");
    synced(&first.wait_with_output().expect("wait"));
    assert_eq!(b3(&out), b3(&new), "the first run finished undisturbed");
    assert_eq!(
        others(site.work.path(), &keep),
        Vec::<String>::new(),
        "nothing left behind"
    );

    // Two `applypatch OLD PATCH -o NEW` alike: the first holds the lock
    // while it waits for the rest of its patch on stdin.
    let patch = site.work.path().join("p.patch");
    net_support::ok(
        Command::new(bin("mkpatch"))
            .arg("-q")
            .arg(&old_src)
            .arg(&new)
            .arg("-o")
            .arg(&patch),
    );
    let bytes = std::fs::read(&patch).expect("patch");
    let out = site.work.path().join("patched.img");
    let mut first = Command::new(bin("applypatch"))
        .arg(&old_src)
        .arg("-")
        .arg("-o")
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("applypatch starts");
    let mut stdin = first.stdin.take().expect("stdin");
    stdin.write_all(&bytes[..4096]).expect("the patch's start");
    // Its lock is a socket (nothing on disk): the only one it has.
    let pid = first.id();
    net_support::wait_for(
        std::time::Duration::from_secs(60),
        "the first run's lock",
        || {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
        },
    );
    let mut second = Command::new(bin("applypatch"));
    second
        .arg(&old_src)
        .arg(&patch)
        .arg("-o")
        .arg(&out)
        .arg("--json");
    let msg = refused(&run(&mut second));
    assert!(
        msg.contains("being written by another run") && msg.contains(&first.id().to_string()),
        "the second run names the first: {msg}"
    );
    stdin
        .write_all(&bytes[4096..])
        .expect("the rest of the patch");
    drop(stdin);
    let r = first.wait_with_output().expect("wait");
    assert!(r.status.success(), "{r:?}");
    assert_eq!(b3(&out), b3(&new));
    assert_eq!(
        others(site.work.path(), &keep),
        Vec::<String>::new(),
        "nothing left behind"
    );
}

#[test]
fn a_served_image_cut_short_during_a_sync_to_o_fails_clearly() {
    let (site, old_src, _new) = changed_site();
    let out = site.work.path().join("out.img");
    let (dash_o, no_cache) = (OsStr::new("-o"), OsStr::new("--no-cache"));
    let child =
        start_stopped(site.command(&old_src, "new.img", &[dash_o, out.as_os_str(), no_cache]));
    // The served image loses its last 20 MiB while the sync is stopped.
    let served = std::fs::OpenOptions::new()
        .write(true)
        .open(site.served.path().join("new.img"))
        .expect("served image");
    served.set_len(4 << 20).expect("truncate");
    net_support::signal(child.id(), "CONT");
    let msg = refused(&child.wait_with_output().expect("wait"));
    // -o keeps nothing: the message must not promise what it does not keep.
    assert!(msg.contains("run the same command again"), "{msg}");
    assert!(!msg.contains("is kept"), "{msg}");
    assert!(!out.exists());
    assert_eq!(
        others(site.work.path(), &["old.src", "new.src", "cache"]),
        Vec::<String>::new(),
        "left behind"
    );
}

#[test]
fn serving_a_missing_directory_or_a_file_says_which() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("file");
    for (what, why) in [
        (dir.path().join("missing"), "No such file"),
        (file, "not a directory"),
    ] {
        let r = run(Command::new(bin("mkpatch"))
            .arg("serve")
            .arg(&what)
            .args(["--listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.path().join("state")));
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("cannot serve {}: {why}", what.display())),
            "{err}"
        );
        assert!(
            !err.contains("cannot listen"),
            "not a listening problem: {err}"
        );
    }
}
