//! What can go wrong when asking the token endpoint, and what the relay should do about it.
//!
//! The one question every caller asks is "is this our configuration, or the weather?":
//! a configuration error (wrong secret, wrong scope, unknown app) will fail the same way
//! until an admin fixes it, so the relay holds the mailbox and explains the fix; a transient
//! error (network, timeout, HTTP 5xx, 429, `temporarily_unavailable`) is retried with
//! backoff, honouring `Retry-After`. The rules are reference §1.8 ("Classification for the
//! relay"); Microsoft says to branch on `error` and `error_codes`, never on description text.
//!
//! Nothing in here ever holds a secret or a token: descriptions come from the endpoint (first
//! line only) and the client-secret source scrubs its own secret out of them before they land
//! here.

use std::fmt::Write as _;
use std::time::Duration;

use crate::diagnose;

/// A failed attempt to get an access token. `Clone` so the cache can hand one failure to
/// every caller that waited on the same request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The endpoint answered with an OAuth error JSON (`error`, `error_codes`, ...).
    #[error(
        "token endpoint refused the request ({})",
        rejected_detail(*status, error, description, trace_id.as_deref(), correlation_id.as_deref())
    )]
    Rejected {
        status: u16,
        /// OAuth error class, e.g. `invalid_client`.
        error: String,
        /// `error_codes`, e.g. `[7000215]`.
        codes: Vec<u32>,
        /// First line of `error_description` only (no trace/correlation/timestamp lines).
        description: String,
        /// `trace_id` (boxed to keep `TokenError` small: clippy's `result_large_err`).
        trace_id: Option<Box<str>>,
        /// `correlation_id`. Log both ids: Microsoft support asks for them.
        correlation_id: Option<Box<str>>,
        retry_after: Option<Duration>,
    },
    /// The endpoint answered with an HTTP error whose body is not an OAuth error JSON (a proxy
    /// page, a 404 from a wrong authority URL, a gateway's 502).
    #[error(
        "token endpoint answered HTTP {status} without an OAuth error{}",
        excerpt_suffix(body)
    )]
    Http {
        status: u16,
        /// A short, single-line excerpt of the body (scrubbed of our secret).
        body: String,
        retry_after: Option<Duration>,
    },
    /// The request never got an answer: DNS, connect, TLS handshake, connection reset.
    #[error("cannot reach the token endpoint: {0}")]
    Network(String),
    /// No complete answer within the configured timeout.
    #[error("the token endpoint did not answer in time")]
    Timeout,
    /// A success status with a body we cannot use (not JSON, no `access_token`, bad
    /// `expires_in`). The message never quotes the body: it may hold a token.
    #[error("token endpoint sent an unusable response: {0}")]
    BadResponse(String),
    /// The configured token URL cannot be used at all.
    #[error("token URL {url} is not valid: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The credential itself cannot be used, before any request: a certificate or key that
    /// does not parse, a token file that cannot be read. Names the file and the fault, never
    /// its content.
    #[error("the credential cannot be used: {0}")]
    Credential(String),
}

/// AADSTS codes that mean "too many requests" whatever `error` class they come with.
const THROTTLING_CODES: [u32; 2] = [50196, 90055];

/// OAuth error classes that will not change until someone fixes the configuration.
const CONFIG_ERRORS: [&str; 7] = [
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
    "invalid_resource",
    "invalid_grant",
    "unsupported_grant_type",
    "invalid_request",
];

impl TokenError {
    /// True when retrying without a configuration change cannot help: hold, alert, explain.
    ///
    /// Rules, in order: network, timeout, unusable 2xx body, HTTP 5xx, 408, 429,
    /// `temporarily_unavailable` and AADSTS50196/90055 are transient; the OAuth classes
    /// `invalid_client`, `unauthorized_client`, `invalid_scope`, `invalid_resource`,
    /// `invalid_grant`, `unsupported_grant_type` and `invalid_request` are configuration;
    /// any other 4xx (an unknown OAuth class, `interaction_required`, a 404 from a wrong
    /// authority URL) is configuration too, because repeating the same request gets the same
    /// answer. So is a 3xx (redirects are not followed: the URL is wrong). A bad token URL is
    /// configuration. Exactly one of `is_config` and
    /// `is_transient` is true.
    pub fn is_config(&self) -> bool {
        match self {
            TokenError::Network(_) | TokenError::Timeout | TokenError::BadResponse(_) => false,
            TokenError::InvalidUrl { .. } | TokenError::Credential(_) => true,
            TokenError::Http { status, .. } => !transient_status(*status),
            TokenError::Rejected {
                status,
                error,
                codes,
                ..
            } => {
                if transient_status(*status)
                    || error == "temporarily_unavailable"
                    || codes.iter().any(|c| THROTTLING_CODES.contains(c))
                {
                    return false;
                }
                CONFIG_ERRORS.contains(&error.as_str()) || (400..500).contains(status)
            }
        }
    }

