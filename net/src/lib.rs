//! anypatch over the network: `mkpatch serve` hands out patch files over
//! QUIC, and `applypatch` fetches a patch over QUIC or HTTP(S) as a stream
//! that it verifies and applies as it arrives.
//!
//! The engine knows nothing of this crate: a fetched patch is a
//! [`std::io::Read`] ([`RemotePatch`]) that the std apply layer
//! (`anypatch_apply::drive`) reads as it reads a file. What this crate adds:
//!
//! - [`url`]: `quic://host:port/name`, `https://…`, `http://…`;
//! - [`tls`]: the server's certificate (made on first start, kept), its
//!   fingerprint, and how a client trusts a server (a pinned fingerprint,
//!   CA roots, or, for signed patches only, nothing);
//! - [`protocol`]: the request and response lines on a QUIC stream;
//! - [`server`]: the QUIC server;
//! - [`access`]: who may sync (or fetch) which names;
//! - [`token`]: a client's access token, read from a file, never shown;
//! - [`fetch`]: one ranged fetch over QUIC or HTTP;
//! - [`sync`]: live sync of an image over QUIC (spec/SYNC.md);
//! - [`remote`]: the blocking reader that retries with backoff and goes on
//!   from the byte it had reached, checking that the file did not change.
//!
//! Every byte a [`RemotePatch`] yields is unverified until the engine has
//! checked it against the patch's hash chain; nothing is written before.
#![forbid(unsafe_code)]

#[cfg(feature = "quic-https")]
pub mod access;
pub mod fetch;
pub mod plain_http;
#[cfg(feature = "quic-https")]
pub mod protocol;
pub mod remote;
mod rt;
#[cfg(feature = "quic-https")]
pub mod server;
#[cfg(feature = "quic-https")]
pub mod sync;
pub mod tls;
pub mod token;
pub mod url;

pub use remote::{FetchStats, RemoteOptions, RemotePatch, VersionChanged};
pub use tls::Trust;
pub use token::Token;
pub use url::RemoteUrl;
