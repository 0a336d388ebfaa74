//! Configuration: loading, environment mapping and validation.

use super::validate::validate_listen;
use super::*;
use crate::delivery::DeliveryMode;
use secrecy::ExposeSecret;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) const GOOD: &[(&str, &str)] = &[
    (
        "SMTP_OAUTH_RELAY_TENANT",
        "11111111-2222-3333-4444-555555555555",
    ),
    (
        "SMTP_OAUTH_RELAY_CLIENT_ID",
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    ),
    (
        "SMTP_OAUTH_RELAY_CLIENT_SECRET",
        "abc8Q~abcdefghijklmnopqrstuvwxyz01234567",
    ),
    ("SMTP_OAUTH_RELAY_MAILBOX", "relay@contoso.com"),
];

pub(super) fn load(extra: &[(&str, &str)]) -> Result<ValidConfig, ConfigError> {
    let mut pairs = GOOD.to_vec();
    pairs.extend_from_slice(extra);
    Config::load(None, &env(&pairs))?.validate()
}

#[test]
fn env_alone_configures_a_single_account() {
    let c = load(&[]).unwrap();
    assert_eq!(c.account().mailbox, "relay@contoso.com");
    assert_eq!(
        c.account().credential.token_url,
        "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"
    );
    assert_eq!(c.account().upstream.host, "smtp.office365.com");
    assert_eq!(c.account().upstream.port, 587);
    assert_eq!(c.listen.address, "127.0.0.1:2525".parse().unwrap());
    assert_eq!(c.delivery.mode, DeliveryMode::Hybrid);
}

#[test]
fn nested_env_and_numbers_override() {
    let c = load(&[
        ("SMTP_OAUTH_RELAY__LISTEN__MAX_RECIPIENTS", "7"),
        ("SMTP_OAUTH_RELAY_MAX_CONNECTIONS", "2"),
        ("SMTP_OAUTH_RELAY__LISTEN__RECEIVED_HEADER", "false"),
    ])
    .unwrap();
    assert_eq!(c.listen.max_recipients, 7);
    assert_eq!(c.account().upstream.max_connections, 2);
    assert!(!c.listen.received_header);
}

#[test]
fn all_digit_secret_stays_a_string() {
    let c = load(&[("SMTP_OAUTH_RELAY_CLIENT_SECRET", "12345678901234567890")]).unwrap();
    assert_eq!(secret_of(&c).expose_secret(), "12345678901234567890");
}

#[test]
fn missing_values_name_the_key() {
    let err = Config::load(None, &env(&GOOD[..3]))
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(err.key, "account.mailbox");
    assert!(err.message.contains("SMTP_OAUTH_RELAY_MAILBOX"), "{err}");
}

#[test]
fn secret_id_and_token_are_refused() {
    let err = load(&[(
        "SMTP_OAUTH_RELAY_CLIENT_SECRET",
        "0f0f0f0f-1111-2222-3333-444455556666",
    )])
    .unwrap_err();
    assert_eq!(err.key, "account.client_secret");
    assert!(err.message.contains("secret ID"));
    assert!(
        !err.to_string().contains("0f0f0f0f-1111"),
        "no echo of secret"
    );
    let err = load(&[("SMTP_OAUTH_RELAY_CLIENT_SECRET", "eyJ0eXAi.eyJhdWQi.c2ln")]).unwrap_err();
    assert!(err.message.contains("access token"));
}

#[test]
fn secret_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "abc8Q~file-secret-value-000000000000000\n").unwrap();
    let mut pairs = GOOD[..2].to_vec();
    let p = path.to_string_lossy().to_string();
    pairs.push(("SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE", &p));
    pairs.push(("SMTP_OAUTH_RELAY_MAILBOX", "relay@contoso.com"));
    let c = Config::load(None, &env(&pairs))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(
        secret_of(&c).expose_secret(),
        "abc8Q~file-secret-value-000000000000000"
    );
}

