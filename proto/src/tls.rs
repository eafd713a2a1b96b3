//! Node identities and pinned TLS 1.3 for every worker link.
//!
//! - A worker keeps a key and a self-signed certificate in its state
//!   directory. Clients pin it by the certificate's SHA-256 (`sha256:<hex>`),
//!   so no certificate authority is involved.
//! - Clients (the coordinator, and a stage calling the next one) present one
//!   certificate derived from the cluster token. A worker refuses any other
//!   during the handshake, before a single RPC runs. TLS 1.3 encrypts it,
//!   so only the pinned worker sees it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};

/// File in a worker's state directory: its private key, then its certificate.
pub const IDENTITY_FILE: &str = "identity.pem";
/// Name in every certificate we make; nothing checks it (pins do).
pub(crate) const CERT_NAME: &str = "strata-worker";

#[derive(Debug)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn tls_err(what: impl fmt::Display) -> TlsError {
    TlsError(what.to_string())
}

/// SHA-256 of a certificate's DER, written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(cert_der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(cert_der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a fingerprint: expected sha256:<64 hex digits>");
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// A key and its self-signed certificate.
pub struct NodeIdentity {
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeIdentity({})", self.fingerprint())
    }
}

impl NodeIdentity {
    /// A fresh ECDSA P-256 identity.
    pub fn generate() -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate().map_err(tls_err)?;
        Self::self_signed(key)
    }

    /// The identity in `dir`, made and saved there (key readable by the
    /// owner only) on first use. Safe against two workers starting at once.
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let path = dir.join(IDENTITY_FILE);
        match std::fs::read(&path) {
            Ok(pem) => return Self::from_pem(&pem, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(tls_err(format!("reading {}: {e}", path.display()))),
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| tls_err(format!("creating {}: {e}", dir.display())))?;
        let key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let cert = self_signed_cert(&key)?;
        let pem = format!("{}{}", key.serialize_pem(), cert.pem());
        let fresh = NodeIdentity {
            cert: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
        };
        // Written whole under a temporary name, then linked into place:
        // whoever links first wins and everyone reads that one.
        let tmp = dir.join(format!(".{IDENTITY_FILE}.{}", std::process::id()));
        write_private(&tmp, pem.as_bytes())?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(fresh),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let pem = std::fs::read(&path)
                    .map_err(|e| tls_err(format!("reading {}: {e}", path.display())))?;
                Self::from_pem(&pem, &path)
            }
            Err(e) => Err(tls_err(format!("saving {}: {e}", path.display()))),
        }
    }

    fn from_pem(pem: &[u8], path: &Path) -> Result<Self, TlsError> {
        let bad = |what: &str| tls_err(format!("{}: {what}", path.display()));
        let key = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| bad(&format!("no private key ({e})")))?;
        let PrivateKeyDer::Pkcs8(key) = key else {
            return Err(bad("the private key is not PKCS#8"));
        };
        let cert = CertificateDer::from_pem_slice(pem)
            .map_err(|e| bad(&format!("no certificate ({e})")))?;
        // rustls checks that the key is the certificate's when a worker
        // builds its server config.
        Ok(NodeIdentity {
            cert,
            key_pkcs8: key.secret_pkcs8_der().to_vec(),
        })
    }

    /// The identity every client of a cluster presents: an Ed25519 key
    /// derived from the token, in a certificate with fixed fields, so both
    /// ends compute the same bytes.
    pub fn cluster_client(token: &str) -> Result<Self, TlsError> {
        let seed = blake3::derive_key("strata 2026 cluster client key v1", token.as_bytes());
        // PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410).
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&seed);
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8),
            &rcgen::PKCS_ED25519,
        )
        .map_err(tls_err)?;
        Self::self_signed(key)
    }

    fn self_signed(key: rcgen::KeyPair) -> Result<Self, TlsError> {
        let cert = self_signed_cert(&key)?;
        Ok(NodeIdentity {
            cert: cert.der().clone(),
            key_pkcs8: key.serialize_der(),
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// rcgen's defaults are fixed (validity 1975 to 4096, serial from the key),
/// so the same key always gives the same certificate.
fn self_signed_cert(key: &rcgen::KeyPair) -> Result<rcgen::Certificate, TlsError> {
    rcgen::CertificateParams::new(vec![CERT_NAME.to_string()])
        .and_then(|params| params.self_signed(key))
        .map_err(tls_err)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| tls_err(format!("writing {}: {e}", path.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| tls_err(format!("writing {}: {e}", path.display())))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A worker's side: its own identity; clients must present the cluster's.
pub fn server_config(identity: &NodeIdentity, token: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(ClusterClientCheck {
        expected: NodeIdentity::cluster_client(token)?.cert,
        provider: provider(),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key())
        .map_err(tls_err)?;
    // gRPC, or a TCP data link from the stage before (`transport::tcp`).
    config.alpn_protocols = vec![b"h2".to_vec(), crate::transport::tcp::ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A client's side: the cluster identity, and the one worker certificate
/// it accepts.
pub fn client_config(token: &str, pin: Fingerprint) -> Result<Arc<ClientConfig>, TlsError> {
    let me = NodeIdentity::cluster_client(token)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer {
            pin,
            provider: provider(),
        }))
        .with_client_auth_cert(vec![me.cert.clone()], me.key())
        .map_err(tls_err)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // Nothing names a worker but its pin; say nothing in clear.
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The name a client hands rustls (unused: SNI is off and pins decide).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(CERT_NAME).expect("a valid DNS name")
}

fn refusal(what: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(TlsError(what)),
    )))
}

/// The handshake-signature checks both verifiers share: the provider's
/// algorithms, whatever certificate they were shown.
macro_rules! handshake_signatures {
    () => {
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
    };
}

#[derive(Debug)]
struct PinnedServer {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        if got != self.pin {
            return Err(refusal(format!(
                "the worker's certificate is {got}, not the pinned {}",
                self.pin
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

#[derive(Debug)]
struct ClusterClientCheck {
    expected: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for ClusterClientCheck {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() != self.expected.as_ref() {
            return Err(refusal(
                "the client's certificate is not this cluster's (a different cluster token)".into(),
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    handshake_signatures!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip_and_reject_junk() {
        let id = NodeIdentity::generate().unwrap();
        let fp = id.fingerprint();
        let text = fp.to_string();
        assert_eq!(text.len(), 7 + 64);
        assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
        assert_eq!(
            text.to_uppercase()
                .replace("SHA256", "sha256")
                .parse::<Fingerprint>()
                .unwrap(),
            fp
        );
        for bad in [
            "",
            "sha256:",
            "sha1:00",
            &text[..70],
            &format!("{text}0"),
            &text.replace('a', "g"),
        ] {
            if bad != text {
                assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?}");
            }
        }
    }

    #[test]
    fn cluster_client_identity_depends_only_on_the_token() {
        let a = NodeIdentity::cluster_client("s3cret").unwrap();
        let b = NodeIdentity::cluster_client("s3cret").unwrap();
        let c = NodeIdentity::cluster_client("s3cres").unwrap();
        assert_eq!(a.cert.as_ref(), b.cert.as_ref());
        assert_ne!(a.cert.as_ref(), c.cert.as_ref());
    }

    #[test]
    fn an_identity_is_saved_once_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let first = NodeIdentity::load_or_create(&dir).unwrap();
        let again = NodeIdentity::load_or_create(&dir).unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(IDENTITY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key file is private");
        }
        std::fs::write(dir.join(IDENTITY_FILE), b"not pem").unwrap();
        let err = NodeIdentity::load_or_create(&dir).err().unwrap();
        assert!(err.to_string().contains("identity.pem"), "{err}");
    }
}
