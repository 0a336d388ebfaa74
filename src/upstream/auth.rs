//! SMTP AUTH XOAUTH2 (reference §3): the one place the access token goes on the wire. After
//! `535 5.7.3` one fresh token is fetched and tried once more; a second refusal is reported
//! as configuration. Whatever the server says back is scrubbed of the credential before it
//! can reach a log or an error.

use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite};

use super::error::{classify_auth, Stage, UpstreamError, Verdict};
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

/// AUTH XOAUTH2 in the one-line form (reference §3.2). Returns the token that worked.
pub(super) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut SmtpStream<S>,
    mailbox: &str,
    tokens: &TokenCache,
) -> Result<AccessToken, UpstreamError> {
    let mut token = tokens.get().await?;
    let mut refreshed = false;
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
        if verdict == Verdict::Transient && reply.has_status("5.7.3") && !refreshed {
            tracing::info!(
                reply = %reply,
                "upstream refused the cached token; fetching a fresh one and trying once more"
            );
            tokens.invalidate(&token);
            token = tokens.get().await?;
            refreshed = true;
            continue;
        }
        return Err(UpstreamError::Auth {
            reply,
            after_refresh: refreshed,
        });
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
        let err = authenticate(&mut s, "relay@x.example", &tokens)
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
