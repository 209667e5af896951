//! Connection security for both kinds of connection Switchyard opens (tokio-postgres clients and
//! the hand-built walsender connection), through rustls so the binary needs no OpenSSL.
//!
//! Users write libpq connection URLs, so `sslmode` and `sslrootcert` mean what they mean to libpq:
//! `prefer` (the default) encrypts when the server offers it without checking the certificate,
//! `require` insists on encryption, `verify-ca` also checks the chain against a root certificate
//! and `verify-full` checks the host name too. As in libpq, `require` with an explicit
//! `sslrootcert` verifies the chain like `verify-ca`. tokio-postgres understands only disable,
//! prefer and require and rejects `sslrootcert`, so [`TlsSettings::from_url`] takes both out of
//! the URL and the verification they ask for lives in the rustls config built here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use switchyard_core::ConnectorError;
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values that Switchyard supports.
#[derive(Clone, Debug, PartialEq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling, for messages.
    pub fn as_str(&self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, ConnectorError> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(ConnectorError::config(format!(
                "invalid sslmode {other:?} in the connection URL: expected one of disable, prefer, \
                 require, verify-ca, verify-full"
            ))),
        }
    }
}

/// How a connection is secured, as read from a connection URL.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings { mode: SslMode::Prefer, root_cert: None }
    }
}

impl TlsSettings {
    /// Reads sslmode/sslrootcert from a postgres:// URL's query; returns the settings and the URL
    /// with those two parameters removed (so tokio_postgres::Config::from_str accepts it).
    /// A libpq key=value string (`host=... sslmode=require`) is handled the same way.
    pub fn from_url(url: &str) -> Result<(TlsSettings, String), ConnectorError> {
        let (pairs, rewritten) = if url.starts_with("postgres://") || url.starts_with("postgresql://")
        {
            take_uri_parameters(url)
        } else {
            take_key_value_parameters(url)
        };
        let mut settings = TlsSettings::default();
        for (key, value) in pairs {
            match key.as_str() {
                "sslmode" => settings.mode = SslMode::parse(&value)?,
                _ => settings.root_cert = Some(PathBuf::from(value)),
            }
        }
        Ok((settings, rewritten))
    }

    /// A rustls client config for this mode: require = encrypt without verifying the certificate
    /// (a verifier that accepts any certificate but still checks handshake signatures); verify-ca
    /// = verify the chain against root_cert but not the host name; verify-full = chain + host
    /// name. verify-* without root_cert use ~/.postgresql/root.crt when it exists. None for
    /// Disable.
    pub fn rustls_config(&self) -> Result<Option<Arc<ClientConfig>>, ConnectorError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.mode, &self.root_cert) {
            (SslMode::Disable, _) => return Ok(None),
            (SslMode::Prefer, _) | (SslMode::Require, None) => {
                Arc::new(EncryptOnlyVerifier { provider: provider.clone() })
            }
            (SslMode::Require, Some(_)) | (SslMode::VerifyCa, _) => {
                Arc::new(ChainOnlyVerifier { chain: self.webpki_verifier(&provider)? })
            }
            (SslMode::VerifyFull, _) => self.webpki_verifier(&provider)?,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| ConnectorError::bug("rustls rejected its own default protocol versions").with_source(err))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Some(Arc::new(config)))
    }

    fn webpki_verifier(
        &self,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Arc<WebPkiServerVerifier>, ConnectorError> {
        let path = self.root_cert_path()?;
        let mut roots = RootCertStore::empty();
        let certificates = CertificateDer::pem_file_iter(&path).map_err(|err| {
            ConnectorError::config(format!("cannot read sslrootcert {}: {err}", path.display()))
        })?;
        for certificate in certificates {
            let certificate = certificate.map_err(|err| {
                ConnectorError::config(format!("sslrootcert {} is not valid PEM: {err}", path.display()))
            })?;
            roots.add(certificate).map_err(|err| {
                ConnectorError::config(format!(
                    "sslrootcert {} holds a certificate rustls cannot use: {err}",
                    path.display()
                ))
            })?;
        }
        if roots.is_empty() {
            return Err(ConnectorError::config(format!(
                "sslrootcert {} holds no PEM certificate",
                path.display()
            )));
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|err| ConnectorError::config(format!("cannot use sslrootcert {}: {err}", path.display())))
    }

    fn root_cert_path(&self) -> Result<PathBuf, ConnectorError> {
        if let Some(path) = &self.root_cert {
            return Ok(path.clone());
        }
        let default = std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql/root.crt"));
        match default {
            Some(path) if path.exists() => Ok(path),
            _ => Err(ConnectorError::config(format!(
                "sslmode={} needs a root certificate to verify the server against: add \
                 sslrootcert=/path/to/ca.pem to the connection URL (or install ~/.postgresql/root.crt)",
                self.mode.as_str()
            ))),
        }
    }

}

