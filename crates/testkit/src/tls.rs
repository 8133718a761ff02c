//! Certificates made by the test: a CA, a server certificate for `localhost`/`127.0.0.1` and a
//! client certificate, all signed by that CA, written as PEM files into a directory.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// PEM files of a throwaway PKI.
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestCerts {
    /// Generates and writes the files into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<TestCerts> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "fleet test CA");
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;

        let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose, cn: &str| {
            let mut p = CertificateParams::new(names)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![purpose];
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &ca, &ca_key)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key_pem) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "localhost",
        )?;
        let (client_pem, client_key_pem) = leaf(
            vec!["fleet-client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "fleet-client",
        )?;

        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let p = dir.join(name);
            std::fs::write(&p, text)?;
            Ok(p)
        };
        Ok(TestCerts {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server.pem", &server_pem)?,
            server_key: write("server-key.pem", &server_key_pem)?,
            client_cert: write("client.pem", &client_pem)?,
            client_key: write("client-key.pem", &client_key_pem)?,
        })
    }

    /// A `tls { }` block for [`crate::NatsServer::start_with_config`]; `verify` demands client
    /// certificates signed by the CA.
    pub fn nats_tls_block(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {verify}\n}}",
            self.server_cert.display().to_string(),
            self.server_key.display().to_string(),
            self.ca.display().to_string(),
        )
    }
}

/// A fresh user nkey: (public key `U...`, seed `SU...`).
pub fn user_nkey() -> (String, String) {
    let kp = nkeys::KeyPair::new_user();
    (
        kp.public_key(),
        kp.seed().expect("a new key pair has a seed"),
    )
}
