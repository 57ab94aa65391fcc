//! What can go wrong while building, steering or tearing down a lab.

use std::fmt;
use std::io;
use std::process::ExitStatus;

/// An error of the lab. Each message says what failed and what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The process is not root: namespaces, TUN devices, tc and nftables need it.
    NotRoot,
    /// A system tool (`ip`, `tc`, `nft`) could not be started.
    Spawn {
        /// The command line.
        command: String,
        /// Why it could not start.
        source: io::Error,
    },
    /// A system tool ran and failed.
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A file or device operation failed.
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A knob was given a value it cannot take.
    BadValue {
        /// The knob.
        knob: &'static str,
        /// The value given.
        got: String,
        /// What it accepts.
        expected: &'static str,
    },
    /// `nft` printed a counter in a shape this crate does not read.
    Counter {
        /// The namespace whose counter was read.
        namespace: String,
        /// What `nft` printed.
        output: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotRoot => write!(
                f,
                "netlab needs root (network namespaces, TUN devices, tc, nftables): run the tests as root"
            ),
            Error::Spawn { command, source } => write!(
                f,
                "cannot run `{command}`: {source}; install iproute2 and nftables (scripts/setup-deps net)"
            ),
            Error::Failed {
                command,
                status,
                stderr,
            } => write!(f, "`{command}` failed ({status}): {}", stderr.trim()),
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::BadValue {
                knob,
                got,
                expected,
            } => write!(f, "{knob} cannot be {got}: expected {expected}"),
            Error::Counter { namespace, output } => write!(
                f,
                "cannot read the byte counter in namespace {namespace}; nft printed: {}",
                output.trim()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. } | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
