//! Reading the certificate credential's files: a PEM certificate, its RSA private key (in the
//! same file or its own) and, for an encrypted key, the passphrase file. Parsing is pure
//! ([`parse`]); [`load`] only reads the files first.
//!
//! Keys accepted: PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY`, and PKCS#8 `ENCRYPTED
//! PRIVATE KEY` (PBES2: PBKDF2 or scrypt with AES-CBC, what `openssl pkcs8 -topk8` writes, or
//! with 3DES-CBC, what OpenSSL 3.0's `req -keyout` writes by default).
//! OpenSSL's old encrypted PKCS#1 (`Proc-Type: 4,ENCRYPTED`) is refused with the command that
//! converts it. The key must be RSA (Entra signs and checks RSA assertions) and must belong
//! to the certificate. Every error names the file and the configuration key at fault
//! ([`Fault`]), never a byte of the key or the passphrase.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use pkcs8::der::Decode as _;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

use std::path::PathBuf;

use super::jwt::AssertionAlgorithm;
use super::jwt::Thumbprints;

const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const ED25519: &str = "1.3.101.112";
const ED448: &str = "1.3.101.113";
const RSA_PSS: &str = "1.2.840.113549.1.1.10";
/// Largest file we read: certificate chains are a few KiB.
const MAX_FILE: u64 = 1024 * 1024;

/// A certificate credential's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM certificate, with its private key too unless `key` is set.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1, or encrypted PKCS#8).
    pub key: Option<PathBuf>,
    /// File holding the passphrase of an encrypted key.
    pub passphrase: Option<PathBuf>,
    pub algorithm: AssertionAlgorithm,
}

/// Which input is at fault: the configuration key to name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAt {
    Certificate,
    Key,
    Passphrase,
}

impl FaultAt {
    /// The configuration key (`account.<name>`).
    pub fn key_name(self) -> &'static str {
        match self {
            FaultAt::Certificate => "client_certificate_file",
            FaultAt::Key => "client_key_file",
            FaultAt::Passphrase => "client_key_passphrase_file",
        }
    }
}

/// Why the files cannot be used. The message names the file, never its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub at: FaultAt,
    pub message: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn fault(at: FaultAt, message: String) -> Fault {
    Fault { at, message }
}