#[test]
fn jama_style_authority_supplies_tenant() {
    let mut pairs = GOOD[1..].to_vec();
    pairs.push((
        "SMTP_OAUTH_RELAY_AUTHORITY",
        "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    ));
    let c = Config::load(None, &env(&pairs))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(c.account().tenant, "11111111-2222-3333-4444-555555555555");
    assert!(c
        .account()
        .credential
        .token_url
        .ends_with("/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"));
}

#[test]
fn authority_shapes() {
    assert_eq!(
        split_authority("https://login.microsoftonline.com/").unwrap(),
        ("https://login.microsoftonline.com".into(), None)
    );
    assert_eq!(
        split_authority("https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token")
            .unwrap()
            .1
            .as_deref(),
        Some("contoso.com")
    );
    assert!(split_authority("http://login.microsoftonline.com").is_err());
    assert!(split_authority("http://127.0.0.1:8443").is_ok());
    assert!(split_authority("login.microsoftonline.com").is_err());
}

#[test]
fn tenant_aliases_refused() {
    let err = load(&[("SMTP_OAUTH_RELAY_TENANT", "common")]).unwrap_err();
    assert_eq!(err.key, "account.tenant");
    assert!(err.message.contains("AADSTS50194"));
}

#[test]
fn graph_and_permission_scopes_refused() {
    let err = load(&[(
        "SMTP_OAUTH_RELAY_SCOPE",
        "https://graph.microsoft.com/.default",
    )])
    .unwrap_err();
    assert_eq!(err.key, "account.scope");
    let err = load(&[(
        "SMTP_OAUTH_RELAY_SCOPE",
        "https://outlook.office365.com/SMTP.SendAsApp",
    )])
    .unwrap_err();
    assert!(err.message.contains("AADSTS1002012"));
}

#[test]
fn non_loopback_listen_needs_allow() {
    let err = load(&[("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525")]).unwrap_err();
    assert_eq!(err.key, "listen.allow");
    let c = Config::from_toml("[listen]\naddress = \"0.0.0.0:2525\"\nallow = [\"10.0.0.0/8\"]\n")
        .unwrap();
    assert_eq!(c.listen.allow.len(), 1);
    let l = validate_listen(&c.listen).unwrap();
    assert!(l.permits("10.1.2.3".parse().unwrap()));
    assert!(l.permits("127.0.0.1".parse().unwrap()));
    assert!(!l.permits("192.0.2.1".parse().unwrap()));
}

#[test]
fn modes_and_governor_settings() {
    assert_eq!(
        load(&[]).unwrap().delivery.mode,
        DeliveryMode::Hybrid,
        "hybrid is the default"
    );
    for (text, mode) in [
        ("queue", DeliveryMode::Queue),
        ("direct", DeliveryMode::Direct),
    ] {
        assert_eq!(
            load(&[("SMTP_OAUTH_RELAY_MODE", text)])
                .unwrap()
                .delivery
                .mode,
            mode
        );
    }
    let err = load(&[("SMTP_OAUTH_RELAY_MODE", "fast")]).unwrap_err();
    assert_eq!(err.key, "delivery.mode");
    let c = load(&[
        ("SMTP_OAUTH_RELAY_RATE_PER_MINUTE", "0"),
        ("SMTP_OAUTH_RELAY_MAX_CONNECTIONS", "0"),
    ])
    .unwrap();
    assert_eq!(c.account().limits.rate, 0);
    assert_eq!(c.account().limits.max_connections, 0);
    assert!(
        c.account().upstream.max_connections > 3,
        "0 means no pool limit"
    );
    assert_eq!(load(&[]).unwrap().account().limits.rate, 30);
}

#[test]
fn unknown_keys_and_vars_are_reported() {
    let err = Config::from_toml("[listen]\nadress = \"x\"\n").unwrap_err();
    assert!(err.message.contains("adress"), "{err}");
    let unknown = unknown_env_vars(&env(&[
        ("SMTP_OAUTH_RELAY_TENNANT", "x"),
        ("SMTP_OAUTH_RELAY_TENANT", "x"),
        ("SMTP_OAUTH_RELAY_CONFIG", "x"),
    ]));
    assert_eq!(unknown, vec!["SMTP_OAUTH_RELAY_TENNANT".to_string()]);
}

#[test]
fn debug_never_shows_the_secret() {
    let c = load(&[]).unwrap();
    let text = format!("{c:?}");
    assert!(!text.contains("abcdefghijklmnop"), "{text}");
}

#[test]
fn host_port_forms() {
    assert_eq!(
        split_host_port("smtp.office365.com:587"),
        Some(("smtp.office365.com".into(), 587))
    );
    assert_eq!(split_host_port("[::1]:25"), Some(("::1".into(), 25)));
    assert_eq!(split_host_port("smtp.office365.com"), None);
    assert_eq!(split_host_port(":25"), None);
}

#[test]
fn list_keys_from_the_environment() {
    for value in [
        r#"["10.0.0.0/8", "192.168.1.0/24"]"#,
        "10.0.0.0/8, 192.168.1.0/24",
    ] {
        let env = vec![(
            "SMTP_OAUTH_RELAY__LISTEN__ALLOW".to_string(),
            value.to_string(),
        )];
        let c = Config::load(None, &env).unwrap_or_else(|e| panic!("{value}: {e}"));
        let got: Vec<String> = c.listen.allow.iter().map(|n| n.to_string()).collect();
        assert_eq!(got, ["10.0.0.0/8", "192.168.1.0/24"], "{value}");
    }
    let env = vec![(
        "SMTP_OAUTH_RELAY__LISTEN__ALLOW".to_string(),
        "not-a-network".to_string(),
    )];
    let e = Config::load(None, &env).unwrap_err();
    assert!(e.key.starts_with("listen.allow"), "{e}");
}

/// Every key of the configuration is documented in the example file, in its section.
#[test]
fn example_config_documents_every_key() {
    let text = include_str!("../../config/relay.example.toml");
    let all = serde_json::to_value(Config::default()).unwrap();
    for (section, keys) in all.as_object().unwrap() {
        let header = format!("[{section}]");
        let start = text
            .find(&header)
            .unwrap_or_else(|| panic!("{header} missing"));
        let rest = &text[start + header.len()..];
        let body = &rest[..rest.find("\n[").unwrap_or(rest.len())];
        for key in keys.as_object().unwrap().keys() {
            let documented = body.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} ="))
            });
            assert!(
                documented,
                "`{section}.{key}` is not in config/relay.example.toml"
            );
        }
    }
    assert!(!serde_json::to_string(&Config::default())
        .unwrap()
        .contains("secret\":\"a"));
}

