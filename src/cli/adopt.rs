//! Whose each queued message is, as the queue commands show it, and `queue adopt`.
//!
//! Every queued message records the destination it was accepted for (tenant, client,
//! mailbox, upstream); a relay never delivers another destination's mail (see
//! `spool::destination`). `queue list` shows each message's destination and marks those that
//! differ from the configured one. `queue adopt` is the way out for mail the operator does
//! want this relay to send: it forgets the recorded destination, and the next relay that
//! reads the queue (a running one within about two seconds) takes the message as its own.

use std::io::{self, Write};

use crate::config::{split_host_port, Config};
use crate::spool::destination::{owner, Owner};
use crate::spool::{Area, Destination, QueueEntry, Spool};

/// The destination the configuration names, when it names one completely (the queue
/// commands do not need a valid account, so it may not). Built like the relay builds its
/// own (`app::destination`).
pub fn configured(config: &Config) -> Option<Destination> {
    let a = config.account.first()?;
    let address = match (&a.upstream, &config.upstream.address) {
        (Some(u), _) | (None, Some(u)) => u.clone(),
        (None, None) => match a.endpoint {
            crate::config::EndpointKind::Hve => crate::config::HVE_UPSTREAM.to_string(),
            crate::config::EndpointKind::Standard => a.cloud.smtp_address().to_string(),
        },
    };
    let (host, port) = split_host_port(&address)?;
    Some(Destination {
        tenant: a.tenant.clone()?,
        client_id: a.client_id.clone()?,
        mailbox: a.mailbox.clone()?,
        upstream: format!("{host}:{port}"),
    })
}

/// Whether `e` is recorded for a destination other than `ours` (never, when `ours` is not
/// known, or when `e` has none recorded: a relay adopts those).
pub fn is_other(e: &QueueEntry, ours: Option<&Destination>) -> bool {
    ours.is_some_and(|ours| matches!(owner(e, ours), Owner::Other(_)))
}

/// Whether `queue list` needs its `FOR` column: some message is unrecorded or for another
/// destination than the configured one (or, with none configured, they are not all for the
/// same one). A queue that is all the relay's own keeps the table as it always was.
pub fn for_column_needed(entries: &[QueueEntry], ours: Option<&Destination>) -> bool {
    let first = entries.first().and_then(|e| e.destination.as_ref());
    entries.iter().any(|e| match (&e.destination, ours) {
        (None, _) => true,
        (Some(_), Some(_)) => is_other(e, ours),
        (Some(d), None) => !first.is_some_and(|f| f.same_as(d)),
    })
}

/// The end of `queue list`'s summary line when messages are kept for another destination.
pub fn others_note(entries: &[QueueEntry], ours: Option<&Destination>) -> String {
    match entries.iter().filter(|e| is_other(e, ours)).count() {
        0 => String::new(),
        n => format!(
            ", {n} for another destination (OTHER: kept, never delivered by this configuration's relay; see `queue adopt`)"
        ),
    }
}

/// The `FOR` cell of `queue list`: `mailbox via upstream`, marked `OTHER:` when it is not
/// the configured destination.
pub fn for_cell(e: &QueueEntry, ours: Option<&Destination>) -> String {
    match &e.destination {
        None => "unrecorded (any relay adopts it)".into(),
        Some(d) if is_other(e, ours) => format!("OTHER: {} via {}", d.mailbox, d.upstream),
        Some(d) => format!("{} via {}", d.mailbox, d.upstream),
    }
}

/// `queue show`'s destination line.
pub fn describe(e: &QueueEntry, ours: Option<&Destination>) -> String {
    match &e.destination {
        None => "not recorded (queued by an older version; any relay adopts it)".into(),
        Some(d) if is_other(e, ours) => {
            format!("{d}: NOT the configured destination, this relay will not deliver it")
        }
        Some(d) => d.to_string(),
    }
}

