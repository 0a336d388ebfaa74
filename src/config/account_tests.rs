//! Many accounts: `[[account]]` entries, `[[route]]` rules and each account's `senders`,
//! per-account settings, the environment's named-account keys, and national clouds.

use std::net::IpAddr;
use std::path::Path;

use super::super::{Config, ConfigError, ValidConfig};
use crate::token::{Cloud, CredentialKind};

const SECRET: &str = "abc8Q~abcdefghijklmnopqrstuvwxyz01234567";
const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const APP: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn account(name: &str, mailbox: &str, extra: &str) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\ntenant = \"{TENANT}\"\nclient_id = \"{APP}\"\n\
         client_secret = \"{SECRET}\"\nmailbox = \"{mailbox}\"\n{extra}\n"
    )
}

fn load_toml(dir: &Path, text: &str, pairs: &[(&str, &str)]) -> Result<ValidConfig, ConfigError> {
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(Some(&path), &env(pairs))?.validate()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn accounts_routes_and_lanes() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}\
         [[route]]\nsenders = [\"@erp.contoso.com\"]\naccount = \"erp\"\n\
         [[route]]\nsenders = [\"billing@erp.contoso.com\"]\naccount = \"erp\"\nmailbox = \"billing@contoso.com\"\n\
         [[route]]\nsenders = [\"*\"]\nclients = [\"10.9.0.0/16\"]\naccount = \"scanners\"\n",
        account("erp", "erp@contoso.com", "rate_per_minute = 5\nmax_connections = 1"),
        account("scanners", "scans@contoso.com", "from_rewrite = \"always\"\nendpoint = \"hve\""),
    );
    let c = load_toml(dir.path(), &text, &[]).unwrap();
    let names: Vec<&str> = c.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["erp", "scanners"]);
    let lanes: Vec<(usize, &str)> = c
        .lanes
        .iter()
        .map(|l| (l.account, l.mailbox.as_str()))
        .collect();
    assert_eq!(
        lanes,
        [
            (0, "erp@contoso.com"),
            (1, "scans@contoso.com"),
            (0, "billing@contoso.com")
        ]
    );
    let route = |s: &str, from: &str| c.routes.route(s, ip(from), None);
    assert_eq!(route("clerk@erp.contoso.com", "127.0.0.1"), Some(0));
    assert_eq!(route("billing@erp.contoso.com", "127.0.0.1"), Some(2));
    assert_eq!(route("scan@printers.local", "10.9.1.1"), Some(1));
    assert_eq!(route("scan@printers.local", "127.0.0.1"), None);
    // Per-account limits and endpoint.
    let (erp, scans) = (&c.accounts[0], &c.accounts[1]);
    assert_eq!((erp.limits.rate, erp.limits.max_connections), (5, 1));
    assert_eq!(erp.upstream.max_connections, 1);
    assert_eq!(scans.limits.rate, 30, "the [governor] default");
    assert_eq!(
        (scans.upstream.host.as_str(), scans.upstream.port),
        ("smtp-hve.office365.com", 587)
    );
    assert_eq!(scans.upstream.endpoint, crate::upstream::Endpoint::Hve);
    assert!(
        scans.refresh_margin.as_secs() >= 660,
        "HVE needs 10 minutes of token life"
    );
    assert_eq!(erp.upstream.host, "smtp.office365.com");
    // The lane's delivery settings carry its account's sender policy.
    assert_eq!(
        c.lane_delivery(&c.lanes[1]).from_rewrite,
        crate::delivery::FromRewrite::Always
    );
}

