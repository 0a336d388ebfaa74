use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;

use super::*;

/// A self-signed certificate and its key (PKCS#8 PEM), generated once per process.
pub(crate) struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

fn generate(alg: &'static rcgen::SignatureAlgorithm) -> Pair {
    let key = rcgen::KeyPair::generate_for(alg).expect("key generation");
    let mut params = rcgen::CertificateParams::new(vec!["relay.test".into()]).unwrap();
    params.not_after = rcgen::date_time_ymd(2040, 1, 2);
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}

fn rsa() -> &'static Pair {
    static P: OnceLock<Pair> = OnceLock::new();
    P.get_or_init(|| generate(&rcgen::PKCS_RSA_SHA256))
}

fn rsa_other() -> &'static Pair {
    static P: OnceLock<Pair> = OnceLock::new();
    P.get_or_init(|| generate(&rcgen::PKCS_RSA_SHA256))
}

fn ec() -> &'static Pair {
    static P: OnceLock<Pair> = OnceLock::new();
    P.get_or_init(|| generate(&rcgen::PKCS_ECDSA_P256_SHA256))
}

fn pkcs1_pem(pair: &Pair) -> String {
    let info = pkcs8::PrivateKeyInfo::try_from(pair.key_der.as_slice()).unwrap();
    pem::encode(&pem::Pem::new("RSA PRIVATE KEY", info.private_key))
}

pub(crate) fn encrypted_pem(key_der: &[u8], passphrase: &str) -> String {
    let info = pkcs8::PrivateKeyInfo::try_from(key_der).unwrap();
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, &[7u8; 16], &[9u8; 16])
            .unwrap();
    let doc = info
        .encrypt_with_params(params, passphrase.as_bytes())
        .unwrap();
    pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", doc.as_bytes()))
}

fn with_key<'a>(cert: &'a str, key: &'a str) -> Inputs<'a> {
    Inputs {
        certificate_name: "/etc/relay/cert.pem",
        certificate: cert.as_bytes(),
        key: Some(("/etc/relay/key.pem", key.as_bytes())),
        passphrase: None,
    }
}

fn fails(inputs: &Inputs<'_>) -> Fault {
    match parse(inputs) {
        Ok(l) => panic!("expected a fault, got {l:?}"),
        Err(f) => f,
    }
}

#[test]
fn pkcs8_key_in_its_own_file() {
    let p = rsa();
    let loaded = parse(&with_key(&p.cert_pem, &p.key_pem)).unwrap();
    let der = pem::parse(&p.cert_pem).unwrap().into_contents();
    assert_eq!(loaded.thumbprints, Thumbprints::of(&der));
    assert_eq!(loaded.der, der);
    let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(2_209_075_200); // 2040-01-02
    assert_eq!(loaded.not_after, expected);
}

#[test]
fn key_in_the_certificate_file_and_pkcs1() {
    let p = rsa();
    let both = format!("{}{}", p.cert_pem, pkcs1_pem(p));
    let loaded = parse(&Inputs {
        certificate_name: "/etc/relay/both.pem",
        certificate: both.as_bytes(),
        key: None,
        passphrase: None,
    })
    .unwrap();
    assert_eq!(
        loaded.thumbprints,
        parse(&with_key(&p.cert_pem, &p.key_pem))
            .unwrap()
            .thumbprints
    );
    // Key first, then the certificate, works too.
    let reversed = format!("{}{}", p.key_pem, p.cert_pem);
    assert!(parse(&Inputs {
        certificate_name: "r.pem",
        certificate: reversed.as_bytes(),
        key: None,
        passphrase: None,
    })
    .is_ok());
}

#[test]
fn a_certificate_without_key_says_where_to_put_it() {
    let p = rsa();
    let f = fails(&Inputs {
        certificate_name: "/etc/relay/cert.pem",
        certificate: p.cert_pem.as_bytes(),
        key: None,
        passphrase: None,
    });
    assert_eq!(f.at, FaultAt::Certificate);
    assert!(f.message.contains("holds no private key"), "{f}");
    assert!(f.message.contains("client_key_file"), "{f}");
}

#[test]
fn encrypted_pkcs8_with_its_passphrase() {
    let p = rsa();
    let enc = encrypted_pem(&p.key_der, "correct horse");
    let good = SecretString::from("correct horse");
    let mut inputs = with_key(&p.cert_pem, &enc);
    inputs.passphrase = Some(("/etc/relay/pass", &good));
    assert!(parse(&inputs).is_ok());

    let wrong = SecretString::from("battery staple");
    inputs.passphrase = Some(("/etc/relay/pass", &wrong));
    let f = fails(&inputs);
    assert_eq!(f.at, FaultAt::Passphrase);
    assert!(f.message.contains("/etc/relay/pass"), "{f}");
    assert!(f.message.contains("wrong passphrase"), "{f}");
    assert!(!f.message.contains("battery"), "{f}");

    inputs.passphrase = None;
    let f = fails(&inputs);
    assert_eq!(f.at, FaultAt::Key);
    assert!(f.message.contains("client_key_passphrase_file"), "{f}");
}

