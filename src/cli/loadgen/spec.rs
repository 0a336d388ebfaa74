//! What `loadgen` sends and how: message sizes, the generated bodies, TLS and AUTH options.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

/// Message sizes: one size, a uniform range, or a weighted mix.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeSpec {
    Fixed(usize),
    /// Uniform between the two, inclusive.
    Range(usize, usize),
    /// `(size, weight)` pairs.
    Mix(Vec<(usize, u32)>),
}

/// Smallest message we generate: the headers alone take this much.
pub const MIN_SIZE: usize = 300;

/// Parses `5000`, `5k`, `1m`, `1k-100k` or `1k:70,10k:25,1m:5` (k = 1,000, m = 1,000,000).
pub fn parse_size_spec(s: &str) -> Result<SizeSpec, String> {
    let one = |t: &str| -> Result<usize, String> {
        let t = t.trim().to_ascii_lowercase();
        let (num, mult) = match t.strip_suffix('k') {
            Some(n) => (n, 1_000),
            None => match t.strip_suffix('m') {
                Some(n) => (n, 1_000_000),
                None => (t.as_str(), 1),
            },
        };
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{t}` is not a size such as 5000, 5k or 1m"))?;
        let bytes = (n * mult as f64) as usize;
        if bytes < MIN_SIZE {
            return Err(format!("{bytes} bytes is too small (at least {MIN_SIZE})"));
        }
        Ok(bytes)
    };
    if s.contains(':') {
        let mut mix = Vec::new();
        for part in s.split(',') {
            let (size, weight) = part
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not SIZE:WEIGHT"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{weight}` is not a whole-number weight"))?;
            mix.push((one(size)?, weight));
        }
        if mix.iter().all(|(_, w)| *w == 0) {
            return Err("the weights add up to 0".into());
        }
        Ok(SizeSpec::Mix(mix))
    } else if let Some((lo, hi)) = s.split_once('-') {
        let (lo, hi) = (one(lo)?, one(hi)?);
        if lo > hi {
            return Err(format!("range {lo}-{hi} runs backwards"));
        }
        Ok(SizeSpec::Range(lo, hi))
    } else {
        Ok(SizeSpec::Fixed(one(s)?))
    }
}

impl SizeSpec {
    /// The size for the `n`th message; `r` is uniform in [0, 1).
    pub fn pick(&self, r: f64) -> usize {
        match self {
            SizeSpec::Fixed(n) => *n,
            SizeSpec::Range(lo, hi) => lo + ((hi - lo + 1) as f64 * r) as usize,
            SizeSpec::Mix(mix) => {
                let total: u32 = mix.iter().map(|(_, w)| w).sum();
                let mut at = (f64::from(total) * r) as u32;
                for (size, w) in mix {
                    if at < *w {
                        return *size;
                    }
                    at -= w;
                }
                mix.last().map(|(s, _)| *s).unwrap_or(MIN_SIZE)
            }
        }
    }

    /// The distinct sizes it can produce with a range sampled at 16 points (bodies are
    /// prepared for each).
    pub(super) fn sizes(&self) -> Vec<usize> {
        match self {
            SizeSpec::Fixed(n) => vec![*n],
            SizeSpec::Range(lo, hi) => (0..16).map(|i| lo + (hi - lo) * i / 15).collect(),
            SizeSpec::Mix(mix) => mix.iter().map(|(s, _)| *s).collect(),
        }
    }
}

/// Authentication after STARTTLS (or in the clear if the server allows it).
#[derive(Clone)]
pub enum Auth {
    Plain {
        user: String,
        password: SecretString,
    },
    XOAuth2 {
        user: String,
        token: SecretString,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Plain { user, .. } => write!(f, "Plain({user}, <redacted>)"),
            Auth::XOAuth2 { user, .. } => write!(f, "XOAuth2({user}, <redacted>)"),
        }
    }
}

impl Auth {
    pub(super) fn command(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        match self {
            Auth::Plain { user, password } => format!(
                "AUTH PLAIN {}\r\n",
                b64.encode(format!("\0{user}\0{}", password.expose_secret()))
            ),
            Auth::XOAuth2 { user, token } => format!(
                "AUTH XOAUTH2 {}\r\n",
                crate::wire::xoauth2::encode(user, token.expose_secret()).expose_secret()
            ),
        }
    }
}

/// STARTTLS settings.
#[derive(Clone)]
pub struct Tls {
    pub server_name: String,
    pub config: Arc<rustls::ClientConfig>,
}

/// What to send, where, and how hard.
#[derive(Clone)]
pub struct Options {
    pub target: SocketAddr,
    /// Total messages; `None` runs until `duration`.
    pub messages: Option<u64>,
    pub duration: Option<Duration>,
    pub concurrency: usize,
    pub size: SizeSpec,
    pub recipients: u32,
    pub from: String,
    /// Recipients are `loadgen-<n>@<rcpt_domain>`.
    pub rcpt_domain: String,
    pub tls: Option<Tls>,
    pub auth: Option<Auth>,
    pub pipelining: bool,
    /// Print a progress line to stderr every this often.
    pub progress: Option<Duration>,
    /// Longest wait for any one reply.
    pub reply_timeout: Duration,
}

impl Options {
    /// Defaults for `target`: 1,000 messages of 5 KB, 10 connections, one recipient each.
    pub fn new(target: SocketAddr) -> Options {
        Options {
            target,
            messages: Some(1000),
            duration: None,
            concurrency: 10,
            size: SizeSpec::Fixed(5000),
            recipients: 1,
            from: "loadgen@loadgen.example".into(),
            rcpt_domain: "loadgen.example".into(),
            tls: None,
            auth: None,
            pipelining: true,
            progress: None,
            reply_timeout: Duration::from_secs(120),
        }
    }
}

/// A message body of exactly `size` bytes (ending in CRLF, no line starting with `.`), with
/// a placeholder Message-ID of fixed width that [`stamp`] fills in per message.
pub fn body(size: usize, from: &str) -> Vec<u8> {
    let mut b = format!(
        "From: <{from}>\r\nTo: <loadgen@loadgen.example>\r\nSubject: loadgen\r\n\
         Message-ID: <{}@loadgen>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n",
        "0".repeat(ID_WIDTH)
    )
    .into_bytes();
    const LINE: &[u8] =
        b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopqr";
    while b.len() + 2 < size {
        let room = size - b.len() - 2;
        let take = room.min(LINE.len());
        b.extend_from_slice(&LINE[..take]);
        b.extend_from_slice(b"\r\n");
    }
    // Pad a last short gap (0 or 1 byte) without breaking CRLF: widen the last line.
    while b.len() < size {
        let at = b.len() - 2;
        b.insert(at, b'x');
    }
    b
}

const ID_WIDTH: usize = 20;

/// Writes `n` into the Message-ID placeholder of a [`body`].
pub fn stamp(body: &mut [u8], n: u64) {
    let marker = b"Message-ID: <";
    if let Some(at) = memchr::memmem::find(body, marker) {
        let digits = format!("{n:0width$}", width = ID_WIDTH);
        let start = at + marker.len();
        body[start..start + ID_WIDTH].copy_from_slice(&digits.as_bytes()[..ID_WIDTH]);
    }
}
