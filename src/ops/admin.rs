//! Admin HTTP on its own port (default `127.0.0.1:9325`, `admin.listen = "off"` disables it):
//!
//! - `/healthz`: the process is alive and serving (200 `ok`).
//! - `/readyz`: 200 when the relay can do its job, else 503; the body lists every check and
//!   says which failed: the SMTP listener accepts, the spool is writable, a valid token is in
//!   hand (and the last token request did not fail for a configuration reason), and the
//!   account is not held for a configuration error. While draining after SIGTERM it is 503.
//! - `/metrics`: Prometheus text format, from the `metrics` facade's global recorder. Gauges
//!   that describe state (spool depth, token expiry, governor window) are read at scrape
//!   time, so they are never stale.
//!
//! The readiness decision ([`evaluate`]) is pure and tested below; the handlers only gather
//! its inputs. Nothing here can change the relay, and nothing here shows a secret: token
//! errors are already scrubbed, and no metric carries a secret or a message body.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::prometheus;

/// What `/readyz` and the scrape-time gauges look at. The relay's own state comes through
/// [`RelayState`], so this room needs none of the others.
pub struct Health {
    pub listen: SocketAddr,
    pub accepting: Arc<AtomicBool>,
    pub draining: CancellationToken,
    pub spool_dir: PathBuf,
    pub state: Arc<dyn RelayState>,
}

/// The running relay as the admin port sees it (implemented in `app`).
pub trait RelayState: Send + Sync + 'static {
    /// Each account's token state for readiness, with the account's name (empty for the one
    /// account of a single-account relay).
    fn tokens(&self) -> Vec<(String, TokenState)>;
    /// Each mailbox and the advice of a configuration hold on it, if there is one (the name
    /// is empty for a single-mailbox relay).
    fn holds(&self) -> Vec<(String, Option<String>)>;
    /// Things an operator should see that do not make the relay unready (e.g. queued mail
    /// kept for another destination).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// The state gauges, read just before a scrape renders them.
    fn gauges(&self) -> Gauges;
}

/// The gauges that describe current state (never stale: read at scrape time).
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Messages in the spool's queue (every mailbox).
    pub queued: usize,
    /// Age of the oldest queued message, in seconds (0 when the queue is empty).
    pub oldest_queued_secs: u64,
    /// Seconds until the soonest-expiring cached token expires (0 when there is none).
    pub token_expiry_secs: f64,
    /// The governor and hold of each mailbox.
    pub mailboxes: Vec<MailboxGauges>,
}

/// One mailbox's governor figures and hold (labelled `mailbox`).
#[derive(Debug, Clone, Default)]
pub struct MailboxGauges {
    pub mailbox: String,
    pub sends_in_window: u32,
    pub sessions_in_flight: u32,
    pub recipients_24h: u64,
    pub held: bool,
}

/// The token's state as readiness sees it.
#[derive(Debug, Clone, Default)]
pub struct TokenState {
    /// Time left on the cached token, if there is a usable one.
    pub valid_for: Option<Duration>,
    /// The last token request failed: (a configuration error?, what it said and the advice).
    pub last_error: Option<(bool, String)>,
    /// The credential itself has expired (a certificate past its `notAfter`): what to say.
    pub credential_expired: Option<String>,
}

/// Everything readiness decides on.
#[derive(Debug, Clone)]
pub struct ReadyInputs {
    pub draining: bool,
    pub accepting: bool,
    pub listen: SocketAddr,
    /// `Err` says why the spool cannot be written.
    pub spool: Result<(), String>,
    /// Each account's token (named, or not when there is one account).
    pub tokens: Vec<(String, TokenState)>,
    /// Each mailbox's configuration hold, if any (named, or not when there is one).
    pub holds: Vec<(String, Option<String>)>,
    /// `WARN` lines: shown, never a reason to be unready.
    pub warnings: Vec<String>,
}

/// The verdict and one line per check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub lines: Vec<String>,
}