/// A usable certificate credential. `Debug` shows the thumbprint, never the key.
pub struct Loaded {
    /// The certificate's DER bytes (what the thumbprints are of).
    pub der: Vec<u8>,
    pub thumbprints: Thumbprints,
    pub key: RsaKeyPair,
    pub not_after: SystemTime,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("thumbprint", &self.thumbprints.portal())
            .field("key", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// The file contents [`parse`] works on, and the names to put in errors.
pub struct Inputs<'a> {
    pub certificate_name: &'a str,
    pub certificate: &'a [u8],
    /// `None`: the key is in the certificate file.
    pub key: Option<(&'a str, &'a [u8])>,
    pub passphrase: Option<(&'a str, &'a SecretString)>,
}

/// Reads the files named in `files` and parses them.
pub fn load(files: &CertificateFiles) -> Result<Loaded, Fault> {
    let certificate = read(&files.certificate, FaultAt::Certificate)?;
    let key = match &files.key {
        Some(p) => Some(read(p, FaultAt::Key)?),
        None => None,
    };
    let passphrase = match &files.passphrase {
        Some(p) => Some(
            super::client_secret::read_secret_file(p).map_err(|m| fault(FaultAt::Passphrase, m))?,
        ),
        None => None,
    };
    let certificate_name = files.certificate.display().to_string();
    let key_name = files.key.as_ref().map(|p| p.display().to_string());
    let passphrase_name = files.passphrase.as_ref().map(|p| p.display().to_string());
    parse(&Inputs {
        certificate_name: &certificate_name,
        certificate: &certificate,
        key: key_name
            .as_deref()
            .zip(key.as_deref().map(|k| k.as_slice())),
        passphrase: passphrase_name.as_deref().zip(passphrase.as_ref()),
    })
}

fn read(path: &Path, at: FaultAt) -> Result<Zeroizing<Vec<u8>>, Fault> {
    let too_big = std::fs::metadata(path)
        .map(|m| m.len() > MAX_FILE)
        .unwrap_or(false);
    if too_big {
        return Err(fault(
            at,
            format!("{} is larger than 1 MiB: not a PEM file", path.display()),
        ));
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| fault(at, format!("cannot read {}: {e}", path.display())))
}

/// Parses the certificate and its key, and checks that they belong together. Pure.
pub fn parse(inputs: &Inputs<'_>) -> Result<Loaded, Fault> {
    let cert_name = inputs.certificate_name;
    let cert_blocks = pem_blocks(inputs.certificate, cert_name, FaultAt::Certificate)?;
    let Some(cert) = cert_blocks.iter().find(|b| b.tag() == "CERTIFICATE") else {
        return Err(fault(
            FaultAt::Certificate,
            format!(
                "{cert_name} holds no PEM CERTIFICATE block (a DER .cer file converts with \
                 `openssl x509 -inform der -in cert.cer -out cert.pem`)"
            ),
        ));
    };
    let der = cert.contents().to_vec();
    let (not_after, public_key) = certificate_facts(&der, cert_name)?;

    let (key_name, at, key_blocks) = match inputs.key {
        Some((name, bytes)) => (name, FaultAt::Key, pem_blocks(bytes, name, FaultAt::Key)?),
        None => (cert_name, FaultAt::Certificate, cert_blocks.clone()),
    };
    let Some(block) = key_blocks.iter().find(|b| b.tag().ends_with("PRIVATE KEY")) else {
        return Err(fault(
            at,
            match inputs.key {
                Some(_) => format!("{key_name} holds no PEM private key block"),
                None => format!(
                    "{cert_name} holds no private key: add the key to the file, or name its \
                     file with client_key_file"
                ),
            },
        ));
    };
    let key = private_key(block, key_name, at, inputs.passphrase)?;
    let key_public = key.public_key().as_ref();
    if key_public != public_key.as_slice() {
        return Err(fault(
            at,
            format!(
                "the private key in {key_name} does not belong to the certificate in {cert_name}"
            ),
        ));
    }
    Ok(Loaded {
        thumbprints: Thumbprints::of(&der),
        der,
        key,
        not_after,
    })
}

fn pem_blocks(bytes: &[u8], name: &str, at: FaultAt) -> Result<Vec<pem::Pem>, Fault> {
    match pem::parse_many(bytes) {
        Ok(blocks) if !blocks.is_empty() => Ok(blocks),
        Ok(_) => Err(fault(
            at,
            format!("{name} is not a PEM file (no BEGIN line)"),
        )),
        Err(_) => Err(fault(at, format!("{name} is not a valid PEM file"))),
    }
}

/// The certificate's notAfter and its RSA public key (RFC 8017 DER, as aws-lc-rs encodes it).
fn certificate_facts(der: &[u8], name: &str) -> Result<(SystemTime, Vec<u8>), Fault> {
    let bad = |why: &str| fault(FaultAt::Certificate, format!("{name}: {why}"));
    let cert = x509_cert::Certificate::from_der(der)
        .map_err(|_| bad("the CERTIFICATE block is not a valid X.509 certificate"))?;
    let tbs = &cert.tbs_certificate;
    let not_after = tbs.validity.not_after.to_system_time();
    let spki = &tbs.subject_public_key_info;
    let oid = spki.algorithm.oid.to_string();
    if oid != RSA_ENCRYPTION {
        return Err(bad(&format!(
            "the certificate's key is {}, not RSA: Entra's certificate credentials need an \
             RSA key (make one with `openssl req -x509 -newkey rsa:2048 ...`)",
            key_type(&oid)
        )));
    }
    let raw = spki
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad("the certificate's public key is malformed"))?;
    let public = aws_lc_rs::rsa::PublicKey::from_der(raw)
        .map_err(|_| bad("the certificate's RSA public key is malformed"))?;
    Ok((not_after, public.as_ref().to_vec()))
}

fn key_type(oid: &str) -> &'static str {
    match oid {
        EC_PUBLIC_KEY => "an EC key",
        ED25519 => "an Ed25519 key",
        ED448 => "an Ed448 key",
        RSA_PSS => "an RSA-PSS-only key",
        _ => "an unsupported key type",
    }
}

fn not_rsa(name: &str, at: FaultAt, what: &str) -> Fault {
    fault(
        at,
        format!(
            "{name} holds {what}, not an RSA key: Entra's certificate credentials need an RSA \
             key (make one with `openssl req -x509 -newkey rsa:2048 ...`)"
        ),
    )
}

