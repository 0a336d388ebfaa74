//! smtp-oauth-relay: plain SMTP in, Exchange Online SMTP AUTH with OAuth2 (XOAUTH2) out.
//!
//! ```text
//! app ──SMTP──▶ listener ─▶ session ─▶ spool ─▶ delivery ─▶ upstream ──STARTTLS+XOAUTH2──▶ smtp.office365.com:587
//!                                                                ▲
//!                                                     token provider ──HTTPS──▶ login.microsoftonline.com
//! ```
//!
//! The rooms, in the order a message travels:
//! - [`smtp`]: the inbound listener (tokio driver), the pure ESMTP session, DATA decoding.
//! - [`spool`]: where bodies are streamed while they arrive.
//! - [`delivery`]: when the client gets its answer (the delivery modes of DESIGN §3).
//! - [`upstream`]: STARTTLS, AUTH XOAUTH2 and mail transactions to Exchange Online, pooled per
//!   mailbox; `upstream::error` is the one place replies become verdicts.
//! - [`token`]: OAuth2 client-credentials tokens, cached single-flight with refresh-ahead.
//! - [`sandbox`]: an embedded Exchange Online stand-in (token endpoint + SMTP) for tests,
//!   demos and benchmarks.
//!
//! Around them: [`config`] (load and validate once), [`app`] (wiring), [`cli`], [`tls`].
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod diagnose;
pub mod envelope;
pub mod governor;
pub mod ops;
pub mod sandbox;
pub mod smtp;
pub mod spool;
pub mod sync;
pub mod tls;
pub mod token;
pub mod upstream;
pub mod wire;
