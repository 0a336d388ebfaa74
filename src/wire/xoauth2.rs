//! The SASL XOAUTH2 initial client response (reference §3.1): base64 (standard alphabet,
//! padded, one line) of `user=<mailbox>^Aauth=Bearer <token>^A^A`.
//!
//! The encoded string is a credential: whoever holds it can send as the mailbox for the
//! token's lifetime. It must never be logged, put into an error, or shown by `Debug`.

use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use base64::Engine as _;
use secrecy::SecretString;

/// Encodes the initial response for `user` with `token`: a secret (its `Debug` is redacted),
/// exposed only to write it on the wire.
pub fn encode(user: &str, token: &str) -> SecretString {
    SecretString::from(STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01")))
}

/// Decodes an initial response (padding optional, surrounding whitespace ignored) into
/// `(user, token)`; `None` for anything that is not exactly that shape with a Bearer token.
pub fn decode(blob: &str) -> Option<(String, String)> {
    let raw = STANDARD_PAD_INDIFFERENT.decode(blob.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let body = text.strip_suffix("\x01\x01")?;
    let (user, auth) = body.split_once('\x01')?;
    let user = user.strip_prefix("user=")?;
    let auth = auth.strip_prefix("auth=")?;
    let (scheme, token) = auth.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Bearer") || user.is_empty() || token.is_empty() {
        return None;
    }
    Some((user.to_string(), token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn matches_microsofts_vector() {
        // Reference §3.1, from Microsoft's documentation.
        let secret = encode(
            "test@contoso.onmicrosoft.com",
            "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA",
        );
        assert!(!format!("{secret:?}").contains("dXNl"), "Debug is redacted");
        let blob = secret.expose_secret();
        assert_eq!(
            blob,
            "dXNlcj10ZXN0QGNvbnRvc28ub25taWNyb3NvZnQuY29tAWF1dGg9QmVhcmVyIEV3QkFBbDNCQUFVRkZwVUFvN0ozVmUwYmpMQldaV0NjbFJDM0VvQUEBAQ=="
        );
        assert_eq!(
            decode(blob),
            Some((
                "test@contoso.onmicrosoft.com".into(),
                "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA".into()
            ))
        );
    }

    #[test]
    fn decode_refuses_other_shapes() {
        assert_eq!(decode("bm90IHhvYXV0aDI="), None); // "not xoauth2"
        assert_eq!(decode("abc"), None);
        assert_eq!(decode("not base64!"), None);
        assert_eq!(
            decode(&STANDARD.encode("user=a\x01auth=Bearer t\x01")),
            None
        );
        assert_eq!(
            decode(&STANDARD.encode("user=a\x01auth=Basic x\x01\x01")),
            None
        );
        assert_eq!(
            decode(&STANDARD.encode("user=\x01auth=Bearer x\x01\x01")),
            None
        );
        let unpadded = encode("a@b", "tok")
            .expose_secret()
            .trim_end_matches('=')
            .to_string();
        assert_eq!(decode(&unpadded), Some(("a@b".into(), "tok".into())));
    }
}
