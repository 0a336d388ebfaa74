//! `smtp-oauth-relay queue list|show|retry|delete|adopt` (DESIGN §8): look at and act on the spool,
//! safe while the relay runs.
//!
//! The commands only need `delivery.spool_dir`. They open the spool read-only
//! ([`Spool::open_existing`]: no start-up clean-up, so bodies still arriving are left alone)
//! and change it only through the spool's own `retry` and `delete`, which drop
//! `control/rescan` so a running relay re-reads its queue within a couple of seconds.
//!
//! Exit codes: 0 ok, 64 usage (unknown id, no spool at the configured directory), 1 I/O error.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use super::adopt::{self, for_cell, for_column_needed};
use super::process::{config_error, init_tracing, EXIT_CONFIG};
pub use super::table::{format_duration, format_next, format_time};
use super::table::{render_table, truncate, Column};
use crate::config::Config;
use crate::spool::{now_unix, Area, BodyAt, Destination, QueueEntry, Spool};

#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub command: QueueCommand,
}

/// Line width on a terminal when `COLUMNS` does not say (pipes get full lines).
pub const DEFAULT_WIDTH: usize = 120;
/// `show` reads at most this much of a body file looking for the end of the headers.
pub const MAX_HEADER_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum QueueCommand {
    /// List queued messages (or failed ones with --failed).
    List {
        /// List failed/ (with failure time and reason) instead of the queue.
        #[arg(long)]
        failed: bool,
        /// One JSON object per line (the envelope plus "area") instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: its envelope in full, the header block (never the body), its files.
    Show {
        /// The message id (from `queue list`).
        id: String,
        /// The envelope as one JSON object (plus "area", "envelope_path", "body_path").
        #[arg(long)]
        json: bool,
    },
    /// Make a queued message due now, or move a failed one back into the queue.
    Retry {
        /// The message id (from `queue list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every queued message.
        #[arg(long)]
        all: bool,
        /// With --all: failed messages too (they go back into the queue, attempts reset).
        #[arg(long, requires = "all")]
        failed: bool,
    },
    /// Remove a message (queued or failed) for good. Asks no questions.
    Delete {
        /// The message id (from `queue list`).
        id: String,
    },
    /// Let a relay deliver a message queued for another destination (`OTHER:` in `queue
    /// list`): forget its recorded destination; the next relay to read the queue takes it.
    Adopt {
        /// The message id (from `queue list`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every message queued for another destination than the configured one.
        #[arg(long)]
        all: bool,
    },
}

/// Why a command failed; decides the exit code.
#[derive(Debug)]
enum Failure {
    Usage(String),
    Io(String),
    /// stdout was closed (`queue list | head`): not an error of ours.
    OutputClosed,
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::OutputClosed
        } else {
            Failure::Io(e.to_string())
        }
    }
}

/// `queue ...`: only `delivery.spool_dir` matters, so the account need not be configured
/// (no `validate()`). Logs only warnings (e.g. an unreadable envelope) unless RUST_LOG says.
pub fn command(config_file: Option<&Path>, env: &[(String, String)], args: QueueArgs) -> ExitCode {
    let config = match Config::load(config_file, env) {
        Ok(c) => c,
        Err(e) => return config_error(e),
    };
    init_tracing("warn", config.log.format);
    let spool_dir = &config.delivery.spool_dir;
    if spool_dir.as_os_str().is_empty() {
        return config_error("delivery.spool_dir: must not be empty");
    }
    run(args.command, spool_dir, &adopt::configured(&config))
}

/// Runs one queue command against the spool at `spool_dir`; output goes to stdout, errors to
/// stderr.
/// `ours` are the destinations the configuration names (none when it names none).
pub fn run(cmd: QueueCommand, spool_dir: &Path, ours: &[Destination]) -> ExitCode {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = run_to(cmd, spool_dir, &mut out, now_unix(), terminal_width(), ours);
    let _ = out.flush();
    match result {
        Ok(()) | Err(Failure::OutputClosed) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("smtp-oauth-relay: {m}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Io(m)) => {
            eprintln!("smtp-oauth-relay: {m}");
            ExitCode::FAILURE
        }
    }
}