/// `queue adopt ID` / `queue adopt --all` (every queued message recorded for another
/// destination than the configured one; every recorded one when the configuration names
/// none). Returns how many were adopted; `Ok(None)` if `id` is not queued.
pub fn adopt(
    spool: &Spool,
    id: Option<&str>,
    ours: Option<&Destination>,
    out: &mut dyn Write,
) -> io::Result<Option<usize>> {
    let targets: Vec<QueueEntry> = match id {
        Some(id) => match spool.find(id)? {
            Some((Area::Queue, e)) => vec![e],
            _ => return Ok(None),
        },
        None => spool
            .list(Area::Queue)?
            .into_iter()
            .filter(|e| e.destination.is_some() && (ours.is_none() || is_other(e, ours)))
            .collect(),
    };
    let mut adopted = 0;
    for e in targets {
        if spool.set_destination(&e.id, ours)? {
            adopted += 1;
            let was = e.destination.as_ref().map(|d| d.to_string());
            let was = was.as_deref().unwrap_or("not recorded");
            match ours {
                Some(d) => writeln!(out, "{}: now for {d} (was {was})", e.id)?,
                None => writeln!(
                    out,
                    "{}: destination forgotten (was {was}); the next relay to read the queue delivers it",
                    e.id
                )?,
            }
        }
    }
    if adopted > 0 {
        spool.adopted()?;
    }
    writeln!(
        out,
        "adopted {adopted} message(s); asked a running relay to re-read the queue"
    )?;
    Ok(Some(adopted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(mailbox: &str, upstream: &str) -> Destination {
        Destination {
            tenant: "t".into(),
            client_id: "c".into(),
            mailbox: mailbox.into(),
            upstream: upstream.into(),
        }
    }

    fn entry(id: &str, d: Option<Destination>) -> QueueEntry {
        let mut e = QueueEntry::new(id.into(), "a@x".into(), vec!["b@y".into()], "m".into(), 1);
        e.destination = d;
        e
    }

    #[test]
    fn the_configuration_names_a_destination_like_the_relay() {
        let mut config = Config::default();
        assert_eq!(configured(&config), None, "no account configured");
        config.account = vec![crate::config::AccountConfig {
            tenant: Some("t".into()),
            client_id: Some("c".into()),
            mailbox: Some("relay@x".into()),
            ..Default::default()
        }];
        config.upstream.address = Some(" smtp.office365.com:587".into());
        assert_eq!(
            configured(&config),
            Some(dest("relay@x", "smtp.office365.com:587"))
        );
    }

    #[test]
    fn cells_mark_other_destinations() {
        let ours = dest("relay@x", "smtp.office365.com:587");
        let mine = entry("a", Some(ours.clone()));
        let other = entry("b", Some(dest("relay@sandbox.example", "sandbox")));
        let old = entry("c", None);
        assert_eq!(
            for_cell(&mine, Some(&ours)),
            "relay@x via smtp.office365.com:587"
        );
        assert_eq!(
            for_cell(&other, Some(&ours)),
            "OTHER: relay@sandbox.example via sandbox"
        );
        assert_eq!(
            for_cell(&other, None),
            "relay@sandbox.example via sandbox",
            "unknown configuration: nothing to compare with"
        );
        assert!(for_cell(&old, Some(&ours)).starts_with("unrecorded"));
        assert!(!is_other(&old, Some(&ours)));
        assert!(describe(&other, Some(&ours)).contains("NOT the configured destination"));
    }

    #[test]
    fn the_column_appears_only_when_the_queue_is_mixed() {
        let ours = dest("relay@x", "smtp.office365.com:587");
        let sandbox = dest("relay@sandbox.example", "sandbox");
        let mine = [
            entry("a", Some(ours.clone())),
            entry("b", Some(ours.clone())),
        ];
        assert!(!for_column_needed(&mine, Some(&ours)));
        assert!(!for_column_needed(&mine, None));
        assert!(!for_column_needed(&[], None));
        let mixed = [entry("a", Some(ours.clone())), entry("b", Some(sandbox))];
        assert!(for_column_needed(&mixed, Some(&ours)));
        assert!(for_column_needed(&mixed, None));
        assert!(for_column_needed(&[entry("c", None)], Some(&ours)));
    }

    #[tokio::test]
    async fn adopting_records_the_configured_destination_or_forgets_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path()).unwrap();
        let ours = dest("relay@x", "smtp.office365.com:587");
        for (id, d) in [
            ("mine", Some(ours.clone())),
            ("sb1", Some(dest("relay@sandbox.example", "sandbox"))),
            ("sb2", Some(dest("relay@sandbox.example", "sandbox"))),
        ] {
            let tmp = dir.path().join("incoming").join(format!("{id}.tmp"));
            std::fs::write(&tmp, b"x").unwrap();
            spool.commit(&tmp, &entry(id, d)).await.unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(
            adopt(&spool, Some("nope"), Some(&ours), &mut out).unwrap(),
            None
        );
        assert_eq!(adopt(&spool, Some("sb1"), None, &mut out).unwrap(), Some(1));
        assert_eq!(spool.find("sb1").unwrap().unwrap().1.destination, None);
        assert!(spool.take_rescan_request());
        assert_eq!(adopt(&spool, None, Some(&ours), &mut out).unwrap(), Some(1));
        let sb2 = spool.find("sb2").unwrap().unwrap().1;
        assert_eq!(
            sb2.destination,
            Some(ours.clone()),
            "written, not left open"
        );
        assert_eq!(sb2.mailbox, "relay@x");
        assert!(spool.take_rescan_request());
        assert_eq!(
            spool.find("mine").unwrap().unwrap().1.destination,
            Some(ours.clone()),
            "--all leaves the configured destination's own mail alone"
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "sb1: destination forgotten (was mailbox relay@sandbox.example via sandbox"
            ),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "sb2: now for {ours} (was mailbox relay@sandbox.example"
            )),
            "{text}"
        );
    }
}
