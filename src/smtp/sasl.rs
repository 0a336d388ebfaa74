//! SASL for inbound `AUTH` (RFC 4954): decoding the PLAIN (RFC 4616) and LOGIN exchanges.
//!
//! Pure: base64 lines in, a user name and a password out. The session drives the dialog
//! (`334` prompts, the initial response, `*` to cancel) and checks the password against the
//! users file; this module only reads what the client sent. A password is kept as bytes in a
//! [`SecretSlice`] (zeroed on drop, redacted in `Debug`), and no error ever carries the
//! client's input.

use std::fmt;

use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use base64::Engine as _;
use secrecy::zeroize::Zeroize;
use secrecy::SecretSlice;

/// `334` prompt for the LOGIN user name: base64 of `Username:`.
pub const LOGIN_USERNAME_PROMPT: &str = "VXNlcm5hbWU6";
/// `334` prompt for the LOGIN password: base64 of `Password:`.
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// What a client authenticates with. `Debug` shows the user and never the password.
pub struct Credentials {
    pub user: String,
    pub password: SecretSlice<u8>,
}

impl Credentials {
    /// Builds credentials from the two decoded lines of a LOGIN exchange: the user name must
    /// be UTF-8 and not empty; the password stays bytes. Both inputs are zeroed.
    pub fn from_login(user: Vec<u8>, mut password: Vec<u8>) -> Result<Credentials, SaslError> {
        // An exact-size copy (a `Vec` with spare room would be reallocated, unzeroed, on the
        // way into a box), then the original zeroed.
        let secret = SecretSlice::from(password.as_slice().to_vec());
        password.zeroize();
        let password = secret;
        let user = match String::from_utf8(user) {
            Ok(u) => u,
            Err(e) => {
                e.into_bytes().zeroize();
                return Err(SaslError::Malformed("the user name is not UTF-8"));
            }
        };
        if user.is_empty() {
            return Err(SaslError::Malformed("the user name is empty"));
        }
        Ok(Credentials { user, password })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"[REDACTED]")
            .finish()
    }
}

/// Why a SASL exchange failed. `Display` is in plain words and never includes the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*`: it gives up the exchange (RFC 4954: answer `501`).
    Cancelled,
    /// The line is not base64.
    BadBase64,
    /// The decoded data is not what the mechanism expects; says what is wrong.
    Malformed(&'static str),
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaslError::Cancelled => f.write_str("authentication cancelled by the client"),
            SaslError::BadBase64 => f.write_str("the authentication data is not valid base64"),
            SaslError::Malformed(what) => write!(f, "malformed authentication data: {what}"),
        }
    }
}

impl std::error::Error for SaslError {}

/// One base64 line of a SASL exchange, decoded. Surrounding whitespace (and the line's CRLF)
/// is ignored; `=` alone is the empty response (RFC 4954 §4); `*` is the client cancelling.
/// Padding may be left out.
pub fn decode_line(b64_line: &str) -> Result<Vec<u8>, SaslError> {
    let line = b64_line.trim();
    match line {
        "*" => Err(SaslError::Cancelled),
        "=" => Ok(Vec::new()),
        _ => STANDARD_PAD_INDIFFERENT
            .decode(line)
            .map_err(|_| SaslError::BadBase64),
    }
}

/// PLAIN (RFC 4616): base64 of `authzid NUL authcid NUL passwd`. An authzid that is
/// non-empty and differs from authcid is refused (no user may act for another); authcid must
/// be non-empty UTF-8; passwd must be non-empty and stays bytes.
pub fn decode_plain(b64_line: &str) -> Result<Credentials, SaslError> {
    let mut data = decode_line(b64_line)?;
    let result = split_plain(&data);
    data.zeroize();
    result
}

