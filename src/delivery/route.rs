//! Sender routing: which account and mailbox a message goes out through, decided from its
//! envelope sender and the client's address (DESIGN §7, issue 12). Pure: rules in, a lane
//! index out, with a table-driven test.
//!
//! A rule lists sender patterns (an exact address, `@domain`, or `*`) and, optionally, the
//! client networks it applies to. The most specific match wins: an exact address beats a
//! domain, a domain beats `*`; at the same level a rule limited to client networks beats one
//! that is not; at a tie the rule written first wins. A sender no rule matches is refused at
//! `MAIL FROM` (`550 5.7.1`), so mail never leaves through a mailbox nobody chose for it.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// One sender pattern of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderPattern {
    /// This address (compared without regard to case).
    Exact(String),
    /// Any address at this domain (`@contoso.com`; not its subdomains).
    Domain(String),
    /// Any sender, the null sender `<>` included.
    Any,
}

impl SenderPattern {
    /// Parses `user@domain`, `@domain` or `*`. The error says what is wrong, in words.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t == "*" {
            return Ok(SenderPattern::Any);
        }
        if let Some(domain) = t.strip_prefix('@') {
            if domain.is_empty() || domain.contains('@') || domain.contains(char::is_whitespace) {
                return Err(format!(
                    "`{t}` is not a domain pattern such as @contoso.com"
                ));
            }
            return Ok(SenderPattern::Domain(domain.to_ascii_lowercase()));
        }
        match t.rsplit_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && !domain.is_empty()
                    && !t.contains(|c: char| c.is_whitespace() || "<>".contains(c)) =>
            {
                Ok(SenderPattern::Exact(t.to_ascii_lowercase()))
            }
            _ => Err(format!(
                "`{t}` is not a sender pattern: write an address (app@contoso.com), a domain \
                 (@contoso.com) or * (any sender)"
            )),
        }
    }

    /// How specific a match of this pattern is: higher wins.
    fn level(&self) -> u8 {
        match self {
            SenderPattern::Exact(_) => 3,
            SenderPattern::Domain(_) => 2,
            SenderPattern::Any => 1,
        }
    }

    /// Whether `address` matches any of `patterns` (case does not matter).
    pub fn any_matches(patterns: &[SenderPattern], address: &str) -> bool {
        let address = address.trim().to_ascii_lowercase();
        patterns.iter().any(|p| p.matches(&address))
    }

    /// Whether `sender` (already lower-case) matches.
    fn matches(&self, sender: &str) -> bool {
        match self {
            SenderPattern::Exact(a) => a == sender,
            SenderPattern::Domain(d) => sender
                .rsplit_once('@')
                .is_some_and(|(_, domain)| domain == d),
            SenderPattern::Any => true,
        }
    }
}

impl fmt::Display for SenderPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SenderPattern::Exact(a) => f.write_str(a),
            SenderPattern::Domain(d) => write!(f, "@{d}"),
            SenderPattern::Any => f.write_str("*"),
        }
    }
}

/// One routing rule: these senders (from these clients, if listed) go out through `lane`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub senders: Vec<SenderPattern>,
    /// Client networks the rule is limited to; empty means any client.
    pub clients: Vec<IpNet>,
    /// Inbound users (AUTH) the rule is limited to; empty means any client, logged in or not.
    pub users: Vec<String>,
    /// Index of the lane (account and mailbox) the rule sends through.
    pub lane: usize,
}

/// The routing table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    rules: Vec<Rule>,
}

impl Routes {
    pub fn new(rules: Vec<Rule>) -> Self {
        Routes { rules }
    }

