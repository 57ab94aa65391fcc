//! TLS for both sides: the server's certificate, made on first start and
//! kept; its fingerprint; and how a client decides to trust a server.
//! Without the `quic-https` feature there is no TLS: only the fingerprint
//! syntax and [`Trust`] remain, so that callers read the same flags.

#[cfg(feature = "quic-https")]
use std::fs;
#[cfg(feature = "quic-https")]
use std::io;
#[cfg(feature = "quic-https")]
use std::os::unix::fs::OpenOptionsExt;
#[cfg(feature = "quic-https")]
use std::path::Path;
#[cfg(feature = "quic-https")]
use std::sync::Arc;

#[cfg(feature = "quic-https")]
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
#[cfg(feature = "quic-https")]
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
#[cfg(feature = "quic-https")]
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
#[cfg(feature = "quic-https")]
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

#[cfg(feature = "quic-https")]
/// The crypto every side uses: rustls on *ring*. (rustls now prefers
/// aws-lc-rs, for post-quantum key exchange; it needs cmake and a C
/// toolchain to build, which the static initramfs build does not have.)
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(feature = "quic-https")]
/// A server's certificate and key.
#[derive(Debug)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

#[cfg(feature = "quic-https")]
impl Identity {
    /// The certificate's fingerprint as users type it: `SHA256:` and 64
    /// lowercase hex digits.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }
}

#[cfg(feature = "quic-https")]
/// `SHA256:` and the hex SHA-256 of a certificate (DER).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("SHA256:{hex}")
}

/// Reads a fingerprint as [`fingerprint`] writes it; also accepts it
/// without the prefix, in upper case, or with colons between bytes.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text
        .trim()
        .strip_prefix("SHA256:")
        .or_else(|| text.trim().strip_prefix("sha256:"))
        .unwrap_or(text.trim())
        .chars()
        .filter(|&c| c != ':')
        .collect();
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect();
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            format!(
                "{text}: not a certificate fingerprint; give the SHA256:... line `mkpatch serve` prints"
            )
        })
}

#[cfg(feature = "quic-https")]
/// Loads the server identity kept in `dir`, or makes one (a self-signed
/// certificate for `names`) and keeps it there, the key readable by its
/// owner only.
pub fn load_or_make(dir: &Path, names: &[String]) -> io::Result<Identity> {
    let (cert_path, key_path) = (dir.join("cert.der"), dir.join("key.der"));
    if cert_path.exists() && key_path.exists() {
        let cert = CertificateDer::from(fs::read(&cert_path)?);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(fs::read(&key_path)?));
        return Ok(Identity { cert, key });
    }
    fs::create_dir_all(dir)?;
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| io::Error::other(format!("cannot make a certificate: {e}")))?;
    let key = made.signing_key.serialize_der();
    let cert = made.cert.der().to_vec();
    // Key first: a certificate without its key is never left behind.
    write_private(&key_path, &key)?;
    write_private(&cert_path, &cert)?;
    Ok(Identity {
        cert: CertificateDer::from(cert),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    })
}

#[cfg(feature = "quic-https")]
/// Writes `bytes` to `path` whole or not at all, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// How a client trusts the server it fetches from.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only a certificate with this SHA-256 (`--server-cert`).
    Pinned([u8; 32]),
    /// A certificate chaining to the web's roots or to extra CA
    /// certificates (`--ca`), for the host name in the URL.
    #[cfg(feature = "quic-https")]
    Roots(Arc<RootCertStore>),
    /// Any server: the patch's signature by a trusted key is what is
    /// trusted. The caller allows this only when it requires one.
    Signature,
}

#[cfg(not(feature = "quic-https"))]
impl Trust {
    /// Certificate authorities need TLS, which this build lacks.
    pub fn roots(_ca_files: &[std::path::PathBuf]) -> Result<Self, String> {
        Err("this applypatch has no QUIC or TLS (the small build, as in an initramfs): https:// and --ca are not available; fetch the patch over plain http:// with --trusted-key, or to a file first".into())
    }
}

#[cfg(feature = "quic-https")]
impl Trust {
    /// The web's roots plus the certificates in each PEM file of `ca_files`.
    pub fn roots(ca_files: &[std::path::PathBuf]) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in ca_files {
            let pem = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut found = 0;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert =
                    cert.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                found += 1;
            }
            if found == 0 {
                return Err(format!("{}: no PEM certificate in it", path.display()));
            }
        }
        Ok(Self::Roots(Arc::new(roots)))
    }

    /// A rustls client configuration that trusts as this says and offers `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3");
        let mut config = match self {
            Self::Roots(roots) => builder
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
            Self::Pinned(sha256) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    sha256: *sha256,
                    provider,
                    any: false,
                }))
                .with_no_client_auth(),
            Self::Signature => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned {
                    sha256: [0; 32],
                    provider,
                    any: true,
                }))
                .with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

#[cfg(feature = "quic-https")]
/// Accepts exactly one certificate, by its SHA-256 (or, with `any`, every
/// certificate), and checks the handshake signatures as usual: the server
/// must hold the certificate's key.
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<CryptoProvider>,
    any: bool,
}

#[cfg(feature = "quic-https")]
impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if self.any || digest.as_ref() == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate is {}, not the one pinned with --server-cert",
                fingerprint(end_entity)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(feature = "quic-https")]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_back_in_every_spelling() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = load_or_make(dir.path(), &["localhost".into()]).expect("made");
        let fp = id.fingerprint();
        let want = parse_fingerprint(&fp).expect("own form");
        let colons: Vec<String> = want.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")), Ok(want));
        assert_eq!(parse_fingerprint(&fp["SHA256:".len()..]), Ok(want));
        assert!(parse_fingerprint("SHA256:abcd").is_err());
        // Kept: a second start finds the same certificate.
        let again = load_or_make(dir.path(), &["localhost".into()]).expect("loaded");
        assert_eq!(again.fingerprint(), fp);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("key.der"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others");
    }
}