#[test]
fn example_config_parses() {
    let text = include_str!("../../config/relay.example.toml");
    Config::from_toml(text).expect("config/relay.example.toml must parse");
}

#[test]
fn every_unknown_key_is_named_at_once_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "[listen]\nadress = \"127.0.0.1:2525\"\ncolour = 1\n[acount]\ntenant = \"t\"\n",
    )
    .unwrap();
    let err = Config::load(
        Some(&path),
        &env(&[("SMTP_OAUTH_RELAY__DELIVERY__MODES", "queue")]),
    )
    .unwrap_err();
    for name in ["listen.adress", "listen.colour", "acount", "delivery.modes"] {
        assert!(err.key.contains(name), "{name} missing from {err}");
    }
    assert!(err.message.starts_with("4 unknown keys"), "{err}");
    assert!(err.message.contains("did you mean `address`?"), "{err}");
    assert!(err.message.contains("did you mean `account`?"), "{err}");
    assert!(err.message.contains("did you mean `mode`?"), "{err}");
}

#[test]
fn a_toml_syntax_error_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, "[listen]\naddress = 127.0.0.1:2525\n").unwrap();
    let err = Config::load(Some(&path), &[]).unwrap_err();
    assert_eq!(err.key, path.display().to_string(), "{err}");
    assert!(err.message.contains("line 2"), "{err}");
}

#[test]
fn a_quoted_secret_is_refused_without_echoing_it() {
    for quoted in [
        "\"abc8Q~abcdefghijklmnopqrstuvwxyz01234567\"",
        "'abc8Q~abcdefghijklmnopqrstuvwxyz01234567'",
    ] {
        let err = load(&[("SMTP_OAUTH_RELAY_CLIENT_SECRET", quoted)]).unwrap_err();
        assert_eq!(err.key, "account.client_secret");
        assert!(err.message.contains("quote"), "{err}");
        assert!(!err.to_string().contains("abcdefghij"), "{err}");
    }
}

#[test]
fn a_guid_in_the_secret_file_is_reported_against_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "0f0f0f0f-1111-2222-3333-444455556666\n").unwrap();
    let p = path.to_string_lossy().to_string();
    let mut pairs = GOOD[..2].to_vec();
    pairs.push(("SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE", &p));
    pairs.push(("SMTP_OAUTH_RELAY_MAILBOX", "relay@contoso.com"));
    let err = Config::load(None, &env(&pairs))
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(err.key, "account.client_secret_file");
    assert!(err.message.contains(&p), "{err}");
    assert!(err.message.contains("secret ID"), "{err}");
    assert!(!err.to_string().contains("0f0f0f0f-1111"), "{err}");
}

