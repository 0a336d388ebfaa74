//! SMTP AUTH XOAUTH2 (reference §3): the one place the access token goes on the wire. After
//! `535 5.7.3` (or High Volume Email's `501 5.5.127`, token will expire soon) one fresh token
//! is fetched and tried once more; a second refusal is reported as configuration. On HVE a
//! cached token with less than the endpoint's minimum life left is replaced before AUTH
//! (`endpoint.rs`, `TokenCache::get_with_at_least`); if even the fresh one is that short, it
//! counts as the one fresh token. Whatever the server says back is
//! scrubbed of the credential before it can reach a log or an error.

use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite};

use super::endpoint::{min_token_life_at_auth, Endpoint};
use super::error::{classify_auth, worth_a_fresh_token, Stage, UpstreamError, Verdict};
use super::stream::SmtpStream;
use crate::token::scrub::scrub_jwts;
use crate::token::{AccessToken, TokenCache};
use crate::wire::{xoauth2, Reply};

/// A malformed reply to AUTH is not quoted at all: it may echo the credential, and an excerpt
/// cut anywhere could hold part of it where redaction would not find the whole.
fn hide_echo(e: UpstreamError) -> UpstreamError {
    match e {
        UpstreamError::Protocol { stage, .. } => UpstreamError::Protocol {
            stage,
            detail: "malformed reply to AUTH (not quoted: it may echo the credential)".into(),
        },
        other => other,
    }
}

/// Removes `secrets` and any JWT-shaped string (an access token, ours or not) from a reply.
fn redact(reply: &mut Reply, secrets: &[&str]) {
    for line in &mut reply.lines {
        for secret in secrets {
            if !secret.is_empty() && line.contains(secret) {
                *line = line.replace(secret, "<redacted>");
            }
        }
        if line.contains("eyJ") {
            *line = scrub_jwts(line);
        }
    }
}

/// The refusal as an error of `endpoint` (whose advice names its own permissions).
fn refused(endpoint: Endpoint, reply: Reply, after_refresh: bool) -> UpstreamError {
    match endpoint {
        Endpoint::Standard => UpstreamError::Auth {
            reply,
            after_refresh,
        },
        Endpoint::Hve => UpstreamError::HveAuth {
            reply,
            after_refresh,
        },
    }
}

