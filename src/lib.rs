//! smtp-oauth-relay: plain SMTP in, Exchange Online SMTP AUTH with OAuth2 (XOAUTH2) out.
//!
//! ```text
//! app ──SMTP──▶ smtp ─▶ spool ─▶ delivery ─▶ upstream ──STARTTLS+XOAUTH2──▶ smtp.office365.com:587
//!                                   │            ▲
//!                                governor      token ──HTTPS──▶ login.microsoftonline.com
//! ```
//!
//! This page is the map: every module of the crate, and which others it may use. Arrows run
//! one way: a room uses only the rooms listed in its row, and the table has no cycle.
//! `tests/dependencies.rs` reads this table and every file of `src/` and fails on any use
//! the table does not list, and on any cycle between modules, so a backward import cannot
//! come back unnoticed. `docs/ARCHITECTURE.md` says why the rooms are cut this way.
//!
//! The rooms, in the order a message travels:
//!
//! | room | its one job | may use |
//! |---|---|---|
//! | [`smtp`] | the face: accept loop, one connection's I/O and timeouts, the pure ESMTP session, and the client's reply to DATA worded from delivery's outcome | `delivery`, `spool`, `envelope`, `wire`, `ops`, `sync` |
//! | [`spool`] | bodies while they arrive (memory or file), the durable queue on disk (a segment log for small messages, files for the rest), group-committed fsyncs | `envelope`, `sync` |
//! | [`delivery`] | when the client gets its answer (hybrid, queue, direct), attempts, the queue loop, holds, retries; returns outcomes, never replies | `spool`, `upstream`, `governor`, `envelope`, `ops`, `wire`, `sync` |
//! | [`governor`] | per-mailbox pacing inside Exchange's limits (rate, sessions, daily recipients) | `sync` |
//! | [`upstream`] | the SMTP client to Exchange: STARTTLS, XOAUTH2, a pool per mailbox; the one place replies become verdicts | `token`, `diagnose`, `ops`, `wire`, `sync` |
//! | [`token`] | OAuth2 tokens: one source per credential kind, a single-flight cache and its keeper | `diagnose`, `tls`, `sync` |
//!
//! Leaves, which the rooms share:
//!
//! | room | its one job | may use |
//! |---|---|---|
//! | [`envelope`] | the nouns of a message: its id and envelope | |
//! | [`wire`] | the SMTP wire format, pure: replies, DATA decoding and dot-stuffing, address checks, headers, XOAUTH2 | |
//! | [`diagnose`] | setup mistakes in plain words: evidence in, advice out, pure | `wire` |
//! | [`ops`] | what an operator sees: the audit trail, the metrics registry, the admin HTTP port | |
//! | [`tls`] | the one TLS client configuration (aws-lc-rs, platform verifier, extra CAs) | |
//! | [`sync`] | the one policy for poisoned locks | |
//!
//! Beside the message's path, the far side it talks to in tests, demos and benchmarks:
//!
//! | room | its one job | may use |
//! |---|---|---|
//! | [`sandbox`] | an embedded Exchange Online stand-in: token endpoint, STARTTLS/XOAUTH2 SMTP server, mail store | `wire`, `tls`, `sync` |
//!
//! Above the rooms, which build them and never get imported by them:
//!
//! | room | its one job | may use |
//! |---|---|---|
//! | [`config`] | load once (file, then environment), validate once, into each room's own settings | `smtp`, `delivery`, `upstream`, `governor`, `token`, `diagnose`, `tls` |
//! | [`app`] | wiring: build every room from a validated configuration, start, drain | `config`, `smtp`, `spool`, `delivery`, `governor`, `upstream`, `token`, `diagnose`, `ops`, `tls` |
//! | [`cli`] | the commands: serve, check/token/send-test, queue, loadgen, healthcheck, login, hash-password | `app`, `config`, `smtp`, `sandbox`, `spool`, `upstream`, `token`, `envelope`, `diagnose`, `ops`, `wire`, `tls`, `sync` |
#![forbid(unsafe_code)]

pub mod smtp;
pub mod spool;
pub mod delivery;
pub mod governor;
pub mod upstream;
pub mod token;

pub mod envelope;
pub mod wire;
pub mod diagnose;
pub mod ops;
pub mod tls;
pub mod sync;

pub mod sandbox;

pub mod config;
pub mod app;
pub mod cli;
