//! Whose each queued message is, as the queue commands show it, and `queue adopt`.
//!
//! Every queued message records the destination it was accepted for (tenant, client,
//! mailbox, upstream); a relay never delivers another destination's mail (see
//! `spool::destination`). `queue list` shows each message's destination and marks those that
//! differ from the configured one. `queue adopt` is the way out for mail the operator does
//! want this relay to send: it forgets the recorded destination, and the next relay that
//! reads the queue (a running one within about two seconds) takes the message as its own.

use std::io::{self, Write};

use crate::config::{split_host_port, upstream_address, Config};
use crate::spool::destination::{owner, Owner};
use crate::spool::{Area, Destination, QueueEntry, Spool};

/// The destinations the configuration names, each when it names one completely (the queue
/// commands do not need a valid account, so it may not): every account's own mailbox, in the
/// file's order, then the other mailboxes `[[route]]` entries name. Built like the relay
/// builds its lanes (`app::lane_destination`). The first is the one `queue adopt` records.
pub fn configured(config: &Config) -> Vec<Destination> {
    let of = |a: &crate::config::AccountConfig, mailbox: Option<&String>| -> Option<Destination> {
        let address = upstream_address(a, config.upstream.address.as_deref());
        let (host, port) = split_host_port(&address)?;
        Some(Destination {
            tenant: a.tenant.clone()?,
            client_id: a.client_id.clone()?,
            mailbox: mailbox.or(a.mailbox.as_ref())?.trim().to_string(),
            upstream: format!("{host}:{port}"),
        })
    };
    let mut out: Vec<Destination> = config.account.iter().filter_map(|a| of(a, None)).collect();
    for r in &config.route {
        let Some(mailbox) = &r.mailbox else { continue };
        let account = match &r.account {
            Some(name) => config.account.iter().find(|a| {
                a.name
                    .as_deref()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(name.trim()))
            }),
            None if config.account.len() == 1 => config.account.first(),
            None => None,
        };
        if let Some(d) = account.and_then(|a| of(a, Some(mailbox))) {
            if !out.iter().any(|o| o.same_as(&d)) {
                out.push(d);
            }
        }
    }
    out
}

/// Whether `e` is recorded for a destination none of `ours` is (never, when `ours` is empty,
/// or when `e` has none recorded: a relay adopts those).
pub fn is_other(e: &QueueEntry, ours: &[Destination]) -> bool {
    !ours.is_empty() && ours.iter().all(|o| matches!(owner(e, o), Owner::Other(_)))
}

/// Whether `queue list` needs its `FOR` column: some message is unrecorded or for another
/// destination than the configured one (or, with none configured, they are not all for the
/// same one). A queue that is all the relay's own keeps the table as it always was.
pub fn for_column_needed(entries: &[QueueEntry], ours: &[Destination]) -> bool {
    let first = entries.first().and_then(|e| e.destination.as_ref());
    entries.iter().any(|e| match &e.destination {
        None => true,
        Some(_) if !ours.is_empty() => is_other(e, ours) || ours.len() > 1,
        Some(d) => !first.is_some_and(|f| f.same_as(d)),
    })
}

/// The end of `queue list`'s summary line when messages are kept for another destination.
pub fn others_note(entries: &[QueueEntry], ours: &[Destination]) -> String {
    match entries.iter().filter(|e| is_other(e, ours)).count() {
        0 => String::new(),
        n => format!(
            ", {n} for another destination (OTHER: kept, never delivered by this configuration's relay; see `queue adopt`)"
        ),
    }
}

/// The `FOR` cell of `queue list`: `mailbox via upstream`, marked `OTHER:` when it is not
/// the configured destination.
pub fn for_cell(e: &QueueEntry, ours: &[Destination]) -> String {
    match &e.destination {
        None => "unrecorded (any relay adopts it)".into(),
        Some(d) if is_other(e, ours) => format!("OTHER: {} via {}", d.mailbox, d.upstream),
        Some(d) => format!("{} via {}", d.mailbox, d.upstream),
    }
}