fn run_to(
    cmd: QueueCommand,
    spool_dir: &Path,
    out: &mut dyn Write,
    now: u64,
    width: usize,
    ours: &[Destination],
) -> Result<(), Failure> {
    let spool = Spool::open_existing(spool_dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Failure::Usage(e.to_string()),
        _ => Failure::Io(format!("spool {}: {e}", spool_dir.display())),
    })?;
    match cmd {
        QueueCommand::List { failed, json } => list(&spool, failed, json, out, now, width, ours),
        QueueCommand::Show { id, json } => show(&spool, &id, json, out, now, ours),
        QueueCommand::Retry { id, all, failed } => match id {
            Some(id) => retry_one(&spool, &id, out, now),
            None => {
                debug_assert!(all, "clap requires an id or --all");
                retry_all(&spool, failed, out, now)
            }
        },
        QueueCommand::Delete { id } => delete(&spool, &id, out),
        QueueCommand::Adopt { id, .. } => {
            let id = id.map(|id| check_id(&id).map(|()| id)).transpose()?;
            match adopt::adopt(&spool, id.as_deref(), ours, out)? {
                Some(_) => Ok(()),
                None => Err(Failure::Usage(format!(
                    "no message {} in the queue",
                    id.unwrap_or_default()
                ))),
            }
        }
    }
}

fn area_name(area: Area) -> &'static str {
    match area {
        Area::Queue => "queued",
        Area::Failed => "failed",
    }
}

fn area_dir(area: Area) -> &'static str {
    match area {
        Area::Queue => "queue/",
        Area::Failed => "failed/",
    }
}

/// Ids are file names inside the spool: nothing that could climb out of it.
fn check_id(id: &str) -> Result<(), Failure> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "{id:?} is not a message id (ids look like 0191a2b3c4d-000001-1a2b3c4d; see `queue list`)"
        )))
    }
}

fn not_found(id: &str) -> Failure {
    Failure::Usage(format!("no message {id} in the queue or failed/"))
}

fn find(spool: &Spool, id: &str) -> Result<(Area, QueueEntry), Failure> {
    check_id(id)?;
    spool.find(id)?.ok_or_else(|| not_found(id))
}

fn json_line(entry: &QueueEntry, area: Area, extra: &[(&str, String)]) -> String {
    let mut value = serde_json::to_value(entry).expect("an envelope serialises");
    if let Some(map) = value.as_object_mut() {
        map.insert("area".into(), area_name(area).into());
        for (k, v) in extra {
            map.insert((*k).into(), v.clone().into());
        }
    }
    value.to_string()
}

fn list(
    spool: &Spool,
    failed: bool,
    json: bool,
    out: &mut dyn Write,
    now: u64,
    width: usize,
    ours: &[Destination],
) -> Result<(), Failure> {
    let area = if failed { Area::Failed } else { Area::Queue };
    let entries = spool.list(area)?;
    if json {
        for e in &entries {
            writeln!(out, "{}", json_line(e, area, &[]))?;
        }
        return Ok(());
    }
    if entries.is_empty() {
        writeln!(
            out,
            "no {} messages in {}",
            area_name(area),
            spool.root().join(area_dir(area)).display()
        )?;
        return Ok(());
    }
    out.write_all(render_list(&entries, area, now, width, ours).as_bytes())?;
    let summary = match area {
        Area::Queue => {
            let due = entries.iter().filter(|e| e.next_attempt <= now).count();
            let others = adopt::others_note(&entries, ours);
            format!("{} queued, {due} due now{others}", entries.len())
        }
        Area::Failed => format!("{} failed", entries.len()),
    };
    writeln!(out, "{summary}")?;
    Ok(())
}

