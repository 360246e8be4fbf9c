//! TLS for the user Docker's TCP socket: a machine CA, server certificates for dockerd and
//! client certificates for the `docker` CLI (`ros tls generate`, `rancher.docker.tls`).
//!
//! As in RancherOS, the CA and the server pair come from the config when it has them
//! (`rancher.docker.ca_cert`/`ca_key`, `server_cert`/`server_key`); otherwise they are generated
//! once and kept on the state partition in [`STATE_DIR`], so every boot and every client
//! certificate uses the same CA.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Where the generated CA and server pair are kept (on the state partition).
pub const STATE_DIR: &str = "/var/lib/rancher/tls";
/// Where dockerd's default `tls_args` read the server pair.
pub const SERVER_DIR: &str = "/etc/docker/tls";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Cert { what: String, source: rcgen::Error },
    #[error("{0}")]
    Invalid(String),
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> TlsError {
    let what = what.into();
    move |source| TlsError::Cert { what, source }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert: String,
    pub key: String,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// The certificate authority that signs the server and client certificates.
pub struct Ca {
    pair: Pair,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new CA, valid for ten years.
    pub fn generate() -> Result<Ca, TlsError> {
        let key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Paddock");
        dn.push(DnType::CommonName, "paddock docker ca");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let cert = params
            .self_signed(&key)
            .map_err(cert_err("signing the CA"))?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA from its PEM certificate and key (from the config or [`STATE_DIR`]).
    pub fn from_pem(cert: &str, key: &str) -> Result<Ca, TlsError> {
        let signing = KeyPair::from_pem(key).map_err(cert_err("reading the CA key"))?;
        let issuer =
            Issuer::from_ca_cert_pem(cert, signing).map_err(cert_err("reading the CA cert"))?;
        Ok(Ca {
            pair: Pair {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            issuer,
        })
    }

    /// The CA given in the config, else the one kept in `dir`, else a new one saved there.
    /// The flag says whether it was created now.
    pub fn load_or_create(
        configured: Option<(&str, &str)>,
        dir: &Path,
    ) -> Result<(Ca, bool), TlsError> {
        if let Some((cert, key)) = configured {
            return Ok((Ca::from_pem(cert, key)?, false));
        }
        let (cert_file, key_file) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        if cert_file.exists() || key_file.exists() {
            let cert = read(&cert_file)?;
            let key = read(&key_file)?;
            return Ok((Ca::from_pem(&cert, &key)?, false));
        }
        let ca = Ca::generate()?;
        // The key first: a CA certificate is never left without its key.
        write(&key_file, &ca.pair.key, 0o600)?;
        write(&cert_file, &ca.pair.cert, 0o644)?;
        Ok((ca, true))
    }

    pub fn cert_pem(&self) -> &str {
        &self.pair.cert
    }

    /// A certificate of `kind` signed by this CA, valid for about three years. `names` are
    /// the server's DNS names and IP addresses (its subject alternative names).
    pub fn issue(&self, kind: Kind, names: &[String]) -> Result<Pair, TlsError> {
        let key = KeyPair::generate().map_err(cert_err("generating a key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Paddock");
        let cn = match kind {
            Kind::Server => names.first().map_or("paddock", String::as_str),
            Kind::Client => "client",
        };
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![match kind {
            Kind::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Kind::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        if kind == Kind::Server {
            for n in names {
                params.subject_alt_names.push(san(n)?);
            }
        }
        validity(&mut params, 1095);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(cert_err(format!("signing the {kind:?} certificate")))?;
        Ok(Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for clocks that are behind (ntp may not have run yet).
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

fn san(name: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !valid {
        return Err(TlsError::Invalid(format!(
            "hostname {name:?} is neither an IP address nor a DNS name"
        )));
    }
    name.to_owned()
        .try_into()
        .map(SanType::DnsName)
        .map_err(cert_err(format!("hostname {name:?}")))
}

/// The server pair: from the config when it has both halves, else the one kept in `dir`,
/// else a new one for `names`, signed by `ca` and saved there.
pub fn server_pair(
    configured: Option<(&str, &str)>,
    ca: &Ca,
    dir: &Path,
    names: &[String],
) -> Result<Pair, TlsError> {
    if let Some((cert, key)) = configured {
        return Ok(Pair {
            cert: cert.to_owned(),
            key: key.to_owned(),
        });
    }
    let (cert_file, key_file) = (dir.join("server-cert.pem"), dir.join("server-key.pem"));
    if cert_file.exists() && key_file.exists() {
        return Ok(Pair {
            cert: read(&cert_file)?,
            key: read(&key_file)?,
        });
    }
    let pair = ca.issue(Kind::Server, names)?;
    save_server(&pair, dir)?;
    Ok(pair)
}

/// Keeps `pair` as the server pair in `dir`.
pub fn save_server(pair: &Pair, dir: &Path) -> Result<(), TlsError> {
    write(&dir.join("server-key.pem"), &pair.key, 0o600)?;
    write(&dir.join("server-cert.pem"), &pair.cert, 0o644)
}

/// Writes the files dockerd's TLS flags name into `dir`: `ca.pem`, `server-cert.pem`,
/// `server-key.pem`.
pub fn install_server(ca_cert: &str, pair: &Pair, dir: &Path) -> Result<(), TlsError> {
    write(&dir.join("ca.pem"), ca_cert, 0o644)?;
    save_server(pair, dir)
}

/// Writes the files the docker CLI's `--tlsverify` reads from `~/.docker`: `ca.pem`,
/// `cert.pem`, `key.pem`.
pub fn install_client(ca_cert: &str, pair: &Pair, dir: &Path) -> Result<(), TlsError> {
    write(&dir.join("key.pem"), &pair.key, 0o600)?;
    write(&dir.join("cert.pem"), &pair.cert, 0o644)?;
    write(&dir.join("ca.pem"), ca_cert, 0o644)
}

/// The names a generated server certificate covers: localhost and the loopback addresses,
/// the hostname, and `extra` (addresses or names the user gives).
pub fn default_server_names(hostname: Option<&str>, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec![];
    let mut add = |n: &str| {
        let n = n.trim();
        if !n.is_empty() && !names.iter().any(|x| x == n) {
            names.push(n.to_owned());
        }
    };
    if let Some(h) = hostname {
        add(h);
    }
    for n in extra {
        add(n);
    }
    for n in ["localhost", "127.0.0.1", "::1"] {
        add(n);
    }
    names
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, data: &str, mode: u32) -> Result<(), TlsError> {
    crate::fsutil::write_atomic(path, data.as_bytes(), mode).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_ca_is_created_once_and_reloaded() {
        let d = tempfile::tempdir().unwrap();
        let (ca, created) = Ca::load_or_create(None, d.path()).unwrap();
        assert!(created);
        let mode = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(d.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca-key.pem"), 0o600);
        let (again, created) = Ca::load_or_create(None, d.path()).unwrap();
        assert!(!created);
        assert_eq!(ca.cert_pem(), again.cert_pem());
    }

    #[test]
    fn a_configured_ca_wins_and_a_broken_one_is_named() {
        let d = tempfile::tempdir().unwrap();
        let other = Ca::generate().unwrap();
        let (ca, created) =
            Ca::load_or_create(Some((&other.pair.cert, &other.pair.key)), d.path()).unwrap();
        assert!(!created);
        assert_eq!(ca.cert_pem(), other.cert_pem());
        assert!(!d.path().join("ca.pem").exists());
        let err = Ca::load_or_create(Some(("junk", &other.pair.key)), d.path())
            .err()
            .unwrap();
        assert!(err.to_string().contains("CA cert"), "{err}");
    }

    #[test]
    fn certificates_are_signed_by_the_ca_with_their_names() {
        let ca = Ca::generate().unwrap();
        let names = default_server_names(Some("paddock"), &["10.0.2.15".into()]);
        assert_eq!(
            names,
            ["paddock", "10.0.2.15", "localhost", "127.0.0.1", "::1"]
        );
        let server = ca.issue(Kind::Server, &names).unwrap();
        let der = pem_der(&server.cert);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = pem_der(ca.cert_pem());
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        let text = format!("{:?}", sans.value.general_names);
        assert!(
            text.contains("paddock") && text.contains("localhost"),
            "{text}"
        );
        assert!(
            text.contains("[10, 0, 2, 15]") || text.contains("10.0.2.15"),
            "{text}"
        );
        let client = ca.issue(Kind::Client, &[]).unwrap();
        let der = pem_der(&client.cert);
        let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(c.extended_key_usage().unwrap().unwrap().value.client_auth);
        assert!(!c.extended_key_usage().unwrap().unwrap().value.server_auth);
    }

    #[test]
    fn bad_hostnames_are_refused_by_name() {
        let ca = Ca::generate().unwrap();
        let err = ca.issue(Kind::Server, &["bad host!".into()]).err().unwrap();
        assert!(err.to_string().contains("\"bad host!\""), "{err}");
    }

    #[test]
    fn the_server_pair_is_kept_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::generate().unwrap();
        let names = vec!["localhost".to_owned()];
        let a = server_pair(None, &ca, d.path(), &names).unwrap();
        let b = server_pair(None, &ca, d.path(), &names).unwrap();
        assert_eq!(a, b);
        let given = server_pair(Some(("C", "K")), &ca, d.path(), &names).unwrap();
        assert_eq!(given.cert, "C");
        let out = d.path().join("etc");
        install_server(ca.cert_pem(), &a, &out).unwrap();
        for f in ["ca.pem", "server-cert.pem", "server-key.pem"] {
            assert!(out.join(f).is_file(), "{f}");
        }
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use base64::Engine as _;
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    }
}