fn private_key(
    block: &pem::Pem,
    name: &str,
    at: FaultAt,
    passphrase: Option<(&str, &SecretString)>,
) -> Result<RsaKeyPair, Fault> {
    match block.tag() {
        "PRIVATE KEY" => pkcs8_rsa(block.contents(), name, at),
        "RSA PRIVATE KEY" => {
            let encrypted = block
                .headers()
                .get("Proc-Type")
                .is_some_and(|v| v.contains("ENCRYPTED"));
            if encrypted {
                return Err(fault(
                    at,
                    format!(
                        "{name} holds an OpenSSL-style encrypted RSA key (Proc-Type: 4,ENCRYPTED), \
                         which is not supported: convert it to encrypted PKCS#8 with \
                         `openssl pkcs8 -topk8 -v2 aes-256-cbc -in old.key -out new.key`"
                    ),
                ));
            }
            RsaKeyPair::from_der(block.contents()).map_err(|e| rejected(name, at, &e))
        }
        "ENCRYPTED PRIVATE KEY" => {
            let Some((pass_name, pass)) = passphrase else {
                return Err(fault(
                    at,
                    format!(
                        "{name} holds an encrypted key: name the file holding its passphrase \
                         with client_key_passphrase_file"
                    ),
                ));
            };
            let info =
                pkcs8::EncryptedPrivateKeyInfo::from_der(block.contents()).map_err(|_| {
                    fault(
                        at,
                        format!(
                            "{name}: the ENCRYPTED PRIVATE KEY block is damaged or uses an \
                             encryption scheme that is not supported: re-encrypt it with \
                             `openssl pkcs8 -topk8 -v2 aes-256-cbc -in {name} -out new.key`"
                        ),
                    )
                })?;
            let plain = info
                .decrypt(pass.expose_secret().as_bytes())
                .map_err(|e| match e {
                    pkcs8::Error::EncryptedPrivateKey(
                        pkcs8::pkcs5::Error::UnsupportedAlgorithm { .. },
                    ) => fault(
                        at,
                        format!(
                            "{name} is encrypted with a scheme that is not supported: re-encrypt \
                             it with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in {name} -out new.key`"
                        ),
                    ),
                    _ => wrong_passphrase(name, pass_name),
                })?;
            // A wrong passphrase can pass the padding check and give garbage: say so.
            pkcs8::PrivateKeyInfo::try_from(plain.as_bytes())
                .map_err(|_| wrong_passphrase(name, pass_name))?;
            pkcs8_rsa(plain.as_bytes(), name, at)
        }
        "EC PRIVATE KEY" => Err(not_rsa(name, at, "an EC key")),
        "OPENSSH PRIVATE KEY" => Err(not_rsa(name, at, "an OpenSSH key")),
        "DSA PRIVATE KEY" => Err(not_rsa(name, at, "a DSA key")),
        other => Err(fault(
            at,
            format!("{name}: a `{other}` block is not a supported private key"),
        )),
    }
}

fn wrong_passphrase(key_name: &str, pass_name: &str) -> Fault {
    fault(
        FaultAt::Passphrase,
        format!("cannot decrypt {key_name} with the passphrase in {pass_name}: wrong passphrase"),
    )
}

fn pkcs8_rsa(der: &[u8], name: &str, at: FaultAt) -> Result<RsaKeyPair, Fault> {
    let info = pkcs8::PrivateKeyInfo::try_from(der)
        .map_err(|_| fault(at, format!("{name}: the PRIVATE KEY block is malformed")))?;
    let oid = info.algorithm.oid.to_string();
    if oid != RSA_ENCRYPTION {
        return Err(not_rsa(name, at, key_type(&oid)));
    }
    RsaKeyPair::from_pkcs8(der).map_err(|e| rejected(name, at, &e))
}

fn rejected(name: &str, at: FaultAt, e: &aws_lc_rs::error::KeyRejected) -> Fault {
    // KeyRejected's text is a fixed reason ("InvalidEncoding", "TooSmall"), never key bytes.
    fault(
        at,
        format!("{name}: the RSA key is not usable ({e}); 2048 to 8192 bits are supported"),
    )
}

#[cfg(test)]
#[path = "certificate_files_tests.rs"]
mod tests;