/// The table of `queue list` (pure: `now` and the width are passed in).
pub fn render_list(
    entries: &[QueueEntry],
    area: Area,
    now: u64,
    width: usize,
    ours: &[Destination],
) -> String {
    let with_for = area == Area::Queue && for_column_needed(entries, ours);
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let mut row = vec![
                e.id.clone(),
                format_duration(now.saturating_sub(e.received_at)),
                sender(&e.mail_from),
                recipients_summary(&e.rcpt_to),
                e.attempts.to_string(),
            ];
            match area {
                Area::Queue => {
                    row.push(format_next(now, e.next_attempt));
                    if with_for {
                        row.push(for_cell(e, ours));
                    }
                    row.push(e.last_error.clone().unwrap_or_else(|| "-".into()));
                }
                Area::Failed => {
                    row.push(match e.failed_at {
                        Some(t) => format!("{} ago", format_duration(now.saturating_sub(t))),
                        None => "-".into(),
                    });
                    row.push(e.failure_reason.clone().unwrap_or_else(|| "-".into()));
                }
            }
            row
        })
        .collect();
    let (next, last) = match area {
        Area::Queue => ("NEXT ATTEMPT", "LAST ERROR"),
        Area::Failed => ("FAILED", "REASON"),
    };
    // Ids and times are never cut; addresses give way before the error does.
    let mut columns = vec![
        Column::fixed("ID"),
        Column::fixed("AGE"),
        Column::new("FROM", 16, 32),
        Column::new("RECIPIENTS", 16, 40),
        Column::fixed("ATTEMPTS"),
        Column::fixed(next),
        Column::new(last, 48, usize::MAX),
    ];
    if with_for {
        // Whose mail it is: `OTHER:` is never delivered by this configuration's relay.
        columns.insert(6, Column::new("FOR", 8, 60));
    }
    render_table(&columns, &rows, width)
}

fn sender(mail_from: &str) -> String {
    if mail_from.is_empty() {
        "<>".into()
    } else {
        mail_from.to_string()
    }
}

/// "count: first" (e.g. `3: a@example.com`), or `-` for none.
pub fn recipients_summary(rcpts: &[String]) -> String {
    match rcpts.first() {
        None => "-".into(),
        Some(first) => format!("{}: {first}", rcpts.len()),
    }
}

/// The header block of a message: everything before the first empty line. `complete` is
/// false when no empty line was found in `bytes` (a message without body, or one whose
/// headers go on past what was read).
pub fn header_block(bytes: &[u8]) -> (&[u8], bool) {
    let mut start = 0;
    while start < bytes.len() {
        let end = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(i) => start + i + 1,
            None => return (bytes, false),
        };
        let line = &bytes[start..end];
        if line == b"\n" || line == b"\r\n" {
            return (&bytes[..start], true);
        }
        start = end;
    }
    (bytes, false)
}

/// Reads the header block of a body file, never more than [`MAX_HEADER_BYTES`].
fn read_headers(at: &BodyAt) -> io::Result<(String, bool)> {
    let buf = at.read_prefix(MAX_HEADER_BYTES)?;
    let at_eof = buf.len() < MAX_HEADER_BYTES;
    let (block, complete) = header_block(&buf);
    let text = String::from_utf8_lossy(block).replace("\r\n", "\n");
    Ok((text, complete || at_eof))
}