#[test]
fn old_openssl_encrypted_pkcs1_is_refused_with_the_conversion() {
    let p = rsa();
    let mut block = pem::Pem::new("RSA PRIVATE KEY", vec![1, 2, 3]);
    block.headers_mut().add("Proc-Type", "4,ENCRYPTED").unwrap();
    block
        .headers_mut()
        .add("DEK-Info", "AES-256-CBC,00112233445566778899AABBCCDDEEFF")
        .unwrap();
    let key = pem::encode(&block);
    let f = fails(&with_key(&p.cert_pem, &key));
    assert_eq!(f.at, FaultAt::Key);
    assert!(f.message.contains("openssl pkcs8 -topk8"), "{f}");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let f = fails(&with_key(&rsa().cert_pem, &rsa_other().key_pem));
    assert_eq!(f.at, FaultAt::Key);
    assert!(
        f.message.contains("does not belong to the certificate"),
        "{f}"
    );
    assert!(f.message.contains("/etc/relay/key.pem"), "{f}");
}

#[test]
fn ec_keys_and_certificates_are_refused() {
    let f = fails(&with_key(&rsa().cert_pem, &ec().key_pem));
    assert_eq!(f.at, FaultAt::Key);
    assert!(f.message.contains("an EC key, not an RSA key"), "{f}");

    let sec1 = pem::encode(&pem::Pem::new("EC PRIVATE KEY", vec![0u8; 8]));
    let f = fails(&with_key(&rsa().cert_pem, &sec1));
    assert!(f.message.contains("an EC key"), "{f}");

    let f = fails(&with_key(&ec().cert_pem, &ec().key_pem));
    assert_eq!(f.at, FaultAt::Certificate);
    assert!(f.message.contains("an EC key, not RSA"), "{f}");
}

#[test]
fn garbage_is_named() {
    let f = fails(&with_key("not pem at all", &rsa().key_pem));
    assert_eq!(f.at, FaultAt::Certificate);
    assert!(f.message.contains("/etc/relay/cert.pem"), "{f}");

    let f = fails(&with_key(&rsa().key_pem, &rsa().key_pem));
    assert!(f.message.contains("no PEM CERTIFICATE block"), "{f}");

    let broken = pem::encode(&pem::Pem::new("CERTIFICATE", vec![0x30, 0x03, 1, 2, 3]));
    let f = fails(&with_key(&broken, &rsa().key_pem));
    assert!(f.message.contains("not a valid X.509 certificate"), "{f}");

    let f = fails(&with_key(&rsa().cert_pem, &rsa().cert_pem));
    assert_eq!(f.at, FaultAt::Key);
    assert!(f.message.contains("no PEM private key block"), "{f}");
}

#[test]
fn debug_hides_the_key() {
    let loaded = parse(&with_key(&rsa().cert_pem, &rsa().key_pem)).unwrap();
    let shown = format!("{loaded:?}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(shown.contains(&loaded.thumbprints.portal()), "{shown}");
    assert!(!shown.contains("RsaKeyPair"), "{shown}");
}

#[test]
fn load_reads_files_and_names_the_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let pass = dir.path().join("pass");
    std::fs::write(&cert, &rsa().cert_pem).unwrap();
    std::fs::write(&key, encrypted_pem(&rsa().key_der, "s3cret")).unwrap();
    std::fs::write(&pass, "s3cret\n").unwrap();
    let mut files = CertificateFiles {
        certificate: cert.clone(),
        key: Some(key.clone()),
        passphrase: Some(pass.clone()),
        algorithm: Default::default(),
    };
    assert!(
        load(&files).is_ok(),
        "trailing newline of the passphrase is trimmed"
    );
    files.passphrase = Some(dir.path().join("missing"));
    let f = load(&files).unwrap_err();
    assert_eq!(f.at, FaultAt::Passphrase);
    assert!(f.message.contains("missing"), "{f}");
}

#[test]
fn a_3des_encrypted_key_as_openssl_3_req_writes_it() {
    use pkcs8::pkcs5::pbes2;
    let p = rsa();
    let info = pkcs8::PrivateKeyInfo::try_from(p.key_der.as_slice()).unwrap();
    let params = pbes2::Parameters {
        kdf: pbes2::Pbkdf2Params::hmac_with_sha256(2048, &[1u8; 8])
            .unwrap()
            .into(),
        encryption: pbes2::EncryptionScheme::DesEde3Cbc { iv: &[2u8; 8] },
    };
    let doc = info.encrypt_with_params(params, b"pass phrase").unwrap();
    let enc = pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", doc.as_bytes()));
    let pass = SecretString::from("pass phrase");
    let mut inputs = with_key(&p.cert_pem, &enc);
    inputs.passphrase = Some(("/etc/relay/pass", &pass));
    assert!(parse(&inputs).is_ok());
    // A block that does not parse names the conversion.
    let junk = pem::encode(&pem::Pem::new("ENCRYPTED PRIVATE KEY", vec![0x30, 0x00]));
    let mut inputs = with_key(&p.cert_pem, &junk);
    inputs.passphrase = Some(("/etc/relay/pass", &pass));
    let f = fails(&inputs);
    assert_eq!(f.at, FaultAt::Key);
    assert!(f.message.contains("openssl pkcs8 -topk8"), "{f}");
}
