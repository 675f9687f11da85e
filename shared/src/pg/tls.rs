//! TLS for PostgreSQL connections, with `sslmode` as libpq means it: `disable`, `prefer`
//! (the default: TLS when the server offers it, the certificate not checked), `require` (TLS,
//! the certificate not checked, unless `sslrootcert` is given: then as `verify-ca`),
//! `verify-ca` (the certificate chains to `sslrootcert`), `verify-full` (and names the host),
//! and a client certificate (`sslcert` + `sslkey`). tokio-postgres knows only the first
//! three modes and none of the file parameters: they are taken out of the URL here, and the
//! checks are rustls's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// What a connection string asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub mode: Mode,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Tls {
    /// The mode tokio-postgres negotiates with.
    pub fn ssl_mode(&self) -> SslMode {
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

/// Takes the TLS parameters out of a `postgres://` URL: the URL tokio-postgres can parse
/// (`sslmode` as one of its three, the file parameters gone) and what they asked for. A
/// key=value connection string is left as it is (its `sslmode` is tokio-postgres's).
pub fn split_url(url: &str) -> Result<(String, Tls), String> {
    let mut tls = Tls {
        mode: Mode::Prefer,
        root_cert: None,
        cert: None,
        key: None,
    };
    let Some((base, query)) = url.split_once('?').filter(|_| url.contains("://")) else {
        return Ok((url.to_string(), tls));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(v)
            .ok_or_else(|| format!("the value of {k} is not valid percent-encoding"))?;
        match k {
            "sslmode" => {
                tls.mode = match value.as_str() {
                    "disable" => Mode::Disable,
                    // tokio-postgres cannot try a plain connection first: TLS when offered
                    "allow" | "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode '{other}' is not one of disable, allow, prefer, require, verify-ca, verify-full"
                        ))
                    }
                }
            }
            "sslrootcert" => tls.root_cert = Some(PathBuf::from(value)),
            "sslcert" => tls.cert = Some(PathBuf::from(value)),
            "sslkey" => tls.key = Some(PathBuf::from(value)),
            _ => kept.push(pair.to_string()),
        }
    }
    // libpq: require with a CA file checks the chain as verify-ca does
    if tls.mode == Mode::Require && tls.root_cert.is_some() {
        tls.mode = Mode::VerifyCa;
    }
    if tls.cert.is_some() != tls.key.is_some() {
        return Err("sslcert and sslkey go together (a client certificate and its key)".into());
    }
    if matches!(tls.mode, Mode::VerifyCa | Mode::VerifyFull) && tls.root_cert.is_none() {
        return Err(
            "sslmode verify-ca and verify-full need sslrootcert (the CA file the server's certificate must chain to)"
                .into(),
        );
    }
    let mode = match tls.ssl_mode() {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        _ => "require",
    };
    kept.push(format!("sslmode={mode}"));
    Ok((format!("{base}?{}", kept.join("&")), tls))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The rustls configuration for `tls`: which certificates are accepted, and ours.
pub fn client_config(tls: &Tls) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match (&tls.mode, &tls.root_cert) {
        (Mode::VerifyCa | Mode::VerifyFull, Some(root)) => {
            let roots = roots(root)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("sslrootcert {}: {e}", root.display()))?;
            if tls.mode == Mode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        _ => Arc::new(AnyCertificate(provider)),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("sslkey {}: {e} (an unencrypted PEM key)", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert {}: no CA certificate in it",
            path.display()
        ));
    }
    Ok(roots)
}

/// `prefer` and `require` without a CA file: any certificate (as libpq), the handshake's
/// signatures still checked (the server holds the certificate's key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain to the CA file is checked, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_parameters_are_taken_out_and_the_verify_modes_become_require() {
        let (url, tls) = split_url(
            "postgres://u:p@db:5432/x?application_name=a&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:p@db:5432/x?application_name=a&sslmode=require"
        );
        assert_eq!(tls.mode, Mode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let (_, tls) = split_url("postgres://db/x?sslmode=require&sslrootcert=ca.pem").unwrap();
        assert_eq!(
            tls.mode,
            Mode::VerifyCa,
            "require with a CA file checks the chain"
        );
        let (url, tls) = split_url("postgres://db/x").unwrap();
        assert_eq!((url.as_str(), tls.mode), ("postgres://db/x", Mode::Prefer));
        let (url, _) = split_url("postgres://db/x?sslmode=disable").unwrap();
        assert!(url.ends_with("?sslmode=disable"));
        // a key=value string is tokio-postgres's to read
        let (kv, _) = split_url("host=db sslmode=require").unwrap();
        assert_eq!(kv, "host=db sslmode=require");
    }

    #[test]
    fn incomplete_or_unknown_settings_are_refused_with_the_reason() {
        let e = split_url("postgres://db/x?sslmode=verify-ca").unwrap_err();
        assert!(e.contains("need sslrootcert"), "{e}");
        let e = split_url("postgres://db/x?sslcert=c.pem").unwrap_err();
        assert!(e.contains("go together"), "{e}");
        let e = split_url("postgres://db/x?sslmode=strict").unwrap_err();
        assert!(e.contains("'strict'"), "{e}");
        let e = client_config(&Tls {
            mode: Mode::VerifyFull,
            root_cert: Some(PathBuf::from("/nonexistent/ca.pem")),
            cert: None,
            key: None,
        })
        .unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