fn show(
    spool: &Spool,
    id: &str,
    json: bool,
    out: &mut dyn Write,
    now: u64,
    ours: &[Destination],
) -> Result<(), Failure> {
    let (area, e) = find(spool, id)?;
    let body_at = spool.body_at(area, id)?;
    let body_path = body_at.describe();
    // A message in the spool's log keeps its envelope beside its body in the segment.
    let envelope_path = match &body_at {
        BodyAt::File(_) => spool
            .root()
            .join(area_dir(area))
            .join(format!("{id}.json"))
            .display()
            .to_string(),
        BodyAt::Segment { .. } => body_path.clone(),
    };
    if json {
        let extra = [
            ("envelope_path", envelope_path.clone()),
            ("body_path", body_path.clone()),
        ];
        writeln!(out, "{}", json_line(&e, area, &extra))?;
        return Ok(());
    }
    let mut t = String::new();
    let field = |t: &mut String, name: &str, value: &str| {
        let _ = writeln!(t, "{name:<14}{value}");
    };
    let list = |t: &mut String, name: &str, items: &[String]| {
        if items.is_empty() {
            field(t, name, "-");
        }
        for (i, item) in items.iter().enumerate() {
            field(t, if i == 0 { name } else { "" }, item);
        }
    };
    field(&mut t, "id", &e.id);
    field(
        &mut t,
        "area",
        &format!("{} ({})", area_name(area), area_dir(area)),
    );
    field(&mut t, "from", &sender(&e.mail_from));
    list(&mut t, "recipients", &e.rcpt_to);
    let refused: Vec<String> = e.refused.iter().map(|r| r.to_string()).collect();
    list(&mut t, "refused", &refused);
    field(&mut t, "mailbox", &e.mailbox);
    field(&mut t, "destination", &adopt::describe(&e, ours));
    field(&mut t, "client", &format!("{} (helo {})", e.client, e.helo));
    field(&mut t, "size", &format!("{} bytes", e.size));
    let mut flags = Vec::new();
    if e.body_8bit {
        flags.push("BODY=8BITMIME");
    }
    if e.smtputf8 {
        flags.push("SMTPUTF8");
    }
    if e.notice {
        flags.push("failure notice written by the relay");
    }
    if !flags.is_empty() {
        field(&mut t, "flags", &flags.join(", "));
    }
    field(&mut t, "received", &format_time(now, e.received_at));
    field(&mut t, "attempts", &e.attempts.to_string());
    if area == Area::Queue {
        let next = if e.next_attempt <= now {
            format!("due ({})", format_time(now, e.next_attempt))
        } else {
            format_time(now, e.next_attempt)
        };
        field(&mut t, "next attempt", &next);
    }
    field(&mut t, "last error", e.last_error.as_deref().unwrap_or("-"));
    if let Some(at) = e.failed_at {
        field(&mut t, "failed", &format_time(now, at));
    }
    if let Some(reason) = &e.failure_reason {
        field(&mut t, "reason", reason);
    }
    field(&mut t, "envelope", &envelope_path);
    field(&mut t, "body", &body_path);
    t.push_str("\nheaders (the body is not shown):\n");
    match read_headers(&body_at) {
        Ok((headers, complete)) => {
            t.push_str(&headers);
            if !headers.is_empty() && !headers.ends_with('\n') {
                t.push('\n');
            }
            if !complete {
                let _ = writeln!(
                    t,
                    "(header block longer than {} KiB: cut here)",
                    MAX_HEADER_BYTES / 1024
                );
            }
        }
        Err(err) => {
            let _ = writeln!(t, "(cannot read {body_path}: {err})");
        }
    }
    // Header bytes and envelope fields are the client's: no control reaches the terminal.
    out.write_all(crate::wire::header::terminal_safe(&t).as_bytes())?;
    Ok(())
}

fn retry_one(spool: &Spool, id: &str, out: &mut dyn Write, now: u64) -> Result<(), Failure> {
    let (area, e) = find(spool, id)?;
    if !spool.retry(id)? {
        // Delivered, failed or deleted between the two reads.
        return Err(not_found(id));
    }
    writeln!(out, "{}", describe_retry(area, &e, now))?;
    writeln!(out, "asked a running relay to re-read the queue")?;
    Ok(())
}

fn describe_retry(area: Area, e: &QueueEntry, now: u64) -> String {
    match area {
        Area::Queue => format!(
            "{}: due now (next attempt was {}, {} attempts so far)",
            e.id,
            format_next(now, e.next_attempt),
            e.attempts
        ),
        Area::Failed => format!(
            "{}: moved from failed/ back to the queue, due now, attempts reset (failed because: {})",
            e.id,
            truncate(e.failure_reason.as_deref().unwrap_or("unknown"), 200)
        ),
    }
}