    /// True when the same request may well succeed later: back off (at least
    /// [`retry_after`](Self::retry_after)) and retry.
    pub fn is_transient(&self) -> bool {
        !self.is_config()
    }

    /// The first AADSTS code: from `error_codes`, else parsed from the description.
    pub fn aadsts(&self) -> Option<u32> {
        match self {
            TokenError::Rejected {
                codes, description, ..
            } => codes
                .first()
                .copied()
                .or_else(|| aadsts_in_text(description)),
            _ => None,
        }
    }

    /// How long the endpoint asked us to wait (`Retry-After`), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TokenError::Rejected { retry_after, .. } | TokenError::Http { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The OAuth error class (`invalid_client`, ...), when the endpoint sent one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            TokenError::Rejected { error, .. } if !error.is_empty() => Some(error),
            _ => None,
        }
    }

    /// A plain-language fix for the mistakes we know (reference §1.8), or `None`.
    pub fn advice(&self) -> Option<String> {
        if let Some(code) = self.aadsts() {
            if let Some(advice) = diagnose::aadsts(code) {
                return Some(advice.to_string());
            }
        }
        let advice = match self {
            TokenError::Http { status: 404, .. } => diagnose::token_url_not_found(),
            TokenError::InvalidUrl { .. } => diagnose::token_url_invalid(),
            TokenError::Network(_) | TokenError::Timeout => diagnose::token_unreachable(),
            TokenError::Rejected { error, .. } if error == "invalid_scope" => {
                diagnose::scope_rejected()
            }
            _ => return None,
        };
        Some(advice.to_string())
    }
}

