//! Certificates generated on the fly: cluster CA, front-proxy CA, serving and client
//! certificates, service-account keys. ECDSA P-256, which Go and rustls both accept.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::error::{IoContext, Result};

/// A certificate authority that can issue leaf certificates.
#[derive(Debug)]
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub common_name: String,
    pub organizations: Vec<String>,
    /// DNS names and IP addresses (parsed as IPs when they are).
    pub sans: Vec<String>,
    pub server: bool,
    pub client: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Leaf {
    fn new(common_name: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: common_name.to_owned(),
            organizations: Vec::new(),
            sans: Vec::new(),
            server: false,
            client: false,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
        }
    }

    /// A TLS server certificate for `sans`.
    pub fn server(common_name: &str, sans: &[&str]) -> Self {
        Self { sans: sans.iter().map(|s| (*s).to_owned()).collect(), server: true, ..Self::new(common_name) }
    }

    /// A TLS client certificate; Kubernetes reads the user from CN and groups from O.
    pub fn client(common_name: &str, organizations: &[&str]) -> Self {
        Self {
            organizations: organizations.iter().map(|s| (*s).to_owned()).collect(),
            client: true,
            ..Self::new(common_name)
        }
    }
}

/// A PEM certificate and its PEM (PKCS#8) private key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `DIR/NAME.crt` and `DIR/NAME.key`.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&crt, &self.cert_pem).ctx(|| format!("write {}", crt.display()))?;
        std::fs::write(&key, &self.key_pem).ctx(|| format!("write {}", key.display()))?;
        Ok((crt, key))
    }
}

impl Ca {
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        Ok(Self { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)? })
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate (not its key) to `DIR/NAME.crt`.
    pub fn write_cert(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, self.cert_pem()).ctx(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    pub fn issue(&self, leaf: &Leaf) -> Result<Issued> {
        let mut params = CertificateParams::new(leaf.sans.clone())?;
        params.distinguished_name.push(DnType::CommonName, leaf.common_name.as_str());
        for org in &leaf.organizations {
            params.distinguished_name.push(DnType::OrganizationName, org.as_str());
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        if leaf.server {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A key pair for signing service-account tokens: (private PEM, public PEM).
pub fn service_account_key() -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

/// Standard base64 (for an APIService's caBundle).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