fn retry_all(
    spool: &Spool,
    include_failed: bool,
    out: &mut dyn Write,
    now: u64,
) -> Result<(), Failure> {
    let mut areas = vec![Area::Queue];
    if include_failed {
        areas.push(Area::Failed);
    }
    let mut counts = [0usize; 2];
    let mut errors = Vec::new();
    for (i, &area) in areas.iter().enumerate() {
        for e in spool.list(area)? {
            match spool.retry(&e.id) {
                Ok(true) => {
                    counts[i] += 1;
                    writeln!(out, "{}", describe_retry(area, &e, now))?;
                }
                // Gone meanwhile (delivered, failed or deleted): nothing to do.
                Ok(false) => {}
                Err(err) => errors.push(format!("{}: {err}", e.id)),
            }
        }
    }
    if counts == [0, 0] && errors.is_empty() {
        let what = if include_failed {
            "no queued or failed messages"
        } else {
            "no queued messages (failed ones need --all --failed)"
        };
        writeln!(out, "nothing to retry: {what}")?;
        return Ok(());
    }
    let mut summary = format!("retried {} queued", counts[0]);
    if include_failed {
        let _ = write!(summary, " and {} failed", counts[1]);
    }
    summary.push_str(" message(s); asked a running relay to re-read the queue");
    writeln!(out, "{summary}")?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::Io(format!(
            "could not retry {} message(s): {}",
            errors.len(),
            errors.join("; ")
        )))
    }
}