/// `queue show`'s destination line.
pub fn describe(e: &QueueEntry, ours: &[Destination]) -> String {
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
    ours: &[Destination],
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
            .filter(|e| e.destination.is_some() && (ours.is_empty() || is_other(e, ours)))
            .collect(),
    };
    let mut adopted = 0;
    for e in targets {
        if spool.set_destination(&e.id, ours.first())? {
            adopted += 1;
            let was = e.destination.as_ref().map(|d| d.to_string());
            let was = was.as_deref().unwrap_or("not recorded");
            match ours.first() {
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
        assert_eq!(configured(&config), vec![], "no account configured");
        config.account = vec![crate::config::AccountConfig {
            tenant: Some("t".into()),
            client_id: Some("c".into()),
            mailbox: Some("relay@x".into()),
            ..Default::default()
        }];
        config.upstream.address = Some(" smtp.office365.com:587".into());
        assert_eq!(
            configured(&config),
            vec![dest("relay@x", "smtp.office365.com:587")]
        );
    }

    #[test]
    fn several_accounts_and_route_mailboxes_are_all_ours() {
        let account = |name: &str, mailbox: &str| crate::config::AccountConfig {
            name: Some(name.into()),
            tenant: Some("t".into()),
            client_id: Some("c".into()),
            mailbox: Some(mailbox.into()),
            ..Default::default()
        };
        let mut config = Config::default();
        config.account = vec![account("erp", "erp@x"), account("scans", "scans@x")];
        config.route = vec![crate::config::RouteConfig {
            senders: vec!["@billing.x".into()],
            account: Some("ERP".into()),
            mailbox: Some("billing@x".into()),
            ..Default::default()
        }];
        let ours = configured(&config);
        let mailboxes: Vec<&str> = ours.iter().map(|d| d.mailbox.as_str()).collect();
        assert_eq!(mailboxes, ["erp@x", "scans@x", "billing@x"]);
        assert!(ours.iter().all(|d| d.upstream == "smtp.office365.com:587"));
        // A lane's mail is not another relay's; a stranger's is.
        let scans = entry("s", Some(ours[1].clone()));
        let billing = entry("b", Some(ours[2].clone()));
        let stranger = entry("x", Some(dest("relay@sandbox.example", "sandbox")));
        assert!(!is_other(&scans, &ours));
        assert!(!is_other(&billing, &ours));
        assert!(is_other(&stranger, &ours));
        assert!(!for_cell(&scans, &ours).starts_with("OTHER"));
        // With several mailboxes the FOR column says which one each message is for.
        assert!(for_column_needed(&[scans, billing], &ours));
    }

    #[test]
    fn cells_mark_other_destinations() {
        let ours = dest("relay@x", "smtp.office365.com:587");
        let mine = entry("a", Some(ours.clone()));
        let other = entry("b", Some(dest("relay@sandbox.example", "sandbox")));
        let old = entry("c", None);
        assert_eq!(
            for_cell(&mine, std::slice::from_ref(&ours)),
            "relay@x via smtp.office365.com:587"
        );
        assert_eq!(
            for_cell(&other, std::slice::from_ref(&ours)),
            "OTHER: relay@sandbox.example via sandbox"
        );
        assert_eq!(
            for_cell(&other, &[]),
            "relay@sandbox.example via sandbox",
            "unknown configuration: nothing to compare with"
        );
        assert!(for_cell(&old, std::slice::from_ref(&ours)).starts_with("unrecorded"));
        assert!(!is_other(&old, std::slice::from_ref(&ours)));
        assert!(describe(&other, std::slice::from_ref(&ours))
            .contains("NOT the configured destination"));
    }

    #[test]
    fn the_column_appears_only_when_the_queue_is_mixed() {
        let ours = dest("relay@x", "smtp.office365.com:587");
        let sandbox = dest("relay@sandbox.example", "sandbox");
        let mine = [
            entry("a", Some(ours.clone())),
            entry("b", Some(ours.clone())),
        ];
        assert!(!for_column_needed(&mine, std::slice::from_ref(&ours)));
        assert!(!for_column_needed(&mine, &[]));
        assert!(!for_column_needed(&[], &[]));
        let mixed = [entry("a", Some(ours.clone())), entry("b", Some(sandbox))];
        assert!(for_column_needed(&mixed, std::slice::from_ref(&ours)));
        assert!(for_column_needed(&mixed, &[]));
        assert!(for_column_needed(
            &[entry("c", None)],
            std::slice::from_ref(&ours)
        ));
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
            adopt(&spool, Some("nope"), std::slice::from_ref(&ours), &mut out).unwrap(),
            None
        );
        assert_eq!(adopt(&spool, Some("sb1"), &[], &mut out).unwrap(), Some(1));
        assert_eq!(spool.find("sb1").unwrap().unwrap().1.destination, None);
        assert!(spool.take_rescan_request());
        assert_eq!(
            adopt(&spool, None, std::slice::from_ref(&ours), &mut out).unwrap(),
            Some(1)
        );
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
