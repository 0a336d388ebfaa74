//! Workload identity federation (reference §1.4): the client credentials grant with a token
//! someone else issued as `client_assertion`, typically the Kubernetes service-account token
//! the kubelet projects into the pod (`AZURE_FEDERATED_TOKEN_FILE`). Entra trusts it through
//! a federated identity credential on the app registration (issuer, subject, audience).
//!
//! The file is read again for **every** request: the kubelet rotates it (hourly by default)
//! and an old copy gets AADSTS700024. Nothing is kept between requests, so there is nothing
//! for SIGHUP to reload. The assertion is a secret: it is handed to the endpoint as the text
//! to scrub, never logged, and an unreadable file is reported by its name only.
//!
//! The request itself is [`TokenEndpoint::post_assertion`], which the certificate and
//! managed identity kinds use too.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::endpoint::TokenEndpoint;
use super::error::TokenError;
use super::source::{AccessToken, FetchFuture, TokenSource};

/// A token file larger than this is not a service-account token (they are 1-2 KiB).
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Gets tokens with the client credentials grant and a federated token file as assertion.
pub struct WorkloadIdentitySource {
    endpoint: TokenEndpoint,
    client_id: String,
    scope: String,
    token_file: PathBuf,
}

impl fmt::Debug for WorkloadIdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentitySource")
            .field("token_url", &self.endpoint.token_url())
            .field("client_id", &self.client_id)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentitySource {
    /// A source for app `client_id` at `endpoint`. The file is not read here: every fetch
    /// reads it.
    pub fn new(
        endpoint: TokenEndpoint,
        client_id: String,
        scope: String,
        token_file: PathBuf,
    ) -> Self {
        WorkloadIdentitySource {
            endpoint,
            client_id,
            scope,
            token_file,
        }
    }

    async fn fetch_once(&self) -> Result<AccessToken, TokenError> {
        let assertion = read_token_file(&self.token_file)?;
        let grant = self
            .endpoint
            .post_assertion(&self.client_id, &self.scope, &assertion, &self.describe())
            .await?;
        Ok(grant.access())
    }
}

impl TokenSource for WorkloadIdentitySource {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(self.fetch_once())
    }

    fn describe(&self) -> String {
        format!(
            "workload identity (token file {}) for app {} {}",
            self.token_file.display(),
            self.client_id,
            self.endpoint.place()
        )
    }
}

