//! What hush trusts and presents when it reaches Redis over TLS. A CA bundle from
//! `HUSH_REDIS_CA_FILE` is trusted *beside* the system roots, and a client certificate is
//! offered when one is configured. Every file is read and checked once, at start-up, so a
//! missing or malformed file stops hush with its name rather than failing each connection.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use redis::{ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, TlsCertificates};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The files named in the configuration; any of them may be absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsFiles<'a> {
    pub ca_file: Option<&'a str>,
    pub client_cert_file: Option<&'a str>,
    pub client_key_file: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path} cannot be read: {source}")]
    Read {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{key} {path} is not usable: {reason}")]
    Unusable {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error(
        "HUSH_REDIS_CLIENT_CERT_FILE and HUSH_REDIS_CLIENT_KEY_FILE go together: set both or neither"
    )]
    HalfClientIdentity,
}

impl TlsFiles<'_> {
    /// The certificates the Redis client is built with, or `None` when nothing is configured
    /// and the client's own default (the system roots) applies as it is.
    pub fn load(&self) -> Result<Option<TlsCertificates>, TlsError> {
        let client_tls = match (self.client_cert_file, self.client_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(client_identity(cert, key)?),
            _ => return Err(TlsError::HalfClientIdentity),
        };
        let root_cert = match self.ca_file {
            Some(path) => {
                let mut bundle = system_roots_pem();
                bundle.extend_from_slice(&ca_bundle(path)?);
                Some(bundle)
            }
            None => None,
        };
        if client_tls.is_none() && root_cert.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

const CA_KEY: &str = "HUSH_REDIS_CA_FILE";
const CERT_KEY: &str = "HUSH_REDIS_CLIENT_CERT_FILE";
const KEY_KEY: &str = "HUSH_REDIS_CLIENT_KEY_FILE";

fn read(key: &'static str, path: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(Path::new(path)).map_err(|source| TlsError::Read {
        key,
        path: path.to_string(),
        source,
    })
}

fn unusable(key: &'static str, path: &str, reason: impl Into<String>) -> TlsError {
    TlsError::Unusable {
        key,
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// The PEM certificates of `path`, checked the way the client will use them: each must be a
/// trust anchor rustls accepts, and there must be at least one.
fn ca_bundle(path: &str) -> Result<Vec<u8>, TlsError> {
    let pem = read(CA_KEY, path)?;
    let certs = certificates(CA_KEY, path, &pem)?;
    let probe = TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.clone()),
    };
    redis::Client::build_with_tls(probe_address(), probe)
        .map_err(|e| unusable(CA_KEY, path, format!("{e} ({certs} certificates read)")))?;
    Ok(pem)
}

fn certificates(key: &'static str, path: &str, pem: &[u8]) -> Result<usize, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(key, path, format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(unusable(
            key,
            path,
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs.len())
}

fn client_identity(cert_path: &str, key_path: &str) -> Result<ClientTlsConfig, TlsError> {
    let client_cert = read(CERT_KEY, cert_path)?;
    certificates(CERT_KEY, cert_path, &client_cert)?;
    let client_key = read(KEY_KEY, key_path)?;
    // The error names no part of the key: the file holds a secret.
    PrivateKeyDer::from_pem_slice(&client_key).map_err(|_| {
        unusable(
            KEY_KEY,
            key_path,
            "it holds no PEM private key (PKCS#8, PKCS#1 or SEC1)",
        )
    })?;
    let identity = ClientTlsConfig {
        client_cert,
        client_key,
    };
    let probe = TlsCertificates {
        client_tls: Some(identity.clone()),
        root_cert: None,
    };
    redis::Client::build_with_tls(probe_address(), probe)
        .map_err(|e| unusable(CERT_KEY, cert_path, e.to_string()))?;
    Ok(identity)
}

/// An address that is never dialled: building a client parses its certificates, which is the
/// check wanted at start-up.
fn probe_address() -> redis::ConnectionInfo {
    ConnectionAddr::TcpTls {
        host: "localhost".into(),
        port: 6379,
        insecure: false,
        tls_params: None,
    }
    .into_connection_info()
    .expect("an address is always a connection info")
}

/// The platform's trusted roots as one PEM bundle. The Redis client takes a single bundle that
/// replaces its default roots, so the configured CA is trusted beside these by handing it the
/// union. A system store that cannot be read adds nothing: the configured CA still applies.
fn system_roots_pem() -> Vec<u8> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "some system root certificates could not be read");
    }
    let mut pem = Vec::new();
    for cert in &found.certs {
        pem.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
        for line in B64.encode(cert.as_ref()).as_bytes().chunks(64) {
            pem.extend_from_slice(line);
            pem.push(b'\n');
        }
        pem.extend_from_slice(b"-----END CERTIFICATE-----\n");
    }
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, body: &[u8]) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        (dir, path.display().to_string())
    }

    fn ca_error(path: &str) -> String {
        TlsFiles {
            ca_file: Some(path),
            ..TlsFiles::default()
        }
        .load()
        .expect_err(path)
        .to_string()
    }

    #[test]
    fn a_bad_ca_file_is_refused_naming_it() {
        let e = ca_error("/nonexistent/ca.pem");
        assert!(
            e.contains("HUSH_REDIS_CA_FILE /nonexistent/ca.pem cannot be read"),
            "{e}"
        );
        let (_d, path) = temp("ca.pem", b"hello, not a certificate\n");
        let e = ca_error(&path);
        assert!(e.contains(&path) && e.contains("no PEM certificate"), "{e}");
        let (_d, path) = temp(
            "ca.pem",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        let e = ca_error(&path);
        assert!(e.contains(&path) && e.contains("not PEM"), "{e}");
        let (_d, path) = temp(
            "ca.pem",
            b"-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
        );
        let e = ca_error(&path);
        assert!(e.contains(&path) && e.contains("not usable"), "{e}");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let e = TlsFiles {
            client_cert_file: Some("/x/cert.pem"),
            ..TlsFiles::default()
        }
        .load()
        .unwrap_err();
        assert!(matches!(e, TlsError::HalfClientIdentity), "{e}");
        assert!(TlsFiles::default().load().unwrap().is_none());
    }

    #[test]
    fn system_roots_come_out_as_pem_the_client_reads_back() {
        let pem = system_roots_pem();
        let system = rustls_native_certs::load_native_certs().certs;
        let back = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        assert_eq!(back, system);
    }
}
