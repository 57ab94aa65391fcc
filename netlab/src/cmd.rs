//! Running the system tools (`ip`, `tc`, `nft`), in the root namespace or in a lab's.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::Error;

/// A command that runs `program` inside the network namespace `ns` (`ip netns exec`).
pub(crate) fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// Runs `cmd` to completion with `stdin` as its input; its stdout on success.
pub(crate) fn run_with_input(mut cmd: Command, stdin: &str) -> Result<String, Error> {
    let command = describe(&cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .map_err(|source| Error::Io {
                what: format!("writing the input of `{command}`"),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Io {
        what: format!("waiting for `{command}`"),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` to completion; its stdout on success.
pub(crate) fn run(cmd: Command) -> Result<String, Error> {
    run_with_input(cmd, "")
}

/// Runs `program args...` in the root namespace.
pub(crate) fn root(program: &str, args: &[&str]) -> Result<String, Error> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run(cmd)
}

/// Runs `program args...` inside namespace `ns`.
pub(crate) fn ns(ns: &str, program: &str, args: &[&str]) -> Result<String, Error> {
    let mut cmd = in_ns(ns, program);
    cmd.args(args);
    run(cmd)
}

/// The command line, for error messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}