impl Readiness {
    pub fn body(&self) -> String {
        let mut out = String::from(if self.ready { "ready\n" } else { "not ready\n" });
        for l in &self.lines {
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

/// Decides readiness. Pure.
pub fn evaluate(i: &ReadyInputs) -> Readiness {
    let mut ready = true;
    let mut lines = Vec::new();
    let mut check = |ok: bool, line: String| {
        ready &= ok;
        lines.push(format!("{} {line}", if ok { "ok  " } else { "FAIL" }));
    };
    if i.draining {
        check(false, "shutdown: draining after a stop signal".into());
    }
    check(
        i.accepting && !i.draining,
        if i.accepting && !i.draining {
            format!("listener: accepting SMTP on {}", i.listen)
        } else {
            format!("listener: not accepting SMTP on {}", i.listen)
        },
    );
    match &i.spool {
        Ok(()) => check(true, "spool: writable".into()),
        Err(e) => check(false, format!("spool: not writable: {e}")),
    }
    for (name, token) in &i.tokens {
        let what = if name.is_empty() {
            "token".to_string()
        } else {
            format!("token ({name})")
        };
        match (&token.valid_for, &token.last_error) {
            (_, Some((true, e))) => check(
                false,
                format!("{what}: the token endpoint refused the credentials: {e}"),
            ),
            (Some(left), _) => check(
                true,
                format!("{what}: valid, expires in {} s", left.as_secs()),
            ),
            (None, Some((false, e))) => check(false, format!("{what}: cannot obtain one: {e}")),
            (None, None) => check(false, format!("{what}: none obtained yet")),
        }
    }
    for (name, token) in &i.tokens {
        if let Some(e) = &token.credential_expired {
            if name.is_empty() {
                check(false, format!("credential: {e}"));
            } else {
                check(false, format!("credential ({name}): {e}"));
            }
        }
    }
    for (name, hold) in &i.holds {
        let what = if name.is_empty() {
            "account".to_string()
        } else {
            format!("mailbox {name}")
        };
        match hold {
            None => check(true, format!("{what}: not held")),
            Some(advice) => check(
                false,
                format!("{what}: held for a configuration error: {advice}"),
            ),
        }
    }
    for w in &i.warnings {
        lines.push(format!("WARN {w}"));
    }
    Readiness { ready, lines }
}

impl Health {
    fn inputs(&self) -> ReadyInputs {
        ReadyInputs {
            draining: self.draining.is_cancelled(),
            accepting: self.accepting.load(Ordering::Relaxed),
            listen: self.listen,
            spool: probe_spool(&self.spool_dir),
            tokens: self.state.tokens(),
            holds: self.state.holds(),
            warnings: self.state.warnings(),
        }
    }

    /// Sets the gauges that describe current state, just before a scrape renders them.
    fn set_gauges(&self) {
        let g = self.state.gauges();
        metrics::gauge!("smtp_oauth_relay_spool_messages").set(g.queued as f64);
        metrics::gauge!("smtp_oauth_relay_spool_oldest_message_age_seconds")
            .set(g.oldest_queued_secs as f64);
        metrics::gauge!("smtp_oauth_relay_token_expiry_seconds").set(g.token_expiry_secs);
        for m in g.mailboxes {
            let mailbox = m.mailbox;
            metrics::gauge!("smtp_oauth_relay_governor_sends_in_window", "mailbox" => mailbox.clone())
                .set(f64::from(m.sends_in_window));
            metrics::gauge!("smtp_oauth_relay_governor_sessions_in_flight", "mailbox" => mailbox.clone())
                .set(f64::from(m.sessions_in_flight));
            metrics::gauge!("smtp_oauth_relay_governor_recipients_24h", "mailbox" => mailbox.clone())
                .set(m.recipients_24h as f64);
            metrics::gauge!("smtp_oauth_relay_account_held", "mailbox" => mailbox).set(if m.held {
                1.0
            } else {
                0.0
            });
        }
    }
}

/// Creates (privately, like every spool file), writes and removes a small file in the
/// spool's `incoming/` (where bodies are written).
fn probe_spool(dir: &std::path::Path) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // One name per check: overlapping probes must not delete each other's file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let probe = dir
        .join("incoming")
        .join(format!(".readyz-{}-{n}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .and_then(|mut f| f.write_all(b"ok"));
    let removed = std::fs::remove_file(&probe);
    written.and(removed).map_err(|e| spool_error(dir, &e))
}

/// What readiness says about a spool write error: a full file system or quota first, in
/// those words, since the cure (free space) differs from every other error's.
fn spool_error(dir: &std::path::Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            format!("no space ({}: {e})", dir.display())
        }
        _ => format!("{}: {e}", dir.display()),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let h2 = h.clone();
    // The spool probe touches the disk: keep it off the async workers.
    let r = tokio::task::spawn_blocking(move || evaluate(&h2.inputs()))
        .await
        .unwrap_or_else(|_| Readiness {
            ready: false,
            lines: vec!["FAIL readiness check panicked".into()],
        });
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        r.body(),
    )
}

async fn metrics_text(State(h): State<Arc<Health>>) -> impl IntoResponse {
    h.set_gauges();
    let handle = prometheus();
    handle.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}

/// The admin routes.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(health)
}

/// Binds the admin port. Separate from [`serve`] so start-up fails before anything runs.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop` is cancelled, within the admin port's limits ([`super::http`]).
pub async fn serve(listener: TcpListener, health: Arc<Health>, stop: CancellationToken) {
    prometheus();
    super::http::serve(
        listener,
        router(health),
        super::http::Limits::default(),
        stop,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> ReadyInputs {
        ReadyInputs {
            draining: false,
            accepting: true,
            listen: "127.0.0.1:2525".parse().unwrap(),
            spool: Ok(()),
            warnings: Vec::new(),
            tokens: vec![(
                String::new(),
                TokenState {
                    valid_for: Some(Duration::from_secs(3000)),
                    last_error: None,
                    credential_expired: None,
                },
            )],
            holds: vec![(String::new(), None)],
        }
    }

    fn failed(r: &Readiness) -> Vec<&str> {
        r.lines
            .iter()
            .filter(|l| l.starts_with("FAIL"))
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn all_good_is_ready() {
        let r = evaluate(&inputs());
        assert!(r.ready, "{r:?}");
        assert!(failed(&r).is_empty());
        assert!(r.body().starts_with("ready\n"));
        assert!(r.body().contains("token: valid, expires in 3000 s"));
    }

    #[test]
    fn each_failed_check_is_named() {
        let mut i = inputs();
        i.accepting = false;
        let r = evaluate(&i);
        assert!(!r.ready);
        assert_eq!(failed(&r).len(), 1);
        assert!(failed(&r)[0].contains("listener"), "{r:?}");

        let mut i = inputs();
        i.spool = Err("/spool: Read-only file system".into());
        let r = evaluate(&i);
        assert!(!r.ready);
        assert!(failed(&r)[0].contains("spool: not writable: /spool: Read-only"));

        let mut i = inputs();
        i.holds[0].1 = Some("grant SMTP.SendAsApp".into());
        let r = evaluate(&i);
        assert!(!r.ready);
        assert!(failed(&r)[0].contains("held"));
        assert!(r.body().starts_with("not ready\n"));
    }

    #[test]
    fn warnings_are_shown_without_failing_readiness() {
        let mut i = inputs();
        i.warnings = vec!["spool: 3 queued message(s) for another destination".into()];
        let r = evaluate(&i);
        assert!(r.ready, "{r:?}");
        assert!(
            r.body()
                .contains("\nWARN spool: 3 queued message(s) for another destination\n"),
            "{}",
            r.body()
        );
    }

    #[test]
    fn a_full_spool_says_no_space() {
        let dir = std::path::Path::new("/spool");
        let full = spool_error(dir, &std::io::Error::from_raw_os_error(28));
        let mut i = inputs();
        i.spool = Err(full);
        let r = evaluate(&i);
        assert!(!r.ready);
        assert!(
            failed(&r)[0].starts_with("FAIL spool: not writable: no space (/spool: "),
            "{r:?}"
        );
        let quota = spool_error(dir, &std::io::Error::from_raw_os_error(122));
        assert!(quota.starts_with("no space"), "{quota}");
        let other = spool_error(dir, &std::io::Error::from_raw_os_error(30));
        assert!(other.starts_with("/spool: Read-only"), "{other}");
    }

    #[test]
    fn token_rules() {
        // A configuration error fails readiness even while an old token is still valid: the
        // next refresh will fail too, and the operator must act.
        let mut i = inputs();
        i.tokens[0].1.last_error = Some((true, "invalid_client".into()));
        let r = evaluate(&i);
        assert!(!r.ready);
        assert!(failed(&r)[0].contains("refused the credentials: invalid_client"));

        // A transient failure with a valid token left is fine (refresh-ahead retries).
        let mut i = inputs();
        i.tokens[0].1.last_error = Some((false, "timeout".into()));
        assert!(evaluate(&i).ready);

        // No token at all: not ready, whatever the reason.
        i.tokens[0].1.valid_for = None;
        assert!(failed(&evaluate(&i))[0].contains("cannot obtain one: timeout"));
        i.tokens[0].1.last_error = None;
        assert!(failed(&evaluate(&i))[0].contains("none obtained yet"));
    }

    #[test]
    fn several_accounts_and_mailboxes_are_named() {
        let mut i = inputs();
        let good = i.tokens[0].1.clone();
        let mut bad = good.clone();
        bad.last_error = Some((true, "invalid_client".into()));
        i.tokens = vec![("erp".into(), good), ("scanners".into(), bad)];
        i.holds = vec![
            ("erp@contoso.com".into(), None),
            ("scan@contoso.com".into(), Some("enable SMTP AUTH".into())),
        ];
        let r = evaluate(&i);
        assert!(!r.ready);
        let body = r.body();
        assert!(body.contains("ok   token (erp): valid"), "{body}");
        assert!(
            body.contains("FAIL token (scanners): the token endpoint refused"),
            "{body}"
        );
        assert!(
            body.contains("ok   mailbox erp@contoso.com: not held"),
            "{body}"
        );
        assert!(
            body.contains(
                "FAIL mailbox scan@contoso.com: held for a configuration error: enable SMTP AUTH"
            ),
            "{body}"
        );
        assert_eq!(failed(&r).len(), 2);
    }

    #[test]
    fn an_expired_credential_is_not_ready() {
        // Even with a token still cached: the next refresh cannot work.
        let mut i = inputs();
        i.tokens[0].1.credential_expired =
            Some("the certificate expired on 2026-01-01T00:00:00Z".into());
        let r = evaluate(&i);
        assert!(!r.ready);
        assert_eq!(
            failed(&r),
            ["FAIL credential: the certificate expired on 2026-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn draining_is_not_ready() {
        let mut i = inputs();
        i.draining = true;
        let r = evaluate(&i);
        assert!(!r.ready);
        assert!(r.lines[0].contains("draining"));
    }
}
