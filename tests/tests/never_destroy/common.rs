//! What the defect tests share: running commands, loop devices that detach
//! themselves, and children that never outlive a failed assertion.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `cmd`, asserts it succeeded, and returns its stdout, trimmed.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run");
    assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// A loop device over a file (the tests run as root), detached on drop
/// together with the in-place state applypatch keeps for it by default.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    pub fn attach(file: &Path) -> Self {
        Self::attach_with(file, &[])
    }

    /// A read-only loop device (`losetup -r`).
    pub fn attach_read_only(file: &Path) -> Self {
        Self::attach_with(file, &["-r"])
    }

    fn attach_with(file: &Path, flags: &[&str]) -> Self {
        let dev = run_ok(
            Command::new("losetup")
                .args(flags)
                .args(["-f", "--show"])
                .arg(file),
        );
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        Self { dev: dev.into() }
    }

    /// "MAJOR:MINOR" of the device, as sysfs names it.
    pub fn numbers(&self) -> String {
        let name = self.dev.file_name().expect("/dev/loopN").to_string_lossy();
        fs::read_to_string(format!("/sys/class/block/{name}/dev"))
            .expect("sysfs names the device numbers")
            .trim()
            .to_owned()
    }

    /// The state file applypatch keeps for this device by default.
    pub fn default_state(&self) -> PathBuf {
        PathBuf::from(format!(
            "/var/lib/anypatch/block-{}.anypatch-state",
            self.numbers()
        ))
    }

    /// A block device node for this device inside `dir`, so a binary that
    /// renames a file over it cannot damage /dev.
    pub fn node_in(&self, dir: &Path, name: &str) -> PathBuf {
        let numbers = self.numbers();
        let (major, minor) = numbers.split_once(':').expect("MAJOR:MINOR");
        let node = dir.join(name);
        run_ok(Command::new("mknod").arg(&node).args(["b", major, minor]));
        node
    }

    /// Everything the device holds.
    pub fn read(&self) -> Vec<u8> {
        fs::read(&self.dev).expect("read the loop device")
    }

    /// The first `len` bytes the device holds.
    pub fn read_prefix(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        fs::File::open(&self.dev)
            .expect("open the loop device")
            .read_exact_at(&mut buf, 0)
            .expect("read the loop device");
        buf
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.default_state());
        // The state the binaries before the fix kept, keyed by basename.
        if let Some(name) = self.dev.file_name() {
            let _ = fs::remove_file(
                Path::new("/var/lib/anypatch")
                    .join(format!("{}.anypatch-state", name.to_string_lossy())),
            );
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A child process killed and reaped when dropped, so a failed assertion
/// never leaves it running or waiting on a FIFO.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
