//! Certificates and keys for a local cluster, generated in Rust (no openssl, no cfssl).
//!
//! One self-signed CA signs the API server's serving certificate and the client
//! certificates of the admin (`O=system:masters`), the controller manager and the
//! scheduler. A separate ECDSA key pair signs service-account tokens.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its key, as files on disk.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Every file the processes of a local cluster need.
#[derive(Debug, Clone)]
pub struct ClusterPki {
    /// The CA certificate (trusted by clients and used as the client CA).
    pub ca_cert: PathBuf,
    /// Serving certificate of kube-apiserver.
    pub apiserver: CertFiles,
    /// `CN=vworkspace-admin, O=system:masters`.
    pub admin: CertFiles,
    /// `CN=system:kube-controller-manager`.
    pub controller_manager: CertFiles,
    /// `CN=system:kube-scheduler`.
    pub scheduler: CertFiles,
    /// Private key that signs service-account tokens.
    pub service_account_key: PathBuf,
    /// Its public half, for verification.
    pub service_account_pub: PathBuf,
}

impl ClusterPki {
    /// Generate a fresh PKI into `dir` (created if missing).
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, contents: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };

        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = dn("vworkspace-local-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA")?;
        let ca_cert_path = write("ca.crt", &ca_cert.pem())?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |name: &str, cn: &str, org: Option<&str>, server: bool| -> Result<CertFiles> {
            let key = KeyPair::generate().with_context(|| format!("generating key for {cn}"))?;
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(cn, org);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            if server {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                params.subject_alt_names = server_sans()?;
            } else {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            let cert = params
                .signed_by(&key, &issuer)
                .with_context(|| format!("signing the certificate for {cn}"))?;
            Ok(CertFiles {
                cert: write(&format!("{name}.crt"), &cert.pem())?,
                key: write(&format!("{name}.key"), &key.serialize_pem())?,
            })
        };

        let apiserver = leaf("apiserver", "kube-apiserver", None, true)?;
        let admin = leaf("admin", "vworkspace-admin", Some("system:masters"), false)?;
        let controller_manager = leaf(
            "controller-manager",
            "system:kube-controller-manager",
            None,
            false,
        )?;
        let scheduler = leaf("scheduler", "system:kube-scheduler", None, false)?;

        let sa = KeyPair::generate().context("generating the service-account key")?;
        Ok(Self {
            ca_cert: ca_cert_path,
            apiserver,
            admin,
            controller_manager,
            scheduler,
            service_account_key: write("sa.key", &sa.serialize_pem())?,
            service_account_pub: write("sa.pub", &sa.public_key_pem())?,
        })
    }
}

fn dn(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    if let Some(org) = org {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

/// Names a client may use for the API server: loopback, and the in-cluster names
/// and first service IP that pods see.
fn server_sans() -> Result<Vec<SanType>> {
    let mut sans = vec![
        SanType::IpAddress([127, 0, 0, 1].into()),
        SanType::IpAddress([10, 0, 0, 1].into()),
    ];
    for name in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        sans.push(SanType::DnsName(name.try_into().context("DNS SAN")?));
    }
    Ok(sans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_pem_files() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("vws-pki-{}", std::process::id()));
        let pki = ClusterPki::generate(&dir)?;
        let admin = std::fs::read_to_string(&pki.admin.cert)?;
        assert!(admin.starts_with("-----BEGIN CERTIFICATE-----"));
        let sa_pub = std::fs::read_to_string(&pki.service_account_pub)?;
        assert!(sa_pub.starts_with("-----BEGIN PUBLIC KEY-----"));
        let key = std::fs::read_to_string(&pki.apiserver.key)?;
        assert!(key.contains("PRIVATE KEY"));
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }
}
