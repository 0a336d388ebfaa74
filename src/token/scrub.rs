//! Scrubbing what a token endpoint, or a proxy in front of it, says before any of it goes
//! into an error (and from there into the log, `/readyz`, `check` and a client's `451`).
//! Pure.
//!
//! Why it is more than `replace(secret)`: an endpoint or gateway that echoes the request
//! quotes the form body, where the secret is URL-encoded (`~` is `%7E`, `+` is `%2B`, a
//! space is `+`), perhaps with lower-case hex (`%2b`), perhaps lower-cased as a whole, perhaps
//! JSON-escaped (`/` as `\/`). And it must happen *before* any excerpt is cut: a cut through
//! the secret leaves a piece that no longer matches the whole, and the piece leaks. So every
//! form is matched without regard to ASCII case, on the whole text, and the text is cut
//! afterwards. Access tokens are JWTs: any JWT-shaped string (`eyJ…` base64url segments
//! joined by dots) in an error body is removed too, whoever's it is.

use super::error::TokenError;

/// What replaces a secret.
const REDACTED: &str = "<redacted>";
/// What replaces a JWT-shaped string.
const REDACTED_JWT: &str = "<redacted token>";

/// Removes one secret, in every form it may be quoted in, and JWT-shaped strings.
pub struct Scrubber {
    /// The forms of the secret, lower-cased (ASCII), longest first.
    forms: Vec<String>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber").finish_non_exhaustive()
    }
}

impl Scrubber {
    /// A scrubber for `secret` (an empty secret scrubs JWTs only).
    pub fn new(secret: &str) -> Scrubber {
        if secret.is_empty() {
            return Scrubber { forms: Vec::new() };
        }
        let form = form_encode(secret);
        let mut forms = vec![
            secret.to_string(),
            form.clone(),
            form.replace('+', "%20"),
            // RFC 3986 style (JavaScript's encodeURIComponent): `~` stays as it is.
            form.replace("%7E", "~"),
            form.replace("%7E", "~").replace('+', "%20"),
            json_escape(secret, false),
            json_escape(secret, true),
            // Encoded twice, as a proxy that quotes a URL might.
            form_encode(&form),
        ];
        for f in &mut forms {
            f.make_ascii_lowercase();
        }
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup();
        Scrubber { forms }
    }

    /// `text` without the secret (any form, any ASCII case) and without JWT-shaped strings.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for form in &self.forms {
            out = replace_ignoring_ascii_case(&out, form, REDACTED);
        }
        scrub_jwts(&out)
    }

    /// Every text an error carries, scrubbed.
    pub fn scrub_error(&self, error: TokenError) -> TokenError {
        let scrub = |s: String| self.scrub(&s);
        match error {
            TokenError::Rejected {
                status,
                error,
                codes,
                description,
                trace_id,
                correlation_id,
                retry_after,
            } => TokenError::Rejected {
                status,
                error: scrub(error),
                codes,
                description: scrub(description),
                trace_id: trace_id.map(|s| scrub(s.into()).into_boxed_str()),
                correlation_id: correlation_id.map(|s| scrub(s.into()).into_boxed_str()),
                retry_after,
            },
            TokenError::Http {
                status,
                body,
                retry_after,
            } => TokenError::Http {
                status,
                body: scrub(body),
                retry_after,
            },
            TokenError::Network(s) => TokenError::Network(scrub(s)),
            TokenError::BadResponse(s) => TokenError::BadResponse(scrub(s)),
            TokenError::InvalidUrl { url, reason } => TokenError::InvalidUrl {
                url: scrub(url),
                reason: scrub(reason),
            },
            TokenError::Credential(s) => TokenError::Credential(scrub(s)),
            TokenError::Timeout => TokenError::Timeout,
        }
    }
}