/// Splits decoded PLAIN data (the caller zeroes `data`).
fn split_plain(data: &[u8]) -> Result<Credentials, SaslError> {
    if data.is_empty() {
        return Err(SaslError::Malformed(
            "PLAIN needs a user name and a password",
        ));
    }
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "PLAIN data must be authzid, NUL, user name, NUL, password",
        ));
    };
    if passwd.contains(&0) {
        return Err(SaslError::Malformed("the password contains a NUL byte"));
    }
    let user = std::str::from_utf8(authcid)
        .map_err(|_| SaslError::Malformed("the user name is not UTF-8"))?;
    if user.is_empty() {
        return Err(SaslError::Malformed("the user name is empty"));
    }
    if passwd.is_empty() {
        return Err(SaslError::Malformed("the password is empty"));
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::Malformed(
            "the authorization identity differs from the user name (acting for another user \
             is not supported)",
        ));
    }
    Ok(Credentials {
        user: user.to_string(),
        password: SecretSlice::from(passwd.to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn b64(data: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(data)
    }

    #[test]
    fn login_prompts_are_the_base64_of_their_words() {
        assert_eq!(decode_line(LOGIN_USERNAME_PROMPT).unwrap(), b"Username:");
        assert_eq!(decode_line(LOGIN_PASSWORD_PROMPT).unwrap(), b"Password:");
    }

    #[test]
    fn plain_with_and_without_authzid() {
        let c = decode_plain(&b64(b"\0app\0s3cret")).unwrap();
        assert_eq!(c.user, "app");
        assert_eq!(c.password.expose_secret(), b"s3cret");

        let c = decode_plain(&b64(b"app\0app\0pa ss\xff:word")).unwrap();
        assert_eq!(c.user, "app");
        assert_eq!(c.password.expose_secret(), b"pa ss\xff:word");

        let c = decode_plain(&format!("  {}\r\n", b64("\0jürgen\0x".as_bytes()))).unwrap();
        assert_eq!(c.user, "jürgen");
    }

    #[test]
    fn plain_refuses_each_malformed_form() {
        let cases: [(&[u8], &str); 7] = [
            (b"app\0s3cret", "authzid, NUL"),
            (b"no nul at all", "authzid, NUL"),
            (b"\0\0s3cret", "user name is empty"),
            (b"\0app\0", "password is empty"),
            (b"\0app\0s3\0cret", "contains a NUL"),
            (b"\0\xff\xfe\0s3cret", "not UTF-8"),
            (b"admin\0app\0s3cret", "authorization identity differs"),
        ];
        for (data, want) in cases {
            let e = decode_plain(&b64(data)).unwrap_err();
            assert!(matches!(e, SaslError::Malformed(_)), "{data:?}: {e:?}");
            assert!(e.to_string().contains(want), "{data:?}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn plain_empty_response_bad_base64_and_cancel() {
        assert_eq!(
            decode_plain("=").unwrap_err(),
            SaslError::Malformed("PLAIN needs a user name and a password")
        );
        assert_eq!(
            decode_plain("").unwrap_err(),
            decode_plain("=").unwrap_err()
        );
        assert_eq!(
            decode_plain("not base64!").unwrap_err(),
            SaslError::BadBase64
        );
        assert_eq!(decode_plain(" * ").unwrap_err(), SaslError::Cancelled);
    }

    #[test]
    fn decode_line_paths() {
        assert_eq!(decode_line("=").unwrap(), b"");
        assert_eq!(decode_line(" =\r\n").unwrap(), b"");
        assert_eq!(decode_line("").unwrap(), b"");
        assert_eq!(decode_line("YXBw").unwrap(), b"app");
        assert_eq!(decode_line("\tYXBwMQ==  ").unwrap(), b"app1");
        assert_eq!(
            decode_line("YXBwMQ").unwrap(),
            b"app1",
            "padding may be left out"
        );
        assert_eq!(decode_line("*").unwrap_err(), SaslError::Cancelled);
        assert_eq!(decode_line("*\r\n").unwrap_err(), SaslError::Cancelled);
        for bad in ["YX Bw", "YXBw*", "Y", "YXBw====", "=YXBw", "**"] {
            assert_eq!(
                decode_line(bad).unwrap_err(),
                SaslError::BadBase64,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn login_credentials_need_a_utf8_user() {
        let c = Credentials::from_login(b"app".to_vec(), b"\xffpw".to_vec()).unwrap();
        assert_eq!(c.user, "app");
        assert_eq!(c.password.expose_secret(), b"\xffpw");
        assert_eq!(
            Credentials::from_login(b"\xff".to_vec(), b"pw".to_vec()).unwrap_err(),
            SaslError::Malformed("the user name is not UTF-8")
        );
        assert_eq!(
            Credentials::from_login(Vec::new(), b"pw".to_vec()).unwrap_err(),
            SaslError::Malformed("the user name is empty")
        );
    }

    #[test]
    fn debug_and_errors_never_show_the_password() {
        let c = decode_plain(&b64(b"\0app\0hunter2-secret")).unwrap();
        let debug = format!("{c:?}");
        assert!(
            debug.contains("app") && debug.contains("REDACTED"),
            "{debug}"
        );
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains(&b64(b"hunter2-secret")[..8]), "{debug}");

        let input = b64(b"other\0app\0hunter2-secret");
        for e in [
            decode_plain(&input).unwrap_err(),
            decode_plain("aHVudGVyMi1zZWNyZXQ!").unwrap_err(),
        ] {
            let text = format!("{e} {e:?}");
            assert!(
                !text.contains("hunter2") && !text.contains("aHVudGVy"),
                "{text}"
            );
        }
        for e in [
            SaslError::Cancelled,
            SaslError::BadBase64,
            SaslError::Malformed("x"),
        ] {
            assert!(!e.to_string().is_empty());
        }
    }
}