/// AUTH XOAUTH2 in the one-line form (reference §3.2). Returns the token that worked.
pub(super) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut SmtpStream<S>,
    mailbox: &str,
    tokens: &TokenCache,
    endpoint: Endpoint,
) -> Result<AccessToken, UpstreamError> {
    let min = min_token_life_at_auth(endpoint);
    let mut token = tokens.get_with_at_least(min).await?;
    // Still too short: it was fetched just now and a fresh one is no better, so it counts as
    // the one fresh token (a 5.5.127 then is final).
    let mut refreshed = token.remaining() < min;
    loop {
        let blob = xoauth2::encode(mailbox, token.expose());
        let mut reply = s
            .command(
                &format!("AUTH XOAUTH2 {}", blob.expose_secret()),
                Stage::Auth,
            )
            .await
            .map_err(hide_echo)?;
        if reply.code == 334 {
            // An error challenge (Google-style JSON); answer with an empty line to get the
            // final reply (reference §3.4).
            reply = s.command("", Stage::Auth).await.map_err(hide_echo)?;
        }
        // A server that echoes the credential must not get it into our logs or replies.
        redact(&mut reply, &[blob.expose_secret(), token.expose()]);
        drop(blob);
        if reply.code == 235 {
            return Ok(token);
        }
        let verdict = classify_auth(&reply, refreshed);
        if verdict == Verdict::Transient && worth_a_fresh_token(&reply) && !refreshed {
            tracing::info!(
                reply = %reply,
                "upstream refused the cached token; fetching a fresh one and trying once more"
            );
            tokens.invalidate(&token);
            token = tokens.get_with_at_least(min).await?;
            refreshed = true;
            continue;
        }
        return Err(refused(endpoint, reply, refreshed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn echoed_credentials_are_redacted() {
        let mut r = Reply {
            code: 535,
            lines: vec!["5.7.3 you sent dXNlcj1h and tok".into()],
        };
        redact(&mut r, &["dXNlcj1h", "tok"]);
        assert_eq!(r.lines[0], "5.7.3 you sent <redacted> and <redacted>");
        let mut r = Reply {
            code: 535,
            lines: vec![
                "5.7.3 bad eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.eyJhdWQiOiJ4eHh4eHgifQ.".into(),
            ],
        };
        redact(&mut r, &["unrelated"]);
        assert_eq!(r.lines[0], "5.7.3 bad <redacted token>");
    }

    /// A source that hands out one fixed token.
    struct OneToken;

    impl crate::token::TokenSource for OneToken {
        fn fetch(&self) -> crate::token::FetchFuture<'_> {
            Box::pin(async {
                Ok(AccessToken::new(
                    secrecy::SecretString::from("tok-SECRET-0123456789"),
                    3600,
                ))
            })
        }

        fn describe(&self) -> String {
            "one token".into()
        }
    }

    /// A source that hands out `tok-1`, `tok-2`, ... each living `lifetime` seconds.
    struct Numbered {
        lifetime: u64,
        n: std::sync::atomic::AtomicU64,
    }

    impl crate::token::TokenSource for Numbered {
        fn fetch(&self) -> crate::token::FetchFuture<'_> {
            let n = self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let lifetime = self.lifetime;
            Box::pin(async move {
                Ok(AccessToken::new(
                    secrecy::SecretString::from(format!("tok-{n}")),
                    lifetime,
                ))
            })
        }

        fn describe(&self) -> String {
            "numbered tokens".into()
        }
    }

    fn numbered(lifetime: u64) -> TokenCache {
        let source = Numbered {
            lifetime,
            n: std::sync::atomic::AtomicU64::new(0),
        };
        TokenCache::new(Arc::new(source), Duration::from_secs(900))
    }

    /// Answers each AUTH line with the next of `replies`; returns the tokens it was sent.
    async fn auth_server(
        mut server: tokio::io::DuplexStream,
        replies: Vec<&'static str>,
    ) -> Vec<String> {
        let mut seen = Vec::new();
        for reply in replies {
            let mut line = Vec::new();
            loop {
                let mut b = [0u8; 1];
                if server.read(&mut b).await.unwrap() == 0 {
                    return seen;
                }
                line.push(b[0]);
                if line.ends_with(b"\r\n") {
                    break;
                }
            }
            let text = String::from_utf8(line).unwrap();
            let blob = text.trim_end().strip_prefix("AUTH XOAUTH2 ").unwrap();
            let (_user, token) = xoauth2::decode(blob).unwrap();
            seen.push(token);
            server
                .write_all(format!("{reply}\r\n").as_bytes())
                .await
                .unwrap();
        }
        seen
    }

    async fn run_auth(
        tokens: &TokenCache,
        endpoint: Endpoint,
        replies: Vec<&'static str>,
    ) -> (Result<AccessToken, UpstreamError>, Vec<String>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(auth_server(server, replies));
        let mut s = SmtpStream::new(client, Duration::from_secs(5));
        let result = authenticate(&mut s, "hve@x.example", tokens, endpoint).await;
        drop(s);
        (result, server.await.unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn hve_replaces_a_token_with_less_than_ten_minutes_left_before_auth() {
        let ok = || vec!["235 2.7.0 Authentication successful"];
        // Standard: a token inside its refresh margin is still used as it is.
        let tokens = numbered(3600);
        tokens.get().await.unwrap();
        tokio::time::advance(Duration::from_secs(55 * 60)).await;
        let (r, sent) = run_auth(&tokens, Endpoint::Standard, ok()).await;
        assert_eq!(r.unwrap().expose(), "tok-1");
        assert_eq!(sent, vec!["tok-1"]);
        assert_eq!(tokens.fetch_count(), 1);
        // HVE: 5 minutes left is too little; a fresh token goes out instead.
        let (r, sent) = run_auth(&tokens, Endpoint::Hve, ok()).await;
        assert_eq!(r.unwrap().expose(), "tok-2");
        assert_eq!(sent, vec!["tok-2"]);
        assert_eq!(tokens.fetch_count(), 2);
        // A token with most of its life left is not replaced.
        let (r, _) = run_auth(&tokens, Endpoint::Hve, ok()).await;
        assert_eq!(r.unwrap().expose(), "tok-2");
        assert_eq!(tokens.fetch_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn token_will_expire_soon_gets_one_fresh_token() {
        let tokens = numbered(3600);
        let (r, sent) = run_auth(
            &tokens,
            Endpoint::Hve,
            vec![
                "501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon",
                "235 2.7.0 Authentication successful",
            ],
        )
        .await;
        assert_eq!(r.unwrap().expose(), "tok-2");
        assert_eq!(sent, vec!["tok-1", "tok-2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_that_never_live_ten_minutes_end_in_a_clear_configuration_error() {
        // Nine-minute tokens: replaced once before AUTH (the fresh one is no better), refused,
        // and not fetched a third time.
        let tokens = numbered(9 * 60);
        let soon = "501 5.5.127 Invalid XOAUTH2 auth data - Token will expire soon";
        let (r, sent) = run_auth(&tokens, Endpoint::Hve, vec![soon, soon]).await;
        let err = r.unwrap_err();
        assert_eq!(sent, vec!["tok-2"]);
        assert_eq!(tokens.fetch_count(), 2);
        assert!(matches!(
            err,
            UpstreamError::HveAuth {
                after_refresh: true,
                ..
            }
        ));
        assert_eq!(err.verdict(), Verdict::Config);
        let advice = err.hold_advice("hve@x.example");
        assert!(advice.contains("at least 10 minutes"), "{advice}");
        // The same refusal on the standard endpoint is retried once as well, and reported as
        // the standard endpoint's.
        let tokens = numbered(3600);
        let (r, sent) = run_auth(&tokens, Endpoint::Standard, vec![soon, soon]).await;
        assert_eq!(sent, vec!["tok-1", "tok-2"]);
        assert!(matches!(
            r.unwrap_err(),
            UpstreamError::Auth {
                after_refresh: true,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn a_malformed_auth_reply_that_echoes_the_credential_is_not_quoted() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let tokens = TokenCache::new(Arc::new(OneToken), Duration::from_secs(900));
        let echo = tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let n = server.read(&mut buf).await.unwrap();
            let line = String::from_utf8_lossy(&buf[..n]).to_string();
            let blob = line
                .trim_end()
                .strip_prefix("AUTH XOAUTH2 ")
                .expect("an AUTH line")
                .to_string();
            // Not a reply (no code): the whole line would be quoted in a protocol error.
            server
                .write_all(format!("you sent {blob}\r\n").as_bytes())
                .await
                .unwrap();
            (server, blob)
        });
        let mut s = SmtpStream::new(client, Duration::from_secs(5));
        let err = authenticate(&mut s, "relay@x.example", &tokens, Endpoint::Standard)
            .await
            .unwrap_err();
        let (_server, blob) = echo.await.unwrap();
        assert!(matches!(
            err,
            UpstreamError::Protocol {
                stage: Stage::Auth,
                ..
            }
        ));
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(&blob[..16]), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