fn delete(spool: &Spool, id: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let (area, e) = find(spool, id)?;
    let mut files: Vec<String> = [
        spool.root().join(area_dir(area)).join(format!("{id}.json")),
        spool.body_in(area, id),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .map(|p| p.display().to_string())
    .collect();
    let at = spool.body_at(area, id)?;
    if matches!(at, BodyAt::Segment { .. }) {
        files.push(format!("{} (in the spool's log: deleted)", at.describe()));
    }
    if !spool.delete(id)? {
        return Err(not_found(id));
    }
    writeln!(
        out,
        "removed {} message {id} (from {} to {}) from {}:",
        area_name(area),
        sender(&e.mail_from),
        recipients_summary(&e.rcpt_to),
        area_dir(area)
    )?;
    for f in files {
        writeln!(out, "  {f}")?;
    }
    Ok(())
}

/// `COLUMNS` if the shell exported it; else [`DEFAULT_WIDTH`] on a terminal, and no limit
/// when stdout is a pipe or file (full lines for grep and less).
fn terminal_width() -> usize {
    let columns = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&w| w >= 40);
    match columns {
        Some(w) => w,
        None if std::io::IsTerminal::is_terminal(&io::stdout()) => DEFAULT_WIDTH,
        None => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn entry(id: &str) -> QueueEntry {
        let mut e = QueueEntry::new(
            id.into(),
            "app@example.com".into(),
            vec!["a@example.com".into(), "b@example.com".into()],
            "relay@example.com".into(),
            5,
        );
        e.client = "127.0.0.1:1".into();
        e.helo = "app".into();
        e.received_at = NOW - 300;
        e.attempts = 2;
        e.next_attempt = NOW + 240;
        e.last_error = Some("connection refused by smtp.office365.com:587".into());
        e.received_at_ms = 0;
        e.destination = Some(ours());
        e
    }

    fn ours() -> Destination {
        Destination {
            tenant: "t".into(),
            client_id: "c".into(),
            mailbox: "relay@example.com".into(),
            upstream: "smtp.office365.com:587".into(),
        }
    }

    #[test]
    fn list_marks_mail_for_another_destination() {
        let mut other = entry("0000000000b-000002-00000002");
        other.destination = Some(Destination {
            upstream: "sandbox".into(),
            mailbox: "relay@sandbox.example".into(),
            ..ours()
        });
        let mine = entry("0000000000a-000001-00000001");
        let text = render_list(
            std::slice::from_ref(&mine),
            Area::Queue,
            NOW,
            200,
            &[ours()],
        );
        assert!(!text.contains("FOR"), "all ours: the usual table\n{text}");
        let text = render_list(&[mine, other], Area::Queue, NOW, 200, &[ours()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains(" FOR "), "{text}");
        assert!(
            lines[1].contains("relay@example.com via smtp.office365.com:587"),
            "{text}"
        );
        assert!(!lines[1].contains("OTHER"), "{text}");
        assert!(
            lines[2].contains("OTHER: relay@sandbox.example via sandbox"),
            "{text}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(59), "59s");
        assert_eq!(format_duration(60), "1m");
        assert_eq!(format_duration(3599), "59m");
        assert_eq!(format_duration(3600 + 5 * 60 + 7), "1h05m");
        assert_eq!(format_duration(86_400 * 3 + 3600 * 4 + 1), "3d04h");
    }

    #[test]
    fn next_attempt_is_relative() {
        assert_eq!(format_next(NOW, NOW + 240), "in 4m");
        assert_eq!(format_next(NOW, NOW + 30), "in 30s");
        assert_eq!(format_next(NOW, NOW), "due");
        assert_eq!(format_next(NOW, NOW - 100), "due");
        assert!(format_time(NOW, NOW - 90).ends_with("(1m ago)"));
        assert!(format_time(NOW, NOW + 90).ends_with("(in 1m)"));
        assert!(format_time(NOW, NOW).contains("GMT"));
    }

    #[test]
    fn recipients() {
        assert_eq!(recipients_summary(&[]), "-");
        assert_eq!(recipients_summary(&["a@x".into()]), "1: a@x");
        assert_eq!(
            recipients_summary(&["a@x".into(), "b@x".into(), "c@x".into()]),
            "3: a@x"
        );
    }

    #[test]
    fn list_table_has_every_column() {
        let mut other = entry("0000000000b-000002-00000002");
        other.mail_from = String::new();
        other.rcpt_to = vec!["only@example.com".into()];
        other.next_attempt = NOW - 5;
        other.last_error = None;
        let text = render_list(
            &[entry("0000000000a-000001-00000001"), other],
            Area::Queue,
            NOW,
            usize::MAX,
            &[],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID "), "{text}");
        for h in [
            "AGE",
            "FROM",
            "RECIPIENTS",
            "ATTEMPTS",
            "NEXT ATTEMPT",
            "LAST ERROR",
        ] {
            assert!(lines[0].contains(h), "{h} missing: {text}");
        }
        assert!(lines[1].contains("5m"), "{text}");
        assert!(lines[1].contains("app@example.com"));
        assert!(lines[1].contains("2: a@example.com"));
        assert!(lines[1].contains("in 4m"));
        assert!(lines[1].contains("connection refused"));
        assert!(lines[2].contains("<>"));
        assert!(lines[2].contains("1: only@example.com"));
        assert!(lines[2].contains("due"));

        // On a 120-column screen the addresses give way to the error.
        let mut long = entry("0000000000a-000001-00000001");
        long.mail_from = format!("{}@example.com", "x".repeat(40));
        long.last_error = Some("451 4.7.500 Server busy. Please try again later. ".repeat(3));
        let text = render_list(&[long], Area::Queue, NOW, 120, &[]);
        for l in text.lines() {
            assert!(l.chars().count() <= 120, "{l:?}");
        }
        let row = text.lines().nth(1).unwrap();
        assert!(row.contains("451 4.7.500 Server busy"), "{row}");
        assert!(row.contains("  in 4m  "), "{row}");

        let mut failed = entry("f");
        failed.failed_at = Some(NOW - 7200);
        failed.failure_reason = Some("550 5.1.10 RESOLVER.ADR.RecipientNotFound".into());
        let text = render_list(&[failed], Area::Failed, NOW, 200, &[]);
        assert!(text.lines().next().unwrap().contains("REASON"));
        assert!(text.contains("2h00m ago"), "{text}");
        assert!(text.contains("5.1.10"));
    }

    #[test]
    fn header_block_stops_at_the_empty_line() {
        let msg = b"Subject: hi\r\nX-A: 1\r\n folded\r\n\r\nbody line\r\n\r\nmore\r\n";
        let (h, complete) = header_block(msg);
        assert!(complete);
        assert_eq!(h, b"Subject: hi\r\nX-A: 1\r\n folded\r\n");
        assert_eq!(header_block(b"A: 1\n\nbody"), (&b"A: 1\n"[..], true));
        assert_eq!(header_block(b"\r\nbody"), (&b""[..], true));
        assert_eq!(header_block(b"A: 1\r\nB: 2"), (&b"A: 1\r\nB: 2"[..], false));
    }

    #[test]
    fn ids_cannot_leave_the_spool() {
        assert!(check_id("0191a2b3c4d-000001-1a2b3c4d").is_ok());
        for bad in ["", "../queue/x", "a/b", ".hidden", "a\\b", "x y"] {
            assert!(matches!(check_id(bad), Err(Failure::Usage(_))), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn commands_against_a_spool() {
        let dir = tempfile::tempdir().unwrap();
        let run = |cmd: QueueCommand| {
            let mut out = Vec::new();
            let r = run_to(cmd, dir.path(), &mut out, now_unix(), 120, &[]);
            (r, String::from_utf8(out).unwrap())
        };
        let (r, _) = run(QueueCommand::List {
            failed: false,
            json: false,
        });
        assert!(matches!(r, Err(Failure::Usage(m)) if m.contains("no spool at")));

        let (spool, _) = Spool::open(dir.path()).unwrap();
        for id in ["q1", "f1"] {
            let tmp = dir.path().join("incoming").join(format!("{id}.tmp"));
            std::fs::write(&tmp, b"Subject: s\r\n\r\nSECRET BODY\r\n").unwrap();
            let mut e = entry(id);
            e.received_at = now_unix();
            spool.commit(&tmp, &e).await.unwrap();
        }
        let mut f = entry("f1");
        f.failed_at = Some(now_unix());
        f.failure_reason = Some("550 5.1.10 no such user".into());
        spool.fail(&f).await.unwrap();

        let (r, text) = run(QueueCommand::List {
            failed: false,
            json: true,
        });
        assert!(r.is_ok());
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["id"], "q1");
        assert_eq!(v["area"], "queued");

        let (r, text) = run(QueueCommand::Show {
            id: "f1".into(),
            json: false,
        });
        assert!(r.is_ok());
        assert!(text.contains("failed (failed/)"), "{text}");
        assert!(text.contains("Subject: s"));
        assert!(!text.contains("SECRET BODY"));

        let (r, _) = run(QueueCommand::Delete { id: "zz".into() });
        assert!(
            matches!(r, Err(Failure::Usage(m)) if m == "no message zz in the queue or failed/")
        );

        let (r, text) = run(QueueCommand::Retry {
            id: None,
            all: true,
            failed: false,
        });
        assert!(r.is_ok());
        assert!(text.contains("retried 1 queued message(s)"), "{text}");
        assert_eq!(spool.find("f1").unwrap().unwrap().0, Area::Failed);

        let (r, text) = run(QueueCommand::Retry {
            id: None,
            all: true,
            failed: true,
        });
        assert!(r.is_ok());
        assert!(text.contains("retried 1 queued and 1 failed"), "{text}");
        assert!(text.contains("f1: moved from failed/ back to the queue"));
        assert_eq!(spool.find("f1").unwrap().unwrap().0, Area::Queue);

        let (r, text) = run(QueueCommand::Delete { id: "q1".into() });
        assert!(r.is_ok());
        assert!(text.contains("removed queued message q1"), "{text}");
        assert!(text.contains("q1.eml"));
        assert!(spool.find("q1").unwrap().is_none());
        assert!(!spool.body_path("q1").exists());
    }
}