/// Reads the federated token file, trimmed. Unreadable, empty or oversized:
/// [`TokenError::Credential`] naming the file, never quoting it.
pub fn read_token_file(path: &Path) -> Result<SecretString, TokenError> {
    let unusable = |why: String| {
        TokenError::Credential(format!("federated token file {}: {why}", path.display()))
    };
    let size = std::fs::metadata(path)
        .map_err(|e| unusable(format!("cannot be read: {e}")))?
        .len();
    if size > MAX_TOKEN_FILE {
        return Err(unusable(format!(
            "is {size} bytes, larger than a token can be ({} KiB)",
            MAX_TOKEN_FILE / 1024
        )));
    }
    let text = std::fs::read(path).map_err(|e| unusable(format!("cannot be read: {e}")))?;
    let text = String::from_utf8(text).map_err(|e| {
        let mut bytes = e.into_bytes();
        secrecy::zeroize::Zeroize::zeroize(&mut bytes);
        unusable("is not UTF-8 text".into())
    })?;
    let secret = SecretString::from(text);
    let trimmed = secret.expose_secret().trim();
    if trimmed.is_empty() {
        return Err(unusable(
            "is empty (the token is projected by the kubelet: is the service account's \
             azure.workload.identity/use label on the pod?)"
                .into(),
        ));
    }
    Ok(SecretString::from(trimmed.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ASSERTION: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL29pZGMifQ.c2lnbmF0dXJl";

    fn source(url: &str, file: &Path) -> WorkloadIdentitySource {
        let endpoint = TokenEndpoint::new(url, &[], Duration::from_secs(5)).unwrap();
        WorkloadIdentitySource::new(
            endpoint,
            "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee".into(),
            "https://outlook.office365.com/.default".into(),
            file.to_path_buf(),
        )
    }

    #[test]
    fn the_form_is_a_jwt_bearer_client_credentials_request() {
        let form = crate::token::endpoint::assertion_form(
            "app",
            "https://outlook.office365.com/.default",
            "a.b.c",
        );
        assert_eq!(
            form,
            [
                ("client_id", "app"),
                ("scope", "https://outlook.office365.com/.default"),
                ("grant_type", "client_credentials"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
                ),
                ("client_assertion", "a.b.c"),
            ]
        );
    }

    #[test]
    fn the_file_is_trimmed_and_read_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("  {ASSERTION}\n")).unwrap();
        assert_eq!(read_token_file(&file).unwrap().expose_secret(), ASSERTION);
        std::fs::write(&file, "rotated.token.value\n").unwrap();
        assert_eq!(
            read_token_file(&file).unwrap().expose_secret(),
            "rotated.token.value"
        );
    }

    #[test]
    fn unusable_files_are_named_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing-token");
        let e = read_token_file(&missing).unwrap_err();
        assert!(matches!(e, TokenError::Credential(_)), "{e:?}");
        assert!(e.is_config());
        assert!(e.to_string().contains("missing-token"), "{e}");
        assert!(e.to_string().contains("cannot be read"), "{e}");

        let empty = dir.path().join("empty-token");
        std::fs::write(&empty, " \n").unwrap();
        let e = read_token_file(&empty).unwrap_err();
        assert!(e.to_string().contains("empty-token"), "{e}");
        assert!(e.to_string().contains("is empty"), "{e}");

        let big = dir.path().join("big-token");
        std::fs::write(&big, format!("{ASSERTION}{}", "x".repeat(70 * 1024))).unwrap();
        let e = read_token_file(&big).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        assert!(!format!("{e} {e:?}").contains("eyJ"), "{e:?}");

        let binary = dir.path().join("binary-token");
        std::fs::write(&binary, [b'e', b'y', b'J', 0xff, 0xfe]).unwrap();
        let e = read_token_file(&binary).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[tokio::test]
    async fn an_unreadable_file_fails_the_fetch_before_any_request() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gone");
        // Port 9 on loopback: nothing listens, and the file check comes first anyway.
        let source = source("https://127.0.0.1:9/tid/oauth2/v2.0/token", &file);
        let e = source.fetch().await.unwrap_err();
        assert!(matches!(e, TokenError::Credential(_)), "{e:?}");
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    }

    /// An endpoint that quotes the assertion back (URL-encoded, in an OAuth error): the
    /// error keeps the rest of what it said, never the assertion. Not JWT-shaped, so only
    /// the secret scrubbing can catch it.
    #[tokio::test]
    async fn an_echoed_assertion_is_scrubbed_from_the_error() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        crate::tls::install_crypto_provider();
        let assertion = "opaque~Assertion+Value/with=odd&chars";
        let encoded = crate::token::scrub::form_encode(assertion);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = Vec::new();
            while !String::from_utf8_lossy(&got).contains("client_assertion=") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "request ended early");
                got.extend_from_slice(&buf[..n]);
            }
            let body = serde_json::json!({
                "error": "invalid_request",
                "error_description": format!("AADSTS90014: bad form: client_assertion={encoded} raw {assertion}"),
                "error_codes": [90014],
            })
            .to_string();
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        });
        let endpoint = TokenEndpoint::new(
            &format!("http://{addr}/tid/oauth2/v2.0/token"),
            &[],
            Duration::from_secs(5),
        )
        .unwrap();
        let e = endpoint
            .post_assertion(
                "app",
                "https://outlook.office365.com/.default",
                &SecretString::from(assertion),
                "test",
            )
            .await
            .unwrap_err();
        server.await.unwrap();
        let shown = format!("{e} {e:?}");
        assert!(shown.contains("AADSTS90014: bad form"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        for piece in ["opaque", "Assertion", "odd%26chars"] {
            assert!(!shown.contains(piece), "{piece} leaked: {shown}");
        }
    }

    #[test]
    fn describe_names_file_app_and_tenant() {
        crate::tls::install_crypto_provider();
        let file = PathBuf::from("/var/run/secrets/azure/tokens/azure-identity-token");
        let source = source(
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
            &file,
        );
        assert_eq!(
            source.describe(),
            "workload identity (token file /var/run/secrets/azure/tokens/azure-identity-token) \
             for app aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee in tenant contoso.onmicrosoft.com"
        );
        assert!(format!("{source:?}").contains("azure-identity-token"));
    }
}