/// `application/x-www-form-urlencoded` encoding, as the request body uses it.
pub(crate) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The secret as a JSON string's content: `"` and `\` escaped, and `/` too when `slash`
/// (optional in JSON, and some encoders take it).
fn json_escape(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '/' if slash => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// Replaces every occurrence of `needle` (lower-case) in `text`, ignoring ASCII case.
/// Lower-casing ASCII keeps every byte offset, so matches map back onto `text` exactly.
fn replace_ignoring_ascii_case(text: &str, needle: &str, with: &str) -> String {
    if needle.is_empty() {
        return text.to_string();
    }
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(pos) = lower[at..].find(needle) {
        out.push_str(&text[at..at + pos]);
        out.push_str(with);
        at += pos + needle.len();
    }
    out.push_str(&text[at..]);
    out
}

/// Shortest header and payload segment we take for a JWT (`{"alg":"…"}` alone is longer).
const MIN_JWT_SEGMENT: usize = 10;

/// `text` with every JWT-shaped string (`eyJ<base64url>.<base64url>[.<base64url>]`) replaced.
pub fn scrub_jwts(text: &str) -> String {
    let b = text.as_bytes();
    let seg = |from: usize| {
        from + b[from..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'-' || **c == b'_')
            .count()
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(pos) = text[i..].find("eyJ") {
        let start = i + pos;
        let head_end = seg(start);
        let is_jwt = head_end - start >= MIN_JWT_SEGMENT && b.get(head_end) == Some(&b'.') && {
            let body_end = seg(head_end + 1);
            body_end - (head_end + 1) >= MIN_JWT_SEGMENT
        };
        if !is_jwt {
            i = start + 3;
            continue;
        }
        let mut end = seg(head_end + 1);
        if b.get(end) == Some(&b'.') {
            end = seg(end + 1);
        }
        out.push_str(&text[copied..start]);
        out.push_str(REDACTED_JWT);
        copied = end;
        i = end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upper case and every character that URL-encodes.
    const SECRET: &str = "Ab3Q~x+Y/z=KLmn0pQ rStUv\"W\\Yz~+/=AbCd";

    #[test]
    fn every_form_of_the_secret_goes() {
        let s = Scrubber::new(SECRET);
        let form = form_encode(SECRET);
        let lower_hex = {
            // %2B -> %2b, letters of the secret untouched.
            let mut out = String::new();
            let mut rest = form.as_str();
            while let Some(p) = rest.find('%') {
                out.push_str(&rest[..p + 1]);
                out.push_str(&rest[p + 1..p + 3].to_ascii_lowercase());
                rest = &rest[p + 3..];
            }
            out + rest
        };
        assert_ne!(lower_hex, form);
        let json = serde_json::to_string(SECRET).unwrap();
        let forms = [
            SECRET.to_string(),
            form.clone(),
            lower_hex,
            form.replace('+', "%20"),
            SECRET.to_lowercase(),
            SECRET.to_uppercase(),
            form.to_lowercase(),
            json[1..json.len() - 1].to_string(),
            json_escape(SECRET, true),
            form_encode(&form),
            form.replace("%7E", "~"),
        ];
        for f in forms {
            let text = format!("echo: client_id=x&client_secret={f}&scope=y");
            let shown = s.scrub(&text);
            assert_eq!(
                shown, "echo: client_id=x&client_secret=<redacted>&scope=y",
                "form {f:?}"
            );
        }
        assert_eq!(form_encode("a b~+"), "a+b%7E%2B");
    }

    #[test]
    fn jwt_shaped_strings_go_and_nothing_else() {
        let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL28ifQ.c2lnbmF0dXJl-_x";
        assert_eq!(
            scrub_jwts(&format!("token {jwt}, then more")),
            "token <redacted token>, then more"
        );
        // Unsigned (two segments and a dot) and at the very end.
        assert_eq!(
            scrub_jwts("x eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0NTY3ODkwIn0."),
            "x <redacted token>"
        );
        for innocent in ["eyJ", "eyJabc.def", "keyJoin.something", "ü eyJ"] {
            assert_eq!(scrub_jwts(innocent), innocent);
        }
        // Scrubber::scrub does both.
        let s = Scrubber::new("");
        assert_eq!(s.scrub(jwt), "<redacted token>");
    }

    #[test]
    fn matching_ignores_case_but_keeps_the_rest_of_the_text() {
        assert_eq!(
            replace_ignoring_ascii_case("Ää ABC abc aBc €", "abc", "_"),
            "Ää _ _ _ €"
        );
    }

    #[test]
    fn scrubbing_errors_covers_every_text() {
        let s = Scrubber::new(SECRET);
        let e = s.scrub_error(TokenError::Rejected {
            status: 400,
            error: SECRET.into(),
            codes: vec![],
            description: form_encode(SECRET),
            trace_id: Some(SECRET.to_lowercase().into()),
            correlation_id: None,
            retry_after: None,
        });
        let shown = format!("{e} {e:?}");
        assert_eq!(shown.matches("<redacted>").count(), 6, "{shown}");
    }
}