    /// Every sender from every client to lane 0: the single-account relay.
    pub fn everything_to_first() -> Self {
        Routes::new(vec![Rule {
            senders: vec![SenderPattern::Any],
            clients: Vec::new(),
            users: Vec::new(),
            lane: 0,
        }])
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The lane for mail from `sender` (empty for `<>`) sent by `client`, logged in as
    /// `user` (inbound AUTH) if at all, or `None` when no rule matches. At the same sender
    /// level a rule limited to users beats one limited to networks, which beats an open one.
    pub fn route(&self, sender: &str, client: IpAddr, user: Option<&str>) -> Option<usize> {
        // An IPv4 client of a listener on `[::]` arrives as `::ffff:a.b.c.d`.
        let client = client.to_canonical();
        let sender = sender.trim().to_ascii_lowercase();
        let mut best: Option<((u8, bool, bool), usize)> = None;
        for rule in &self.rules {
            if !rule.clients.is_empty() && !rule.clients.iter().any(|n| n.contains(&client)) {
                continue;
            }
            if !rule.users.is_empty() && !user.is_some_and(|u| rule.users.iter().any(|r| r == u)) {
                continue;
            }
            let Some(level) = rule
                .senders
                .iter()
                .filter(|p| p.matches(&sender))
                .map(SenderPattern::level)
                .max()
            else {
                continue;
            };
            let score = (level, !rule.users.is_empty(), !rule.clients.is_empty());
            // Strictly better only: at a tie the rule written first stays.
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, rule.lane));
            }
        }
        best.map(|(_, lane)| lane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(senders: &[&str], clients: &[&str], lane: usize) -> Rule {
        Rule {
            senders: senders
                .iter()
                .map(|s| SenderPattern::parse(s).unwrap())
                .collect(),
            clients: clients.iter().map(|c| c.parse().unwrap()).collect(),
            users: Vec::new(),
            lane,
        }
    }

    fn user_rule(senders: &[&str], users: &[&str], lane: usize) -> Rule {
        Rule {
            users: users.iter().map(|u| u.to_string()).collect(),
            ..rule(senders, &[], lane)
        }
    }

    #[test]
    fn routes_by_inbound_user() {
        let routes = Routes::new(vec![
            rule(&["*"], &[], 0),
            user_rule(&["*"], &["printer"], 1),
            rule(&["*"], &["10.9.0.0/16"], 2),
            user_rule(&["@erp.example"], &["erp", "erp2"], 3),
        ]);
        let lan: IpAddr = "10.9.1.2".parse().unwrap();
        let other: IpAddr = "172.16.0.1".parse().unwrap();
        let cases: &[(&str, IpAddr, Option<&str>, Option<usize>)] = &[
            ("a@x.example", other, None, Some(0)),
            ("a@x.example", other, Some("printer"), Some(1)),
            // A user rule beats a network rule at the same sender level.
            ("a@x.example", lan, Some("printer"), Some(1)),
            ("a@x.example", lan, None, Some(2)),
            ("a@x.example", lan, Some("someone"), Some(2)),
            ("clerk@erp.example", other, Some("erp2"), Some(3)),
            // Names are exact.
            ("a@x.example", other, Some("Printer"), Some(0)),
            // Not logged in: the user rule never applies.
            ("clerk@erp.example", other, None, Some(0)),
        ];
        for (sender, client, user, want) in cases {
            assert_eq!(
                routes.route(sender, *client, *user),
                *want,
                "{sender} {user:?}"
            );
        }
        let only_users = Routes::new(vec![user_rule(&["*"], &["printer"], 0)]);
        assert_eq!(only_users.route("a@b.c", other, None), None);
    }

    #[test]
    fn routing_table() {
        let routes = Routes::new(vec![
            rule(&["*"], &[], 0),
            rule(&["@erp.contoso.com"], &[], 1),
            rule(&["billing@erp.contoso.com"], &[], 2),
            rule(&["@printers.contoso.com"], &["10.9.0.0/16"], 3),
            rule(&["@printers.contoso.com"], &[], 4),
            rule(&["*"], &["192.168.7.0/24"], 5),
            rule(&["@twice.example"], &[], 6),
            rule(&["@twice.example"], &[], 7),
        ]);
        let lan = "10.9.1.2";
        let other = "172.16.0.1";
        let cases: &[(&str, &str, Option<usize>)] = &[
            // (sender, client, lane)
            ("app@anything.example", other, Some(0)),
            ("", other, Some(0)),
            ("clerk@erp.contoso.com", other, Some(1)),
            ("Clerk@ERP.Contoso.com", other, Some(1)),
            ("billing@erp.contoso.com", other, Some(2)),
            ("BILLING@erp.contoso.com", other, Some(2)),
            // A subdomain is not the domain.
            ("x@sub.erp.contoso.com", other, Some(0)),
            ("scan@printers.contoso.com", lan, Some(3)),
            // The same client through a dual-stack listener.
            ("scan@printers.contoso.com", "::ffff:10.9.1.2", Some(3)),
            ("scan@printers.contoso.com", other, Some(4)),
            // A client rule beats `*` without one, but not a domain match.
            ("cron@host.example", "192.168.7.9", Some(5)),
            ("clerk@erp.contoso.com", "192.168.7.9", Some(1)),
            // A tie: the rule written first.
            ("a@twice.example", other, Some(6)),
        ];
        for (sender, client, want) in cases {
            assert_eq!(
                routes.route(sender, client.parse().unwrap(), None),
                *want,
                "{sender} from {client}"
            );
        }
    }

    #[test]
    fn no_match_is_none() {
        let routes = Routes::new(vec![
            rule(&["@contoso.com"], &[], 0),
            rule(&["app@fabrikam.com"], &["10.0.0.0/8"], 1),
        ]);
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(routes.route("x@fabrikam.com", client, None), None);
        assert_eq!(routes.route("app@fabrikam.com", client, None), None);
        assert_eq!(routes.route("", client, None), None);
        assert_eq!(
            routes.route("app@fabrikam.com", "10.1.1.1".parse().unwrap(), None),
            Some(1)
        );
        assert_eq!(Routes::default().route("a@b.c", client, None), None);
        assert_eq!(
            Routes::everything_to_first().route("", client, None),
            Some(0)
        );
    }

    #[test]
    fn patterns() {
        assert_eq!(SenderPattern::parse(" * ").unwrap(), SenderPattern::Any);
        assert_eq!(
            SenderPattern::parse("@Contoso.com").unwrap(),
            SenderPattern::Domain("contoso.com".into())
        );
        assert_eq!(
            SenderPattern::parse("App@Contoso.com").unwrap(),
            SenderPattern::Exact("app@contoso.com".into())
        );
        for bad in ["", "@", "contoso.com", "a@", "@a@b", "<a@b>", "a b@c", "**"] {
            let e = SenderPattern::parse(bad).unwrap_err();
            assert!(e.contains('`'), "{bad}: {e}");
        }
        assert_eq!(SenderPattern::Domain("x.org".into()).to_string(), "@x.org");
    }
}