/// HTTP statuses that say "try again later".
fn transient_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// Finds `AADSTS<digits>` in a description.
fn aadsts_in_text(text: &str) -> Option<u32> {
    let start = text.find("AADSTS")? + "AADSTS".len();
    let digits: String = text[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// "HTTP 401 invalid_client, AADSTS7000215: ...; trace id T, correlation id C".
fn rejected_detail(
    status: u16,
    error: &str,
    description: &str,
    trace_id: Option<&str>,
    correlation_id: Option<&str>,
) -> String {
    let mut out = format!("HTTP {status}");
    if !error.is_empty() {
        let _ = write!(out, " {error}");
    }
    if !description.is_empty() {
        let _ = write!(out, ", {description}");
    }
    let mut ids = Vec::new();
    if let Some(t) = trace_id {
        ids.push(format!("trace id {t}"));
    }
    if let Some(c) = correlation_id {
        ids.push(format!("correlation id {c}"));
    }
    if !ids.is_empty() {
        let _ = write!(out, "; {}", ids.join(", "));
    }
    out
}

fn excerpt_suffix(body: &str) -> String {
    if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    }
}

/// First line of an `error_description`, trimmed and bounded (Entra appends trace id,
/// correlation id and timestamp on further lines; we keep those as separate fields).
pub(crate) fn first_line(description: &str, max_chars: usize) -> String {
    let line = description
        .split(['\r', '\n'])
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    truncate_chars(line, max_chars)
}

/// One line, control characters removed, at most `max_chars` characters (plus an ellipsis).
pub(crate) fn single_line_excerpt(text: &str, max_chars: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let collapsed = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_chars(&collapsed, max_chars)
}

fn truncate_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16, error: &str, codes: &[u32]) -> TokenError {
        TokenError::Rejected {
            status,
            error: error.into(),
            codes: codes.to_vec(),
            description: codes
                .first()
                .map(|c| format!("AADSTS{c}: something"))
                .unwrap_or_default(),
            trace_id: Some("trace-1".into()),
            correlation_id: Some("corr-1".into()),
            retry_after: None,
        }
    }

    #[test]
    fn configuration_classes_are_config() {
        let cases: &[(u16, &str, u32)] = &[
            (401, "invalid_client", 7000215),
            (401, "invalid_client", 7000222),
            (400, "unauthorized_client", 700016),
            (400, "invalid_request", 90002),
            (400, "invalid_request", 900023),
            (400, "invalid_scope", 70011),
            (400, "invalid_scope", 1002012),
            (400, "invalid_scope", 700022),
            (400, "invalid_resource", 500011),
            (401, "invalid_client", 7000218),
            (401, "invalid_client", 700025),
            (400, "unauthorized_client", 7000112),
            (400, "invalid_grant", 53003),
            (400, "invalid_request", 50194),
            (400, "unsupported_grant_type", 70003),
            (400, "invalid_request", 900144),
        ];
        for &(status, error, code) in cases {
            let e = rejected(status, error, &[code]);
            assert!(e.is_config(), "{error} {code} should be config");
            assert!(!e.is_transient(), "{error} {code} should not be transient");
            assert_eq!(e.aadsts(), Some(code));
        }
    }

    #[test]
    fn throttling_and_outages_are_transient() {
        let cases = [
            rejected(400, "invalid_request", &[50196]),
            rejected(400, "invalid_request", &[90055]),
            rejected(429, "invalid_request", &[]),
            rejected(400, "temporarily_unavailable", &[]),
            rejected(503, "temporarily_unavailable", &[]),
            rejected(500, "server_error", &[]),
            rejected(500, "invalid_client", &[]),
            TokenError::Http {
                status: 502,
                body: "Bad Gateway".into(),
                retry_after: None,
            },
            TokenError::Http {
                status: 429,
                body: String::new(),
                retry_after: Some(Duration::from_secs(7)),
            },
            TokenError::Network("connection refused".into()),
            TokenError::Timeout,
            TokenError::BadResponse("no access_token".into()),
        ];
        for e in cases {
            assert!(e.is_transient(), "{e} should be transient");
            assert!(!e.is_config(), "{e} should not be config");
        }
    }

    #[test]
    fn other_client_errors_are_config() {
        assert!(rejected(400, "interaction_required", &[50076]).is_config());
        assert!(TokenError::Http {
            status: 404,
            body: "Not Found".into(),
            retry_after: None
        }
        .is_config());
        assert!(TokenError::InvalidUrl {
            url: "x".into(),
            reason: "relative URL without a base".into()
        }
        .is_config());
    }

    #[test]
    fn aadsts_falls_back_to_description() {
        let e = TokenError::Rejected {
            status: 401,
            error: "invalid_client".into(),
            codes: vec![],
            description: "AADSTS7000215: Invalid client secret provided.".into(),
            trace_id: None,
            correlation_id: None,
            retry_after: None,
        };
        assert_eq!(e.aadsts(), Some(7000215));
        assert_eq!(TokenError::Timeout.aadsts(), None);
    }

    #[test]
    fn advice_for_known_codes() {
        let advice = rejected(401, "invalid_client", &[7000215])
            .advice()
            .unwrap();
        assert!(advice.contains("secret ID"));
        assert!(advice.contains("Value"));
        for code in [
            7000215, 7000222, 700016, 90002, 900023, 70011, 1002012, 700022, 500011, 7000218,
            700025, 7000112, 53003, 50194, 50196, 90055, 700027, 50012, 700024, 700021, 50027,
        ] {
            assert!(
                crate::diagnose::aadsts(code).is_some(),
                "no advice for {code}"
            );
        }
        assert_eq!(crate::diagnose::aadsts(1), None);
        for unreachable in [TokenError::Timeout, TokenError::Network("dns error".into())] {
            let advice = unreachable
                .advice()
                .expect("advice for an unreachable endpoint");
            assert!(advice.contains("443"), "{advice}");
            assert!(advice.contains("HTTPS_PROXY"), "{advice}");
        }
    }

    #[test]
    fn retry_after_is_reported() {
        let e = TokenError::Rejected {
            status: 429,
            error: "temporarily_unavailable".into(),
            codes: vec![90055],
            description: String::new(),
            trace_id: None,
            correlation_id: None,
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(30)));
        assert_eq!(TokenError::Timeout.retry_after(), None);
    }

    #[test]
    fn display_of_rejected() {
        let e = TokenError::Rejected {
            status: 401,
            error: "invalid_client".into(),
            codes: vec![7000215],
            description: "AADSTS7000215: Invalid client secret provided.".into(),
            trace_id: Some("t-1".into()),
            correlation_id: Some("c-2".into()),
            retry_after: None,
        };
        assert_eq!(
            e.to_string(),
            "token endpoint refused the request (HTTP 401 invalid_client, AADSTS7000215: \
             Invalid client secret provided.; trace id t-1, correlation id c-2)"
        );
    }

    #[test]
    fn first_line_drops_trace_lines() {
        let d =
            "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x\r\nCorrelation ID: y";
        assert_eq!(
            first_line(d, 300),
            "AADSTS7000215: Invalid client secret provided."
        );
        assert_eq!(first_line("abcdef", 3), "abc…");
        assert_eq!(
            single_line_excerpt("<html>\n  <b>x</b>\r\n", 100),
            "<html> <b>x</b>"
        );
    }
}
