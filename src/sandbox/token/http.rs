//! HTTP/1.1 as the token endpoint speaks it, without I/O: the request head, the form body
//! and `Authorization: Basic` decoded, the token path recognised, and responses encoded.
//!
//! Why hand-written: the endpoint is one route with a form body, and a minimal HTTP/1.1
//! (request line, headers, `Content-Length` body, keep-alive) keeps the sandbox free of a web
//! framework. Decoding follows what OAuth clients send (RFC 6749 §2.3.1 for Basic, with
//! form-encoded id and secret); malformed escapes are kept literally rather than refused.
//! Every response carries `Cache-Control: no-store`, as
//! token responses must (RFC 6749 §5.1).

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

// ---------------------------------------------------------------------------------------
// Form and header decoding (pure)

/// Decodes `application/x-www-form-urlencoded`: `+` is a space, `%XX` a byte. Malformed
/// escapes are kept literally. The first occurrence of a name wins.
pub(crate) fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        out.entry(form_decode(name))
            .or_insert_with(|| form_decode(value));
    }
    out
}

pub(crate) fn form_decode(input: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
pub(crate) fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let i = decoded.iter().position(|&b| b == b':')?;
    Some((form_decode(&decoded[..i]), form_decode(&decoded[i + 1..])))
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub method: String,
    pub target: String,
    /// `HTTP/1.0` closes by default.
    pub http10: bool,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn wants_close(&self) -> bool {
        match self.header("connection") {
            Some(v) if v.eq_ignore_ascii_case("close") => true,
            Some(v) if v.eq_ignore_ascii_case("keep-alive") => false,
            _ => self.http10,
        }
    }
}

/// Parses the head (request line and headers, without the blank line).
pub(crate) fn parse_head(head: &[u8]) -> Result<Head, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().ok_or("empty request")?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err("unsupported HTTP version"),
    };
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers,
    })
}

/// The tenant segment of `/{tenant}/oauth2/v2.0/token`, if that is the path.
pub(crate) fn token_path_tenant(target: &str) -> Option<&str> {
    let path = target.split('?').next().unwrap_or(target);
    let rest = path.strip_prefix('/')?;
    let (tenant, tail) = rest.split_once('/')?;
    (tail == "oauth2/v2.0/token" && !tenant.is_empty()).then_some(tenant)
}

// ---------------------------------------------------------------------------------------
// Responses

/// A response to write: the status, a JSON body, and whether to add `Retry-After: 1`.
pub(crate) struct Response {
    pub status: u16,
    pub body: String,
    pub retry_after: bool,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

pub(super) fn encode_response(resp: &Response, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store, no-cache\r\nPragma: no-cache\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len()
    );
    if resp.retry_after {
        out.push_str("Retry-After: 1\r\n");
    }
    out.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    out.push_str(&resp.body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form(b"a=1&scope=https%3A%2F%2Fx%2F.default&s=a+b%7E&bad=%zz%4&a=2&flag");
        assert_eq!(f["a"], "1");
        assert_eq!(f["scope"], "https://x/.default");
        assert_eq!(f["s"], "a b~");
        assert_eq!(f["bad"], "%zz%4");
        assert_eq!(f["flag"], "");
        assert_eq!(form_decode(b"%"), "%");
        assert_eq!(form_decode(b"%4"), "%4");
        assert_eq!(form_decode(b"%41"), "A");
    }

    #[test]
    fn basic_auth_decoding() {
        // id "a b", secret "x:y~" (form-encoded before base64, RFC 6749 2.3.1)
        let header = format!("Basic {}", STANDARD.encode("a+b:x%3Ay~"));
        assert_eq!(parse_basic(&header), Some(("a b".into(), "x:y~".into())));
        assert_eq!(parse_basic("Bearer abc"), None);
        assert_eq!(parse_basic("Basic !!!"), None);
    }

    #[test]
    fn head_parsing_and_routing() {
        let head = parse_head(
            b"POST /t/oauth2/v2.0/token?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close",
        )
        .unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.header("content-length"), Some("3"));
        assert!(head.wants_close());
        assert_eq!(token_path_tenant(&head.target), Some("t"));
        assert_eq!(token_path_tenant("/t/oauth2/token"), None);
        assert_eq!(token_path_tenant("//oauth2/v2.0/token"), None);
        assert!(parse_head(b"GET / HTTP/2").is_err());
        assert!(parse_head(b"GET /\r\n").is_err());
        assert!(!parse_head(b"GET / HTTP/1.1").unwrap().wants_close());
        assert!(parse_head(b"GET / HTTP/1.0").unwrap().wants_close());
    }
}