/// Connect a tokio_postgres::Config with these settings; returns the client and spawns the
/// connection task, logging its error at debug. Prefer tries TLS and falls back to plain when the
/// server refuses SSL or the TLS handshake fails, as libpq does. Unix sockets never use TLS (the
/// server refuses it there, and libpq does not ask).
pub async fn connect(config: &tokio_postgres::Config, tls: &TlsSettings) -> Result<Client, tokio_postgres::Error> {
    let unix_only = !config.get_hosts().is_empty()
        && config.get_hosts().iter().all(|host| matches!(host, Host::Unix(_)));
    if tls.mode == SslMode::Disable || unix_only {
        let mut plain = config.clone();
        plain.ssl_mode(PgSslMode::Disable);
        return spawn_connection(plain.connect(NoTls).await?);
    }
    let mut encrypted = config.clone();
    encrypted.ssl_mode(if tls.mode == SslMode::Prefer { PgSslMode::Prefer } else { PgSslMode::Require });
    let connector = RustlsOrSetupError(
        tls.rustls_config()
            .map(|built| built.map(|config| MakeRustlsConnect::new((*config).clone())))
            .map_err(|err| err.message().to_string())
            .and_then(|built| built.ok_or_else(|| "no TLS config for this sslmode".to_string())),
    );
    match encrypted.connect(connector).await {
        Ok(connected) => spawn_connection(connected),
        Err(err) if tls.mode == SslMode::Prefer && is_tls_failure(&err) => {
            tracing::debug!(error = %err, "TLS failed under sslmode=prefer; retrying without TLS");
            let mut plain = config.clone();
            plain.ssl_mode(PgSslMode::Disable);
            spawn_connection(plain.connect(NoTls).await?)
        }
        Err(err) => Err(err),
    }
}

fn spawn_connection<S, T>(
    (client, connection): (Client, tokio_postgres::Connection<S, T>),
) -> Result<Client, tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "postgres connection ended with an error");
        }
    });
    Ok(client)
}

/// Whether a connection failed in the TLS layer (handshake, certificate) rather than in
/// PostgreSQL itself, which is when libpq's `prefer` retries without TLS.
fn is_tls_failure(err: &tokio_postgres::Error) -> bool {
    if err.as_db_error().is_some() {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(current) = cause {
        if current.is::<rustls::Error>() || current.is::<TlsSetupError>() {
            return true;
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
                return true;
            }
        }
        cause = current.source();
    }
    false
}

/// A TLS configuration that could not be built (say, a missing sslrootcert), carried into
/// tokio-postgres's error type, which has no public constructor.
#[derive(Debug)]
struct TlsSetupError(String);

impl std::fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

/// tokio-postgres asks for its TLS connector only once the socket is open; this one hands back
/// the setup error at that point so `connect` keeps tokio-postgres's error type.
struct RustlsOrSetupError(Result<MakeRustlsConnect, String>);

impl<S> MakeTlsConnect<S> for RustlsOrSetupError
where
    MakeRustlsConnect: MakeTlsConnect<S, Error = std::convert::Infallible>,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = <MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
    type Error = TlsSetupError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, TlsSetupError> {
        match &mut self.0 {
            Ok(make) => make.make_tls_connect(domain).map_err(|never| match never {}),
            Err(message) => Err(TlsSetupError(message.clone())),
        }
    }
}

