//! Who may send as whom, and who is inside the organisation: the sandbox's SendAs rights
//! (`SandboxOptions::send_as`, `enforce_send_as`, reference §4.3) and High Volume Email's
//! internal-only rule (`hve`, `accepted_domains`, reference §4.7, §8).
//!
//! Pure functions over addresses and options; the session driver applies the verdicts.

/// Whether `user` (the authenticated mailbox) may send as `address`: itself always, else a
/// `send_as` grant for that address or for its whole domain (`@domain`). Case-insensitive.
pub(crate) fn may_send_as(user: &str, address: &str, send_as: &[(String, String)]) -> bool {
    if address.eq_ignore_ascii_case(user) {
        return true;
    }
    let domain = address.rsplit_once('@').map(|(_, d)| d);
    send_as.iter().any(|(mailbox, grant)| {
        mailbox.eq_ignore_ascii_case(user)
            && match grant.strip_prefix('@') {
                Some(granted) => domain.is_some_and(|d| d.eq_ignore_ascii_case(granted)),
                None => grant.eq_ignore_ascii_case(address),
            }
    })
}

/// The address `user` may not send as, if any: the envelope sender first (the null reverse
/// path sends as nobody), then the `From:` header, as Exchange names the `From:` it refused.
pub(crate) fn send_as_refusal<'a>(
    user: &str,
    mail_from: &'a str,
    header_from: Option<&'a str>,
    send_as: &[(String, String)],
) -> Option<&'a str> {
    let envelope = (!mail_from.is_empty()).then_some(mail_from);
    [envelope, header_from]
        .into_iter()
        .flatten()
        .find(|address| !may_send_as(user, address, send_as))
}

/// The organisation's domains: `accepted_domains`, or when empty the domains of `mailboxes`.
pub(crate) fn accepted_domains(accepted: &[String], mailboxes: &[String]) -> Vec<String> {
    if !accepted.is_empty() {
        return accepted.to_vec();
    }
    let mut domains: Vec<String> = mailboxes
        .iter()
        .filter_map(|m| m.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        .collect();
    domains.sort();
    domains.dedup();
    domains
}

/// Whether `rcpt` is inside the organisation (its domain is one of `domains`).
pub(crate) fn is_internal(rcpt: &str, domains: &[String]) -> bool {
    rcpt.rsplit_once('@')
        .is_some_and(|(_, d)| domains.iter().any(|a| a.eq_ignore_ascii_case(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(m, a)| (m.to_string(), a.to_string()))
            .collect()
    }

    #[test]
    fn a_mailbox_sends_as_itself_and_what_it_was_granted() {
        let rights = grants(&[
            ("a@contoso.example", "shared@contoso.example"),
            ("a@contoso.example", "@brand.example"),
        ]);
        assert!(may_send_as("a@contoso.example", "A@Contoso.example", &[]));
        assert!(may_send_as(
            "a@contoso.example",
            "SHARED@contoso.example",
            &rights
        ));
        assert!(may_send_as(
            "a@contoso.example",
            "news@Brand.example",
            &rights
        ));
        assert!(!may_send_as(
            "a@contoso.example",
            "b@contoso.example",
            &rights
        ));
        assert!(!may_send_as(
            "a@contoso.example",
            "x@sub.brand.example",
            &rights
        ));
        // Rights are the grantee's only.
        assert!(!may_send_as(
            "b@contoso.example",
            "shared@contoso.example",
            &rights
        ));
        assert!(!may_send_as(
            "b@contoso.example",
            "news@brand.example",
            &rights
        ));
    }

    #[test]
    fn the_refused_address_is_the_envelope_first_then_the_header() {
        let rights = grants(&[("a@x", "shared@x")]);
        assert_eq!(
            send_as_refusal("a@x", "a@x", Some("shared@x"), &rights),
            None
        );
        assert_eq!(send_as_refusal("a@x", "a@x", None, &rights), None);
        assert_eq!(
            send_as_refusal("a@x", "b@x", Some("c@x"), &rights),
            Some("b@x")
        );
        assert_eq!(
            send_as_refusal("a@x", "a@x", Some("c@x"), &rights),
            Some("c@x")
        );
        assert_eq!(send_as_refusal("a@x", "", Some("a@x"), &rights), None);
        assert_eq!(
            send_as_refusal("a@x", "", Some("b@x"), &rights),
            Some("b@x")
        );
    }

    #[test]
    fn internal_means_an_accepted_domain() {
        let mailboxes = vec![
            "hve@Contoso.example".to_string(),
            "b@contoso.example".into(),
        ];
        let domains = accepted_domains(&[], &mailboxes);
        assert_eq!(domains, vec!["contoso.example".to_string()]);
        assert!(is_internal("colleague@CONTOSO.example", &domains));
        assert!(!is_internal("someone@example.com", &domains));
        assert!(!is_internal("someone@sub.contoso.example", &domains));
        assert!(!is_internal("no-domain", &domains));
        let set = accepted_domains(&["fabrikam.example".to_string()], &mailboxes);
        assert!(is_internal("x@fabrikam.example", &set));
        assert!(!is_internal("x@contoso.example", &set));
    }
}
