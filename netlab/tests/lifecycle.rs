//! A lab leaves nothing behind: not when dropped, not when its test
//! panics, and what a killed process left is cleaned later.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anypatch_netlab::{clean, Lab, Which};

fn lab(tag: &str) -> Lab {
    Lab::new(tag).unwrap_or_else(|e| panic!("cannot make a network lab: {e}"))
}

fn exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

#[test]
fn dropping_the_lab_kills_its_processes_and_removes_its_namespaces() {
    let lab = lab("drop");
    let (c, s) = (lab.client_ns().to_owned(), lab.server_ns().to_owned());
    assert!(exists(&c) && exists(&s));
    let mut server = lab
        .server_cmd("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn in the server namespace");
    let mut client = lab
        .client_cmd("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn in the client namespace");
    drop(lab);
    assert!(!exists(&c) && !exists(&s), "namespaces {c} and {s} remain");
    let deadline = Instant::now() + Duration::from_secs(10);
    for child in [&mut server, &mut client] {
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                assert!(!status.success(), "the process was killed, not ended");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a process in the lab survived it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_panicking_test_still_removes_its_lab() {
    let names = Mutex::new(None);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let lab = lab("panic");
        *names.lock().expect("lock") =
            Some((lab.client_ns().to_owned(), lab.server_ns().to_owned()));
        panic!("the test fails while its lab is up");
    }));
    assert!(result.is_err());
    let (c, s) = names
        .lock()
        .expect("lock")
        .take()
        .expect("the lab was made");
    assert!(!exists(&c) && !exists(&s), "namespaces {c} and {s} remain");
}

#[test]
fn labs_of_dead_processes_are_cleaned_and_nothing_else() {
    // No process has a pid this large (pid_max is at most 2^22).
    let stale = "anpnl-stale-4000000001-0-c";
    let other = format!("netlab-test-keep-{}", std::process::id());
    ip(&["netns", "add", stale]);
    ip(&["netns", "add", &other]);
    let mine = lab("mine");

    let removed = clean(Which::Stale).expect("clean");
    // A parallel test's Lab::new may have removed it first; either way it is gone.
    assert!(!exists(stale), "stale lab remains (removed: {removed:?})");
    assert!(
        exists(&other),
        "clean removed a namespace that is not a lab's"
    );
    assert!(
        exists(mine.client_ns()) && exists(mine.server_ns()),
        "clean removed this process's own lab"
    );
    ip(&["netns", "del", &other]);
}

#[test]
fn netlab_clean_removes_labs_of_dead_processes() {
    let stale = "anpnl-stale-4000000002-0-s";
    ip(&["netns", "add", stale]);
    let out = Command::new(env!("CARGO_BIN_EXE_netlab"))
        .arg("clean")
        .output()
        .expect("run netlab clean");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!exists(stale), "netlab clean left {stale}");
}
