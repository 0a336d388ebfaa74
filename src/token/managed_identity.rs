//! Managed identity as a federated credential of the app (reference §1.5): ask the machine's
//! Instance Metadata Service (IMDS) for a token for the federation audience
//! (`api://AzureADTokenExchange`), then send that token as `client_assertion` in the
//! workload identity request (§1.4) for the *app's* client ID. The app holds
//! `SMTP.SendAsApp`; the user-assigned identity is only the proof of who we are.
//!
//! IMDS is plain HTTP on `169.254.169.254` (link-local: it never leaves the host) and wants
//! the header `Metadata: true`; it is reached directly, never through a proxy. Its numbers
//! arrive as strings (`"expires_in": "86399"`): the shared parser takes both forms.
//!
//! The IMDS token is kept and used again until five minutes before it expires (IMDS issues
//! them for about 24 hours): it saves one request per Entra token, and IMDS throttles callers
//! that ask too often. It is dropped as soon as Entra refuses an assertion, so the next try
//! fetches a fresh one. It is a secret like any token: scrubbed, never logged.
//!
//! IMDS failures are explained in plain words ([`explain_imds_error`], pure): an identity
//! IMDS does not know, a missing `Metadata` header (a proxy in the way), and no answer at all
//! (not an Azure VM, or IMDS unreachable).

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::Url;
use secrecy::SecretString;

use super::endpoint::TokenEndpoint;
use super::error::TokenError;
use super::source::{AccessToken, FetchFuture, TokenSource};
use crate::sync::Lock as _;
use crate::tls::TlsSetupError;

/// The IMDS API version MSAL and Azure.Identity use for tokens (reference §1.5).
pub const IMDS_API_VERSION: &str = "2018-02-01";
/// An IMDS token is used again while it has more than this left.
const IMDS_TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// Where and what to ask IMDS.
#[derive(Debug, Clone)]
pub struct ImdsSettings {
    /// IMDS's token URL without query, e.g. `http://169.254.169.254/metadata/identity/oauth2/token`.
    pub endpoint: String,
    /// Client ID of the user-assigned identity; `None` asks for the system-assigned one.
    pub identity_client_id: Option<String>,
    /// The resource asked for: the cloud's federation audience.
    pub audience: String,
}

/// Gets tokens with an IMDS token as federated client assertion.
pub struct ManagedIdentitySource {
    imds: TokenEndpoint,
    /// The full IMDS URL with its query, or why it cannot be built.
    imds_url: Result<String, TokenError>,
    identity_client_id: Option<String>,
    entra: TokenEndpoint,
    client_id: String,
    scope: String,
    /// The last IMDS token, used again until shortly before it expires.
    assertion: Mutex<Option<AccessToken>>,
}

impl fmt::Debug for ManagedIdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedIdentitySource")
            .field("imds", &self.imds.token_url())
            .field("identity_client_id", &self.identity_client_id)
            .field("token_url", &self.entra.token_url())
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl ManagedIdentitySource {
    /// A source for app `client_id` at `entra`, asking `imds`. Builds IMDS's HTTP client
    /// (no proxy; `timeout` as for Entra). A malformed IMDS URL is reported by every fetch.
    pub fn new(
        entra: TokenEndpoint,
        client_id: String,
        scope: String,
        imds: ImdsSettings,
        timeout: Duration,
    ) -> Result<Self, TlsSetupError> {
        let imds_url = imds_url(
            &imds.endpoint,
            &imds.audience,
            imds.identity_client_id.as_deref(),
        );
        Ok(ManagedIdentitySource {
            imds: TokenEndpoint::direct(&imds.endpoint, &[], timeout)?,
            imds_url,
            identity_client_id: imds.identity_client_id,
            entra,
            client_id,
            scope,
            assertion: Mutex::new(None),
        })
    }

    /// Who we are to IMDS, in words.
    fn identity(&self) -> String {
        match &self.identity_client_id {
            Some(id) => format!("user-assigned identity {id}"),
            None => "system-assigned identity".to_string(),
        }
    }

    /// The IMDS token: the kept one if it has more than [`IMDS_TOKEN_MARGIN`] left, else a
    /// new one.
    async fn imds_token(&self) -> Result<AccessToken, TokenError> {
        if let Some(kept) = self.assertion.locked().clone() {
            if kept.remaining() > IMDS_TOKEN_MARGIN {
                return Ok(kept);
            }
        }
        let url = self.imds_url.clone()?;
        let grant = self
            .imds
            .get(&url, &[("Metadata", "true")], &self.describe())
            .await
            .map_err(|e| explain_imds_error(e, self.imds.token_url(), &self.identity()))?;
        let token = grant.access();
        *self.assertion.locked() = Some(token.clone());
        Ok(token)
    }

    async fn fetch_once(&self) -> Result<AccessToken, TokenError> {
        let assertion = self.imds_token().await?;
        let secret = SecretString::from(assertion.expose().to_string());
        let result = self
            .entra
            .post_assertion(&self.client_id, &self.scope, &secret, &self.describe())
            .await;
        if matches!(&result, Err(e) if e.is_config()) {
            // Refused (stale, mismatched): ask IMDS again next time.
            *self.assertion.locked() = None;
        }
        Ok(result?.access())
    }
}