#[test]
fn several_accounts_need_names_routes_and_known_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let unnamed = format!(
        "{}[[account]]\ntenant = \"{TENANT}\"\nclient_id = \"{APP}\"\nclient_secret = \"{SECRET}\"\nmailbox = \"b@c.com\"\n",
        account("a", "a@c.com", "")
    );
    let e = load_toml(dir.path(), &unnamed, &[]).unwrap_err();
    assert_eq!(e.key, "account[2].name");

    let twice = format!(
        "{}{}",
        account("a", "a@c.com", ""),
        account("A", "b@c.com", "")
    );
    let e = load_toml(dir.path(), &twice, &[]).unwrap_err();
    assert!(e.message.contains("two accounts are named"), "{e}");

    let no_routes = format!(
        "{}{}",
        account("a", "a@c.com", ""),
        account("b", "b@c.com", "")
    );
    let e = load_toml(dir.path(), &no_routes, &[]).unwrap_err();
    assert_eq!(e.key, "route");
    assert!(e.message.contains("senders"), "{e}");

    let unknown = format!("{no_routes}[[route]]\nsenders = [\"*\"]\naccount = \"c\"\n");
    let e = load_toml(dir.path(), &unknown, &[]).unwrap_err();
    assert_eq!(e.key, "route[1].account");
    assert!(e.message.contains("the accounts are: a, b"), "{e}");

    let bad_sender =
        format!("{no_routes}[[route]]\nsenders = [\"erp.contoso.com\"]\naccount = \"a\"\n");
    let e = load_toml(dir.path(), &bad_sender, &[]).unwrap_err();
    assert_eq!(e.key, "route[1].senders");

    // A key of one account is named with the account.
    let e = load_toml(
        dir.path(),
        &format!("{no_routes}[[route]]\nsenders = [\"*\"]\naccount = \"a\"\n").replace(
            "mailbox = \"b@c.com\"",
            "mailbox = \"b@c.com\"\ntenat = \"x\"",
        ),
        &[],
    )
    .unwrap_err();
    assert_eq!(e.key, "account.b.tenat");
    assert!(e.message.contains("did you mean `tenant`"), "{e}");
    // And a bad value too.
    let e = load_toml(
        dir.path(),
        &format!("{no_routes}[[route]]\nsenders = [\"*\"]\naccount = \"a\"\n")
            .replace("mailbox = \"b@c.com\"", "mailbox = \"not an address\""),
        &[],
    )
    .unwrap_err();
    assert_eq!(e.key, "account.b.mailbox");
}

#[test]
fn the_environment_sets_named_accounts_and_refuses_ambiguity() {
    let dir = tempfile::tempdir().unwrap();
    let two = format!(
        "{}{}",
        account("erp", "erp@contoso.com", "senders = [\"@erp.contoso.com\"]"),
        account("scanners", "scans@contoso.com", "senders = [\"*\"]")
    );
    // A single-account variable cannot say which account it means.
    let e = load_toml(
        dir.path(),
        &two,
        &[("SMTP_OAUTH_RELAY_MAILBOX", "x@contoso.com")],
    )
    .unwrap_err();
    assert_eq!(e.key, "account.mailbox");
    assert!(
        e.message
            .contains("SMTP_OAUTH_RELAY__ACCOUNT__<NAME>__MAILBOX"),
        "{e}"
    );
    // A named one can, and numbers from the environment are numbers.
    let c = load_toml(
        dir.path(),
        &two,
        &[
            (
                "SMTP_OAUTH_RELAY__ACCOUNT__ERP__MAILBOX",
                "orders@contoso.com",
            ),
            ("SMTP_OAUTH_RELAY__ACCOUNT__SCANNERS__RATE_PER_MINUTE", "7"),
        ],
    )
    .unwrap();
    assert_eq!(c.accounts[0].mailbox, "orders@contoso.com");
    assert_eq!(c.accounts[1].limits.rate, 7);
    assert_eq!(
        c.routes.route("x@erp.contoso.com", ip("127.0.0.1"), None),
        Some(0)
    );
    assert_eq!(
        c.routes.route("x@elsewhere.example", ip("127.0.0.1"), None),
        Some(1)
    );

    // Accounts from the environment alone, with their senders as lists.
    let mut pairs = Vec::new();
    for (name, mailbox, senders) in [
        (
            "ERP",
            "erp@contoso.com",
            "@erp.contoso.com,billing@contoso.com",
        ),
        ("SCANNERS", "scans@contoso.com", "*"),
    ] {
        for (key, value) in [
            ("TENANT", TENANT),
            ("CLIENT_ID", APP),
            ("CLIENT_SECRET", SECRET),
            ("MAILBOX", mailbox),
            ("SENDERS", senders),
        ] {
            pairs.push((
                format!("SMTP_OAUTH_RELAY__ACCOUNT__{name}__{key}"),
                value.to_string(),
            ));
        }
    }
    let c = Config::load(None, &pairs).unwrap().validate().unwrap();
    let names: Vec<&str> = c.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["erp", "scanners"]);
    assert_eq!(
        c.routes.route("Billing@Contoso.com", ip("127.0.0.1"), None),
        Some(0)
    );
    assert_eq!(
        c.routes.route("printer@lan.example", ip("127.0.0.1"), None),
        Some(1)
    );
}

#[test]
fn one_account_takes_every_sender_unless_routes_say_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let one = account("default", "relay@contoso.com", "");
    let c = load_toml(dir.path(), &one, &[]).unwrap();
    assert_eq!(c.routes.route("", ip("10.0.0.1"), None), Some(0));
    let limited = format!("{one}[[route]]\nsenders = [\"@contoso.com\"]\n");
    let c = load_toml(dir.path(), &limited, &[]).unwrap();
    assert_eq!(
        c.routes.route("a@contoso.com", ip("127.0.0.1"), None),
        Some(0)
    );
    assert_eq!(
        c.routes.route("a@fabrikam.com", ip("127.0.0.1"), None),
        None
    );
}