/// `require`/`prefer` without a root certificate: the session is encrypted but the server's
/// identity is not checked. Handshake signatures are still verified, so the peer must hold the
/// private key of the certificate it presents.
#[derive(Debug)]
struct EncryptOnlyVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EncryptOnlyVerifier {
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
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root certificate, but the name in the certificate
/// need not match the host the URL names (servers are often reached by IP or an alias).
#[derive(Debug)]
struct ChainOnlyVerifier {
    chain: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
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
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

fn is_tls_parameter(key: &str) -> bool {
    key == "sslmode" || key == "sslrootcert"
}

/// Splits `sslmode`/`sslrootcert` out of a URI's query string; every other parameter is kept
/// byte for byte.
fn take_uri_parameters(url: &str) -> (Vec<(String, String)>, String) {
    let Some((base, query)) = url.split_once('?') else {
        return (Vec::new(), url.to_string());
    };
    let mut taken = Vec::new();
    let mut kept = Vec::new();
    for parameter in query.split('&').filter(|parameter| !parameter.is_empty()) {
        let (raw_key, raw_value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let key = percent_decode(raw_key);
        if is_tls_parameter(&key) {
            taken.push((key, percent_decode(raw_value)));
        } else {
            kept.push(parameter);
        }
    }
    let rewritten = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (taken, rewritten)
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// The same for a libpq `key=value key='quoted value'` string.
fn take_key_value_parameters(conninfo: &str) -> (Vec<(String, String)>, String) {
    let mut taken = Vec::new();
    let mut kept: Vec<&str> = Vec::new();
    let mut rest = conninfo.trim_start();
    while !rest.is_empty() {
        let token_len = key_value_token_len(rest);
        let token = &rest[..token_len];
        let (key, value) = token.split_once('=').unwrap_or((token, ""));
        if is_tls_parameter(key.trim()) {
            taken.push((key.trim().to_string(), unquote_conninfo_value(value.trim())));
        } else {
            kept.push(token);
        }
        rest = rest[token_len..].trim_start();
    }
    (taken, kept.join(" "))
}

/// Length of the first `key = value` token: a value is either single-quoted (with backslash
/// escapes) or runs to the next whitespace.
fn key_value_token_len(text: &str) -> usize {
    let Some(equals) = text.find('=') else { return text.len() };
    let after_equals = equals + 1;
    let value_start = after_equals + (text[after_equals..].len() - text[after_equals..].trim_start().len());
    let mut chars = text[value_start..].char_indices();
    let quoted = text[value_start..].starts_with('\'');
    if quoted {
        chars.next();
    }
    let mut escaped = false;
    for (offset, character) in chars {
        if escaped {
            escaped = false;
        } else if character == '\\' {
            escaped = true;
        } else if quoted && character == '\'' {
            return value_start + offset + 1;
        } else if !quoted && character.is_whitespace() {
            return value_start + offset;
        }
    }
    text.len()
}

fn unquote_conninfo_value(value: &str) -> String {
    let inner = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).unwrap_or(value);
    let mut unquoted = String::with_capacity(inner.len());
    let mut characters = inner.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => unquoted.extend(characters.next()),
            other => unquoted.push(other),
        }
    }
    unquoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::ErrorKind;

    #[test]
    fn default_is_prefer_and_url_is_untouched() {
        let (settings, url) = TlsSettings::from_url("postgres://u:p@h:5432/db?connect_timeout=5").unwrap();
        assert_eq!(settings.mode, SslMode::Prefer);
        assert!(settings.root_cert.is_none());
        assert_eq!(url, "postgres://u:p@h:5432/db?connect_timeout=5");
    }

    #[test]
    fn every_mode_parses() {
        for (text, mode) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let (settings, url) = TlsSettings::from_url(&format!("postgresql://h/db?sslmode={text}")).unwrap();
            assert_eq!(settings.mode, mode);
            assert_eq!(url, "postgresql://h/db");
        }
    }

    #[test]
    fn rootcert_is_decoded_and_removed_keeping_other_parameters() {
        let (settings, url) = TlsSettings::from_url(
            "postgres://u:s3cr%3Ft@h/db?application_name=x&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&sslmode=verify-full&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(settings.mode, SslMode::VerifyFull);
        assert_eq!(settings.root_cert.as_deref(), Some(Path::new("/etc/ca dir/ca.pem")));
        assert_eq!(url, "postgres://u:s3cr%3Ft@h/db?application_name=x&connect_timeout=3");
        assert!(url.parse::<tokio_postgres::Config>().is_ok());
    }

    #[test]
    fn invalid_mode_names_sslmode_and_not_the_password() {
        let err = TlsSettings::from_url("postgres://u:hunter2@h/db?sslmode=allow").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("sslmode"), "{}", err.message());
        assert!(err.message().contains("allow"));
        assert!(!err.message().contains("hunter2"));
    }

    #[test]
    fn key_value_strings_are_rewritten_too() {
        let (settings, rest) = TlsSettings::from_url(
            "host=h port=5433 sslmode = require sslrootcert='/tmp/my ca.pem' user=u password='a b\\'c'",
        )
        .unwrap();
        assert_eq!(settings.mode, SslMode::Require);
        assert_eq!(settings.root_cert.as_deref(), Some(Path::new("/tmp/my ca.pem")));
        assert_eq!(rest, "host=h port=5433 user=u password='a b\\'c'");
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a b'c"[..]));
    }

    #[test]
    fn configs_per_mode() {
        let disable = TlsSettings { mode: SslMode::Disable, root_cert: None };
        assert!(disable.rustls_config().unwrap().is_none());
        let require = TlsSettings { mode: SslMode::Require, root_cert: None };
        assert!(require.rustls_config().unwrap().is_some());
        let missing = TlsSettings { mode: SslMode::VerifyCa, root_cert: Some("/nonexistent/ca.pem".into()) };
        let err = missing.rustls_config().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("sslrootcert"), "{}", err.message());
    }
}