impl TokenSource for ManagedIdentitySource {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(self.fetch_once())
    }

    fn describe(&self) -> String {
        let who = self
            .identity_client_id
            .as_deref()
            .unwrap_or("system-assigned");
        format!(
            "managed identity {who} as federated credential of app {} {}",
            self.client_id,
            self.entra.place()
        )
    }
}

/// `{endpoint}?api-version=2018-02-01&resource={audience}[&client_id={id}]`. Pure.
pub fn imds_url(
    endpoint: &str,
    audience: &str,
    identity_client_id: Option<&str>,
) -> Result<String, TokenError> {
    let mut url = Url::parse(endpoint).map_err(|e| TokenError::InvalidUrl {
        url: endpoint.to_string(),
        reason: e.to_string(),
    })?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("api-version", IMDS_API_VERSION)
            .append_pair("resource", audience);
        if let Some(id) = identity_client_id {
            query.append_pair("client_id", id);
        }
    }
    Ok(url.into())
}

/// An IMDS failure in plain words. `endpoint` is IMDS's URL, `identity` who we asked for
/// ("user-assigned identity …"). IMDS errors carry no AADSTS code, so its `error_description`
/// is what there is to go on. Pure.
pub fn explain_imds_error(error: TokenError, endpoint: &str, identity: &str) -> TokenError {
    let unreachable = |what: String| {
        TokenError::Network(format!(
            "the managed identity endpoint (IMDS) {endpoint} {what}: not on an Azure VM, or \
             IMDS unreachable (it is reached directly, never through a proxy)"
        ))
    };
    match error {
        TokenError::Network(reason) => unreachable(format!("cannot be reached ({reason})")),
        TokenError::Timeout => unreachable("did not answer in time".to_string()),
        TokenError::Rejected {
            status,
            error,
            description,
            ..
        } if status == 400 || status == 404 => {
            let said = if description.is_empty() {
                error.clone()
            } else {
                format!("{error}: {description}")
            };
            let lower = said.to_ascii_lowercase();
            let advice = if lower.contains("identity not found") {
                format!(
                    "this machine has no {identity}. Attach it to the VM (portal: the VM > \
                     Security > Identity > User assigned; or az vm identity assign \
                     --identities <identity resource id>), or fix \
                     account.managed_identity_client_id (the identity's Client ID, not its \
                     Object ID)"
                )
            } else if lower.contains("metadata") {
                "the Metadata: true header did not reach IMDS: something between the relay and \
                 169.254.169.254 (a proxy) removed it"
                    .to_string()
            } else {
                format!("IMDS refused the request for the {identity}")
            };
            TokenError::Credential(format!(
                "managed identity endpoint (IMDS) {endpoint} answered HTTP {status} ({said}): \
                 {advice}"
            ))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMDS: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

    fn rejected(status: u16, error: &str, description: &str) -> TokenError {
        TokenError::Rejected {
            status,
            error: error.into(),
            codes: vec![],
            description: description.into(),
            trace_id: None,
            correlation_id: None,
            retry_after: None,
        }
    }

    #[test]
    fn the_imds_url_asks_for_the_federation_audience() {
        assert_eq!(
            imds_url(IMDS, "api://AzureADTokenExchange", None).unwrap(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01\
             &resource=api%3A%2F%2FAzureADTokenExchange"
        );
        assert_eq!(
            imds_url(
                IMDS,
                "api://AzureADTokenExchangeUSGov",
                Some("12345678-aaaa-bbbb-cccc-1234567890ab")
            )
            .unwrap(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01\
             &resource=api%3A%2F%2FAzureADTokenExchangeUSGov\
             &client_id=12345678-aaaa-bbbb-cccc-1234567890ab"
        );
        let e = imds_url("169.254.169.254", "api://AzureADTokenExchange", None).unwrap_err();
        assert!(matches!(e, TokenError::InvalidUrl { .. }), "{e:?}");
    }

    #[test]
    fn identity_not_found_is_explained() {
        let e = explain_imds_error(
            rejected(400, "invalid_request", "Identity not found"),
            IMDS,
            "user-assigned identity 1234",
        );
        assert!(matches!(e, TokenError::Credential(_)), "{e:?}");
        assert!(e.is_config());
        let text = e.to_string();
        assert!(text.contains("HTTP 400"), "{text}");
        assert!(text.contains("Identity not found"), "{text}");
        assert!(text.contains("no user-assigned identity 1234"), "{text}");
        assert!(text.contains("az vm identity assign"), "{text}");
    }

    #[test]
    fn a_missing_metadata_header_is_explained() {
        let e = explain_imds_error(
            rejected(
                400,
                "invalid_request",
                "Required metadata header not specified",
            ),
            IMDS,
            "system-assigned identity",
        );
        assert!(e.to_string().contains("Metadata: true header"), "{e}");
        assert!(e.to_string().contains("proxy"), "{e}");
    }

    #[test]
    fn no_answer_means_not_on_azure() {
        for error in [
            TokenError::Network("connection refused".into()),
            TokenError::Timeout,
        ] {
            let e = explain_imds_error(error, IMDS, "system-assigned identity");
            assert!(matches!(e, TokenError::Network(_)), "{e:?}");
            assert!(e.is_transient());
            let text = e.to_string();
            assert!(
                text.contains("not on an Azure VM, or IMDS unreachable"),
                "{text}"
            );
            assert!(text.contains("169.254.169.254"), "{text}");
        }
        // Other failures (IMDS busy) are left as they are: transient.
        let busy = TokenError::Http {
            status: 503,
            body: String::new(),
            retry_after: None,
        };
        assert_eq!(explain_imds_error(busy.clone(), IMDS, "x"), busy);
    }

    #[test]
    fn describe_names_the_identity_and_the_app() {
        crate::tls::install_crypto_provider();
        let imds = |id: Option<&str>| ImdsSettings {
            endpoint: IMDS.into(),
            identity_client_id: id.map(str::to_string),
            audience: "api://AzureADTokenExchange".into(),
        };
        let source = |id: Option<&str>| {
            let entra = TokenEndpoint::new(
                "https://login.microsoftonline.com/tid/oauth2/v2.0/token",
                &[],
                Duration::from_secs(5),
            )
            .unwrap();
            let scope = "https://outlook.office365.com/.default".to_string();
            ManagedIdentitySource::new(entra, "app-1".into(), scope, imds(id), Duration::ZERO)
                .unwrap()
        };
        let s = source(Some("mi-1"));
        assert_eq!(
            s.describe(),
            "managed identity mi-1 as federated credential of app app-1 in tenant tid"
        );
        let s = source(None);
        assert_eq!(
            s.describe(),
            "managed identity system-assigned as federated credential of app app-1 in tenant tid"
        );
    }
}