#[test]
fn national_clouds_choose_the_hosts_and_scope() {
    let pairs = [
        ("SMTP_OAUTH_RELAY_TENANT", TENANT),
        ("SMTP_OAUTH_RELAY_CLIENT_ID", APP),
        ("SMTP_OAUTH_RELAY_CLIENT_SECRET", SECRET),
        ("SMTP_OAUTH_RELAY_MAILBOX", "relay@contoso.us"),
        ("SMTP_OAUTH_RELAY_CLOUD", "usgov"),
    ];
    let c = Config::load(None, &env(&pairs))
        .unwrap()
        .validate()
        .unwrap();
    let a = c.account();
    assert_eq!(a.cloud, Cloud::Usgov);
    assert_eq!(
        a.credential.token_url,
        format!("https://login.microsoftonline.us/{TENANT}/oauth2/v2.0/token")
    );
    assert_eq!(a.credential.scope, "https://outlook.office365.us/.default");
    assert_eq!(a.upstream.host, "smtp.office365.us");
    assert_eq!(a.credential.credential.kind(), CredentialKind::Secret);

    let mut china = pairs.to_vec();
    china[4] = ("SMTP_OAUTH_RELAY_CLOUD", "china");
    let c = Config::load(None, &env(&china))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(c.account().upstream.host, "smtp.partner.outlook.cn");
    assert!(c
        .account()
        .credential
        .token_url
        .starts_with("https://login.partner.microsoftonline.cn/"));
    // The authority and upstream still override the cloud's defaults (tests, proxies).
    let mut own = pairs.to_vec();
    own.push(("SMTP_OAUTH_RELAY_AUTHORITY", "https://127.0.0.1:8443"));
    own.push(("SMTP_OAUTH_RELAY_UPSTREAM", "127.0.0.1:2587"));
    let c = Config::load(None, &env(&own)).unwrap().validate().unwrap();
    assert!(c
        .account()
        .credential
        .token_url
        .starts_with("https://127.0.0.1:8443/"));
    assert_eq!(c.account().upstream.port, 2587);
    assert_eq!(
        c.account().credential.scope,
        "https://outlook.office365.us/.default"
    );

    let mut bad = pairs.to_vec();
    bad[4] = ("SMTP_OAUTH_RELAY_CLOUD", "gcc");
    let e = Config::load(None, &env(&bad)).unwrap_err();
    assert_eq!(e.key, "account.cloud");
}

#[test]
fn one_mailbox_of_one_app_is_served_by_one_account() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        format!(
        "{}{}[[route]]\nsenders = [\"*\"]\naccount = \"devices\"\nmailbox = \"erp@contoso.com\"\n",
        account("erp", "erp@contoso.com", "senders = [\"@erp.contoso.com\"]"),
        account("devices", "devices@contoso.com", "from_rewrite = \"always\""),
    );
    let e = load_toml(dir.path(), &text, &[]).unwrap_err();
    assert_eq!(e.key, "account.devices.mailbox");
    assert!(e.message.contains("both send as erp@contoso.com"), "{e}");
    // Another app's account may send as the same address: its own destination.
    let other_app = text.replacen(APP, "bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee", 2);
    let other_app = other_app.replacen("bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee", APP, 1);
    assert!(load_toml(dir.path(), &other_app, &[]).is_ok());
}

#[test]
fn errors_of_a_named_account_name_its_own_variables() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[[account]]\nname = \"scans\"\ntenant = \"{TENANT}\"\nclient_id = \"{APP}\"\n\
         mailbox = \"s@contoso.com\"\ncredential = \"workload-identity\"\nsenders = [\"*\"]\n",
        account("erp", "erp@contoso.com", "senders = [\"@erp.contoso.com\"]"),
    );
    let e = load_toml(dir.path(), &text, &[]).unwrap_err();
    assert_eq!(e.key, "account.scans.federated_token_file");
    assert!(
        e.message
            .contains("SMTP_OAUTH_RELAY__ACCOUNT__SCANS__FEDERATED_TOKEN_FILE"),
        "{e}"
    );
    assert!(!e.message.contains("AZURE_"), "{e}");
    let no_secret = text.replace("credential = \"workload-identity\"\n", "");
    let e = load_toml(dir.path(), &no_secret, &[]).unwrap_err();
    assert!(
        e.message
            .contains("SMTP_OAUTH_RELAY__ACCOUNT__SCANS__CLIENT_SECRET_FILE"),
        "{e}"
    );
    assert!(
        e.message
            .contains("SMTP_OAUTH_RELAY__ACCOUNT__SCANS__CLIENT_SECRET "),
        "{e}"
    );
}