#[test]
fn localhost_is_accepted_and_other_names_say_what_to_type() {
    let c = load(&[("SMTP_OAUTH_RELAY_LISTEN", "localhost:2526")]).unwrap();
    assert_eq!(c.listen.address, "127.0.0.1:2526".parse().unwrap());
    let c = load(&[("SMTP_OAUTH_RELAY_ADMIN_LISTEN", "LOCALHOST:9400")]).unwrap();
    assert_eq!(c.admin, Some("127.0.0.1:9400".parse().unwrap()));
    let err = load(&[("SMTP_OAUTH_RELAY_LISTEN", "mail.example.com:25")]).unwrap_err();
    assert_eq!(err.key, "listen.address");
    assert!(err.message.contains("127.0.0.1:2525"), "{err}");
    assert!(err.message.contains("0.0.0.0:2525"), "{err}");
    let err = load(&[("SMTP_OAUTH_RELAY_LISTEN", "2525")]).unwrap_err();
    assert!(err.message.contains("write 127.0.0.1:2525"), "{err}");
}

#[test]
fn an_allow_list_open_to_everyone_is_refused() {
    for everyone in ["0.0.0.0/0", "::/0"] {
        let err = load(&[
            ("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525"),
            ("SMTP_OAUTH_RELAY__LISTEN__ALLOW", everyone),
        ])
        .unwrap_err();
        assert_eq!(err.key, "listen.allow", "{err}");
        assert!(err.message.contains("open relay"), "{err}");
    }
    assert!(load(&[
        ("SMTP_OAUTH_RELAY_LISTEN", "0.0.0.0:2525"),
        ("SMTP_OAUTH_RELAY__LISTEN__ALLOW", "10.0.0.0/8"),
    ])
    .is_ok());
}

#[test]
fn listen_slot_limits_have_defaults_and_env_overrides() {
    let l = load(&[]).unwrap().listen;
    assert_eq!(l.stress_timeout, std::time::Duration::from_secs(5));
    assert_eq!(l.max_session, std::time::Duration::from_secs(1800));
    assert_eq!(
        (
            l.max_junk_commands,
            l.max_messages_per_session,
            l.max_connections_per_client
        ),
        (100, 1000, 50)
    );
    let l = load(&[
        ("SMTP_OAUTH_RELAY__LISTEN__STRESS_TIMEOUT_SECS", "2"),
        ("SMTP_OAUTH_RELAY__LISTEN__MAX_JUNK_COMMANDS", "7"),
    ])
    .unwrap()
    .listen;
    assert_eq!(l.stress_timeout, std::time::Duration::from_secs(2));
    assert_eq!(l.max_junk_commands, 7);
    for key in [
        "stress_timeout_secs",
        "max_session_secs",
        "max_junk_commands",
        "max_messages_per_session",
        "max_connections_per_client",
    ] {
        let var = format!("SMTP_OAUTH_RELAY__LISTEN__{}", key.to_ascii_uppercase());
        let err = load(&[(var.as_str(), "0")]).unwrap_err();
        assert_eq!(err.key, format!("listen.{key}"));
    }
}

fn secret_of(c: &ValidConfig) -> secrecy::SecretString {
    match &c.account().credential.credential {
        crate::token::Credential::Secret { secret, .. } => secret.clone(),
        other => panic!("expected a client secret, got {other:?}"),
    }
}

// ---- Workload identity from the AKS webhook's AZURE_* variables (reference §1.4) ----------

/// A token file, and the webhook's four variables pointing at it.
fn azure_env(authority: &str) -> (tempfile::TempDir, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "eyJ.x.y\n").unwrap();
    let pairs = env(&[
        ("AZURE_FEDERATED_TOKEN_FILE", file.to_str().unwrap()),
        ("AZURE_CLIENT_ID", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
        ("AZURE_TENANT_ID", "11111111-2222-3333-4444-555555555555"),
        ("AZURE_AUTHORITY_HOST", authority),
        ("SMTP_OAUTH_RELAY_MAILBOX", "relay@contoso.com"),
    ]);
    (dir, pairs)
}

fn load_env(pairs: &[(String, String)]) -> Result<ValidConfig, ConfigError> {
    Config::load(None, pairs)?.validate()
}

