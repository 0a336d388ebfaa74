//! Whose mail a queued message is: the destination it was accepted for (tenant, client,
//! mailbox, upstream), recorded in its envelope file, and the pure rule that decides whether
//! a relay may deliver it.
//!
//! A spool can be shared by mistake: a quick start with `serve --sandbox` and a real `serve`
//! from the same folder, or two relays configured for different tenants. Each relay delivers
//! only what was accepted for its own destination and keeps everything else untouched.
//! Envelopes written before the field existed have no destination; the relay that reads them
//! first adopts them (an upgrade must not strand queued mail) and says so in its log.

pub use super::entry::Destination;
use super::entry::QueueEntry;

/// Whose a queued message is, for the relay whose destination is `ours`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Accepted for this destination: deliver it.
    Ours,
    /// Written before destinations were recorded: this relay adopts it.
    Unrecorded,
    /// Accepted for another destination: keep it, never deliver it.
    Other(Destination),
}

/// Decides whose `entry` is. Pure.
pub fn owner(entry: &QueueEntry, ours: &Destination) -> Owner {
    match &entry.destination {
        None => Owner::Unrecorded,
        Some(d) if d.same_as(ours) => Owner::Ours,
        Some(d) => Owner::Other(d.clone()),
    }
}

/// The queue on disk as one relay sees it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sorted {
    /// What this relay delivers: its own messages, and the adopted unrecorded ones (now
    /// carrying `ours`, written with it at their next update).
    pub mine: Vec<QueueEntry>,
    /// How many of `mine` had no recorded destination.
    pub adopted: usize,
    /// Messages for other destinations, counted per destination (in order of first sight).
    pub others: Vec<(Destination, usize)>,
}

impl Sorted {
    /// How many messages are kept for other destinations.
    pub fn others_total(&self) -> usize {
        self.others.iter().map(|(_, n)| n).sum()
    }
}

/// Splits queued entries into this relay's (adopting unrecorded ones) and other
/// destinations'. Pure.
pub fn sort(entries: Vec<QueueEntry>, ours: &Destination) -> Sorted {
    sort_among(
        entries,
        &Lane {
            ours,
            siblings: &[],
            adopts: true,
        },
    )
}

/// One lane of a relay that sends through several mailboxes: its own destination, those of
/// the relay's other lanes (their mail is theirs, not another relay's), and whether it is
/// the lane that adopts unrecorded mail (the first).
#[derive(Debug, Clone, Copy)]
pub struct Lane<'a> {
    pub ours: &'a Destination,
    pub siblings: &'a [Destination],
    pub adopts: bool,
}