#[test]
fn azure_variables_alone_configure_workload_identity() {
    for authority in [
        "https://login.microsoftonline.com/",
        "https://login.microsoftonline.com",
    ] {
        let (dir, pairs) = azure_env(authority);
        let c = load_env(&pairs).unwrap();
        let s = &c.account().credential;
        assert_eq!(
            s.token_url,
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token",
            "{authority}"
        );
        assert_eq!(s.client_id, "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
        assert_eq!(s.scope, "https://outlook.office365.com/.default");
        match &s.credential {
            crate::token::Credential::WorkloadIdentity { token_file } => {
                assert_eq!(token_file, &dir.path().join("azure-identity-token"))
            }
            other => panic!("expected workload identity, got {other:?}"),
        }
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}

#[test]
fn our_own_settings_win_over_azure_variables() {
    let (dir, mut pairs) = azure_env("https://login.microsoftonline.com/");
    let own = dir.path().join("own-token");
    std::fs::write(&own, "eyJ.a.b").unwrap();
    pairs.extend(env(&[
        (
            "SMTP_OAUTH_RELAY_CLIENT_ID",
            "bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee",
        ),
        ("SMTP_OAUTH_RELAY_TENANT", "contoso.onmicrosoft.com"),
        ("SMTP_OAUTH_RELAY_AUTHORITY", "https://127.0.0.1:8443/"),
        (
            "SMTP_OAUTH_RELAY_FEDERATED_TOKEN_FILE",
            own.to_str().unwrap(),
        ),
    ]));
    let c = load_env(&pairs).unwrap();
    let s = &c.account().credential;
    assert_eq!(
        s.token_url,
        "https://127.0.0.1:8443/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(s.client_id, "bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee");
    assert!(
        matches!(&s.credential, crate::token::Credential::WorkloadIdentity { token_file } if token_file == &own)
    );
}

#[test]
fn azure_variables_leave_other_credentials_alone() {
    // A client secret configured: the pod's webhook variables are not ours.
    let (_dir, mut pairs) = azure_env("https://login.microsoftonline.com/");
    pairs.extend(env(GOOD));
    let c = load_env(&pairs).unwrap();
    assert!(matches!(
        c.account().credential.credential,
        crate::token::Credential::Secret { .. }
    ));
    assert_eq!(
        c.account().credential.client_id,
        "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // A managed identity: neither the token file nor the app's tenant comes from AZURE_*.
    let (_dir, mut pairs) = azure_env("https://login.microsoftonline.com/");
    pairs.retain(|(k, _)| k != "AZURE_CLIENT_ID");
    pairs.extend(env(&[(
        "SMTP_OAUTH_RELAY_MANAGED_IDENTITY_CLIENT_ID",
        "99999999-8888-7777-6666-555555555555",
    )]));
    let e = load_env(&pairs).unwrap_err();
    assert_eq!(e.key, "account.tenant", "{e:?}");

    // Named explicitly, workload identity takes them even with a secret set (which is
    // then warned about as unused).
    let (_dir, mut pairs) = azure_env("https://login.microsoftonline.com/");
    pairs.extend(env(&[
        (
            "SMTP_OAUTH_RELAY_CLIENT_SECRET",
            "abc8Q~abcdefghijklmnopqrstuvwxyz01234567",
        ),
        ("SMTP_OAUTH_RELAY_CREDENTIAL", "workload-identity"),
    ]));
    let c = load_env(&pairs).unwrap();
    assert_eq!(
        c.account().credential.credential.kind(),
        crate::token::CredentialKind::WorkloadIdentity
    );
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(!format!("{:?}", c.warnings).contains("abc8Q~"));

    // Without the token file the other AZURE_* variables mean nothing to the relay.
    let (_dir, mut pairs) = azure_env("https://login.microsoftonline.com/");
    pairs.retain(|(k, _)| k != "AZURE_FEDERATED_TOKEN_FILE");
    let e = load_env(&pairs).unwrap_err();
    assert_eq!(e.key, "account.tenant", "{e:?}");
}

#[test]
fn managed_identity_gets_the_clouds_federation_audience() {
    for (cloud, audience) in [
        ("global", "api://AzureADTokenExchange"),
        ("usgov", "api://AzureADTokenExchangeUSGov"),
        ("china", "api://AzureADTokenExchangeChina"),
    ] {
        let c = load_env(&env(&[
            (
                "SMTP_OAUTH_RELAY_TENANT",
                "11111111-2222-3333-4444-555555555555",
            ),
            (
                "SMTP_OAUTH_RELAY_CLIENT_ID",
                "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            ),
            ("SMTP_OAUTH_RELAY_MAILBOX", "relay@contoso.com"),
            ("SMTP_OAUTH_RELAY_CLOUD", cloud),
            (
                "SMTP_OAUTH_RELAY_MANAGED_IDENTITY_CLIENT_ID",
                "99999999-8888-7777-6666-555555555555",
            ),
        ]))
        .unwrap();
        match &c.account().credential.credential {
            crate::token::Credential::ManagedIdentity {
                imds_endpoint,
                identity_client_id,
                federation_audience,
            } => {
                assert_eq!(
                    imds_endpoint,
                    "http://169.254.169.254/metadata/identity/oauth2/token"
                );
                assert_eq!(
                    identity_client_id.as_deref(),
                    Some("99999999-8888-7777-6666-555555555555")
                );
                assert_eq!(federation_audience, audience, "{cloud}");
            }
            other => panic!("expected managed identity, got {other:?}"),
        }
    }
}

#[test]
fn shared_governor_settings_are_checked_and_never_echo_the_password() {
    let c = load(&[]).unwrap();
    assert!(c.shared.is_none(), "off by default");
    assert!(
        c.account().upstream.keep_idle,
        "sessions are pooled when not shared"
    );

    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("redis-password");
    std::fs::write(&pw, "from-file-pw\n").unwrap();
    let pw = pw.display().to_string();
    let c = load(&[
        (
            "SMTP_OAUTH_RELAY_GOVERNOR_SHARED",
            "rediss://:url-pw@redis.mail.svc:6380/2",
        ),
        ("SMTP_OAUTH_RELAY_GOVERNOR_SHARED_PASSWORD_FILE", &pw),
        ("SMTP_OAUTH_RELAY_GOVERNOR_EXPECTED_REPLICAS", "4"),
    ])
    .unwrap();
    let s = c.shared.as_ref().expect("shared");
    assert_eq!(s.password.as_deref(), Some("from-file-pw"), "trimmed");
    assert_eq!(s.expected_replicas, 4);
    assert_eq!(s.display_url(), "rediss://***@redis.mail.svc:6380/2");
    assert!(
        !c.account().upstream.keep_idle,
        "shared: a session is closed after its send"
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let shown = format!("{c:?}");
    assert!(!shown.contains("url-pw") && !shown.contains("from-file-pw"));
    let mut pairs = GOOD.to_vec();
    pairs.push((
        "SMTP_OAUTH_RELAY_GOVERNOR_SHARED",
        "rediss://:url-pw@redis.mail.svc:6380/2",
    ));
    let raw = Config::load(None, &env(&pairs)).unwrap();
    for shown in [format!("{raw:?}"), serde_json::to_string(&raw).unwrap()] {
        assert!(!shown.contains("url-pw"), "{shown}");
        assert!(shown.contains("redis.mail.svc"), "{shown}");
    }

    let one = load(&[("SMTP_OAUTH_RELAY_GOVERNOR_SHARED", "redis://r:6379")]).unwrap();
    assert!(
        one.warnings
            .iter()
            .any(|w| w.contains("expected_replicas is 1")),
        "{:?}",
        one.warnings
    );

    for (pairs, key, says) in [
        (
            vec![(
                "SMTP_OAUTH_RELAY_GOVERNOR_SHARED",
                "http://:secret-pw@r:6379",
            )],
            "governor.shared",
            "redis://",
        ),
        (
            vec![(
                "SMTP_OAUTH_RELAY_GOVERNOR_SHARED",
                "redis://:secret-pw@:6379/0",
            )],
            "governor.shared",
            "no host",
        ),
        (
            vec![
                ("SMTP_OAUTH_RELAY_GOVERNOR_SHARED", "redis://r:6379"),
                ("SMTP_OAUTH_RELAY_GOVERNOR_EXPECTED_REPLICAS", "0"),
            ],
            "governor.expected_replicas",
            "at least 1",
        ),
        (
            vec![
                ("SMTP_OAUTH_RELAY_GOVERNOR_SHARED", "redis://r:6379"),
                (
                    "SMTP_OAUTH_RELAY_GOVERNOR_SHARED_PASSWORD_FILE",
                    "/nonexistent/redis-password",
                ),
            ],
            "governor.shared_password_file",
            "cannot read /nonexistent/redis-password",
        ),
        (
            vec![
                ("SMTP_OAUTH_RELAY_GOVERNOR_SHARED", "redis://r:6379"),
                ("SMTP_OAUTH_RELAY__GOVERNOR__SHARED_LEASE_SECS", "1"),
            ],
            "governor.shared_lease_secs",
            "at least 3",
        ),
    ] {
        let e = load(&pairs).expect_err(key);
        let text = e.to_string();
        assert!(text.contains(key) && text.contains(says), "{text}");
        assert!(!text.contains("secret-pw"), "{text}");
    }
}