/// [`sort`] for one lane of several: entries of sibling lanes are left out (neither mine nor
/// another relay's), and only the adopting lane takes unrecorded ones. Pure.
pub fn sort_among(entries: Vec<QueueEntry>, lane: &Lane<'_>) -> Sorted {
    let ours = lane.ours;
    let mut sorted = Sorted::default();
    for mut e in entries {
        match owner(&e, ours) {
            Owner::Ours => sorted.mine.push(e),
            Owner::Unrecorded if !lane.adopts => {}
            Owner::Other(d) if lane.siblings.iter().any(|s| s.same_as(&d)) => {}
            Owner::Unrecorded => {
                e.destination = Some(ours.clone());
                e.mailbox = ours.mailbox.clone();
                sorted.adopted += 1;
                sorted.mine.push(e);
            }
            Owner::Other(d) => match sorted.others.iter_mut().find(|(o, _)| o.same_as(&d)) {
                Some((_, n)) => *n += 1,
                None => sorted.others.push((d, 1)),
            },
        }
    }
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(tenant: &str, client: &str, mailbox: &str, upstream: &str) -> Destination {
        Destination {
            tenant: tenant.into(),
            client_id: client.into(),
            mailbox: mailbox.into(),
            upstream: upstream.into(),
        }
    }

    fn real() -> Destination {
        dest(
            "contoso.onmicrosoft.com",
            "aaaaaaaa-0000-0000-0000-000000000001",
            "relay@contoso.com",
            "smtp.office365.com:587",
        )
    }

    fn entry(id: &str, d: Option<Destination>) -> QueueEntry {
        let mut e = QueueEntry::new(id.into(), "a@x".into(), vec!["b@y".into()], "m".into(), 1);
        e.destination = d;
        e
    }

    #[test]
    fn same_destination_ignores_case_and_spaces() {
        let other = dest(
            " Contoso.onmicrosoft.com",
            "AAAAAAAA-0000-0000-0000-000000000001",
            "Relay@Contoso.com ",
            "SMTP.office365.com:587",
        );
        assert!(real().same_as(&other));
        assert_eq!(owner(&entry("m", Some(other)), &real()), Owner::Ours);
    }

    #[test]
    fn any_differing_part_makes_it_another_destination() {
        let base = real();
        let variants = [
            Destination {
                tenant: "fabrikam.onmicrosoft.com".into(),
                ..base.clone()
            },
            Destination {
                client_id: "aaaaaaaa-0000-0000-0000-000000000002".into(),
                ..base.clone()
            },
            Destination {
                mailbox: "other@contoso.com".into(),
                ..base.clone()
            },
            Destination {
                upstream: "sandbox".into(),
                ..base.clone()
            },
            Destination {
                upstream: "smtp.office365.com:25".into(),
                ..base.clone()
            },
        ];
        for v in variants {
            assert!(!base.same_as(&v), "{v}");
            assert_eq!(
                owner(&entry("m", Some(v.clone())), &base),
                Owner::Other(v.clone())
            );
        }
    }

    #[test]
    fn unrecorded_entries_are_adopted_and_others_counted() {
        let sandbox = dest("t", "c", "relay@sandbox.example", "sandbox");
        let other_mailbox = Destination {
            mailbox: "x@contoso.com".into(),
            ..real()
        };
        let sorted = sort(
            vec![
                entry("old", None),
                entry("mine", Some(real())),
                entry("sb1", Some(sandbox.clone())),
                entry("mb", Some(other_mailbox.clone())),
                entry("sb2", Some(sandbox.clone())),
            ],
            &real(),
        );
        let ids: Vec<&str> = sorted.mine.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["old", "mine"]);
        assert_eq!(sorted.adopted, 1);
        assert!(
            sorted
                .mine
                .iter()
                .all(|e| e.destination.as_ref() == Some(&real())),
            "adopted entries carry our destination"
        );
        assert_eq!(sorted.others, vec![(sandbox, 2), (other_mailbox, 1)]);
        assert_eq!(sorted.others_total(), 3);
    }

    #[test]
    fn lanes_leave_each_others_mail_alone() {
        let first = real();
        let second = Destination {
            mailbox: "billing@contoso.com".into(),
            ..real()
        };
        let stranger = dest("t", "c", "relay@sandbox.example", "sandbox");
        let entries = vec![
            entry("old", None),
            entry("a", Some(first.clone())),
            entry("b", Some(second.clone())),
            entry("x", Some(stranger.clone())),
        ];
        let siblings_of_first = [second.clone()];
        let sorted = sort_among(
            entries.clone(),
            &Lane {
                ours: &first,
                siblings: &siblings_of_first,
                adopts: true,
            },
        );
        let ids: Vec<&str> = sorted.mine.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["old", "a"]);
        assert_eq!(sorted.others, vec![(stranger.clone(), 1)]);
        let siblings_of_second = [first.clone()];
        let sorted = sort_among(
            entries,
            &Lane {
                ours: &second,
                siblings: &siblings_of_second,
                adopts: false,
            },
        );
        let ids: Vec<&str> = sorted.mine.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["b"], "only the first lane adopts unrecorded mail");
        assert_eq!(sorted.adopted, 0);
        assert_eq!(sorted.others, vec![(stranger, 1)]);
    }

    #[test]
    fn an_envelope_without_the_field_still_reads() {
        let mut json = serde_json::to_value(entry("m", Some(real()))).unwrap();
        json.as_object_mut().unwrap().remove("destination");
        let read: QueueEntry = serde_json::from_value(json).unwrap();
        assert_eq!(read.destination, None);
        let written = serde_json::to_value(entry("m", Some(real()))).unwrap();
        assert_eq!(written["destination"]["upstream"], "smtp.office365.com:587");
        assert_eq!(written["destination"]["tenant"], "contoso.onmicrosoft.com");
    }
}
