//! Federated credentials end to end against the sandbox: workload identity (a projected
//! service-account token file, configured by the AKS webhook's `AZURE_*` variables alone) and
//! a managed identity used as federated credential of the app (IMDS stand-in, numbers as
//! strings). The sandbox checks what Entra checks of a federated assertion: issuer, subject
//! and audience against the app's federated credentials (AADSTS70021), genuineness
//! (AADSTS700027) and lifetime (AADSTS700024).
//!
//! Also: the token file is read again for every request (rotation without restart), an
//! unreadable file is named, IMDS failures are explained, and no federated token reaches an
//! error, `/readyz` or the log.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smtp_oauth_relay::app::Relay;
use smtp_oauth_relay::config::{Config, ValidConfig};
use smtp_oauth_relay::sandbox::{ManagedIdentity, DEFAULT_SUBJECT, FEDERATION_AUDIENCE};
use smtp_oauth_relay::token::{CredentialKind, TokenError};
use support::{http_get, relay_binary, RawClient, World, MAILBOX};

const HOUR: Duration = Duration::from_secs(3600);

/// `world.env()` without any client credential, tenant, app or authority: what is left is the
/// relay's own plumbing (listen, upstream, CA, spool).
fn plumbing(world: &World) -> Vec<(String, String)> {
    let mut env = world.env();
    env.retain(|(k, _)| {
        ![
            "SMTP_OAUTH_RELAY_TENANT",
            "SMTP_OAUTH_RELAY_CLIENT_ID",
            "SMTP_OAUTH_RELAY_CLIENT_SECRET",
            "SMTP_OAUTH_RELAY_AUTHORITY",
        ]
        .contains(&k.as_str())
    });
    env
}

/// The environment an AKS pod with the workload identity webhook has, pointed at the
/// sandbox (the authority with the trailing slash the webhook writes).
fn aks_env(world: &World, token_file: &Path) -> Vec<(String, String)> {
    let o = world.sandbox.options();
    let mut env = plumbing(world);
    for (k, v) in [
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("AZURE_CLIENT_ID", o.client_id.clone()),
        ("AZURE_TENANT_ID", o.tenant.clone()),
        (
            "AZURE_AUTHORITY_HOST",
            format!("{}/", world.sandbox.authority()),
        ),
    ] {
        env.push((k.to_string(), v));
    }
    env
}

/// A managed identity (`client_id` of a user-assigned identity) against the IMDS stand-in.
fn imds_env(world: &World, identity_client_id: &str, imds_url: &str) -> Vec<(String, String)> {
    let o = world.sandbox.options();
    let mut env = plumbing(world);
    for (k, v) in [
        ("SMTP_OAUTH_RELAY_TENANT", o.tenant.as_str()),
        ("SMTP_OAUTH_RELAY_CLIENT_ID", o.client_id.as_str()),
        ("SMTP_OAUTH_RELAY_AUTHORITY", &world.sandbox.authority()),
        (
            "SMTP_OAUTH_RELAY_MANAGED_IDENTITY_CLIENT_ID",
            identity_client_id,
        ),
        ("SMTP_OAUTH_RELAY__ACCOUNT__IMDS_ENDPOINT", imds_url),
    ] {
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn config(env: &[(String, String)]) -> ValidConfig {
    Config::load(None, env)
        .expect("config loads")
        .validate()
        .expect("config validates")
}

fn uami(world: &World) -> ManagedIdentity {
    world.sandbox.options().managed_identities[0].clone()
}

async fn send_one(relay: &Relay, subject: &str) {
    let mut c = RawClient::connect(relay.local_addr()).await;
    c.cmd("EHLO app.example", 250).await;
    let body = format!("Subject: {subject}\r\n\r\nhello\r\n");
    let r = c
        .send_mail(MAILBOX, &["someone@example.com"], body.as_bytes())
        .await;
    assert!(r.starts_with("250 "), "{r}");
}

#[tokio::test]
async fn workload_identity_from_azure_variables_end_to_end() {
    let world = World::start().await;
    let file = world.dir.path().join("azure-identity-token");
    let token = world
        .sandbox
        .federated_token(DEFAULT_SUBJECT, FEDERATION_AUDIENCE, HOUR);
    std::fs::write(&file, format!("{token}\n")).unwrap();

    let env = aks_env(&world, &file);
    assert!(!env.iter().any(|(k, _)| k.contains("SECRET")), "{env:?}");
    let config = config(&env);
    assert_eq!(
        config.account().credential.credential.kind(),
        CredentialKind::WorkloadIdentity
    );
    let relay = Relay::start(config).await.expect("relay starts");
    assert!(relay
        .tokens()
        .describe()
        .contains("workload identity (token file"));
    send_one(&relay, "federated").await;
    let stored = world.wait_for(1).await;
    assert_eq!(stored.len(), 1);
    assert!(String::from_utf8_lossy(&stored[0].data).contains("Subject: federated"));
    assert!(world.sandbox.tokens_issued() >= 1);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_rotated_token_file_is_used_without_restart() {
    let world = World::start().await;
    let file = world.dir.path().join("azure-identity-token");
    let first = world
        .sandbox
        .federated_token(DEFAULT_SUBJECT, FEDERATION_AUDIENCE, HOUR);
    std::fs::write(&file, &first).unwrap();
    let relay = Relay::start(config(&aks_env(&world, &file)))
        .await
        .expect("relay starts");
    let tokens = relay.tokens();
    let access = tokens.get().await.expect("a token with the first file");

    // The kubelet would have replaced the file long ago; an old copy has expired.
    let stale = world
        .sandbox
        .federated_token(DEFAULT_SUBJECT, FEDERATION_AUDIENCE, Duration::ZERO);
    std::fs::write(&file, &stale).unwrap();
    tokens.invalidate(&access);
    let e = tokens
        .get()
        .await
        .expect_err("an expired assertion is refused");
    assert_eq!(e.aadsts(), Some(700024), "{e}");
    let advice = e.advice().expect("advice for 700024");
    assert!(advice.contains("federated_token_file"), "{advice}");
    assert!(!format!("{e} {e:?}").contains(&stale));

    // The kubelet writes a fresh token: the next request reads it, no restart, no SIGHUP.
    let fresh = world
        .sandbox
        .federated_token(DEFAULT_SUBJECT, FEDERATION_AUDIENCE, HOUR);
    std::fs::write(&file, &fresh).unwrap();
    tokens.forget_failure();
    let renewed = tokens.get().await.expect("a token with the rotated file");
    assert!(!renewed.is_same(&access));
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_subject_mismatch_is_70021_with_advice_in_readyz() {
    let world = World::start().await;
    let file = world.dir.path().join("azure-identity-token");
    let wrong = "system:serviceaccount:default:wrong-sa";
    let token = world
        .sandbox
        .federated_token(wrong, FEDERATION_AUDIENCE, HOUR);
    std::fs::write(&file, &token).unwrap();
    let relay = Relay::start(config(&aks_env(&world, &file)))
        .await
        .expect("relay starts");
    let e = relay.tokens().get().await.expect_err("no matching FIC");
    assert_eq!(e.aadsts(), Some(70021), "{e}");
    assert_eq!(e.oauth_error(), Some("invalid_request"));
    assert!(e.is_config());
    let text = e.to_string();
    assert!(
        text.contains(&format!("Assertion Subject: '{wrong}'")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Assertion Issuer: '{}'",
            world.sandbox.options().oidc_issuer
        )),
        "{text}"
    );

    let admin = relay.admin_addr().expect("admin port");
    let (status, body) = http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("AADSTS70021"), "{body}");
    assert!(
        body.contains("system:serviceaccount:<namespace>:<serviceaccount>"),
        "{body}"
    );
    assert!(!body.contains(&token), "{body}");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_token_from_another_issuer_or_unknown_to_it_is_refused() {
    let world = World::start_with(|o| o.oidc_issuer = "https://oidc.other.example/".into()).await;
    let file = world.dir.path().join("azure-identity-token");
    // Minted by an issuer the app has no federated credential for.
    let token = world
        .sandbox
        .federated_token(DEFAULT_SUBJECT, FEDERATION_AUDIENCE, HOUR);
    std::fs::write(&file, &token).unwrap();
    let relay = Relay::start(config(&aks_env(&world, &file)))
        .await
        .expect("relay starts");
    let e = relay.tokens().get().await.expect_err("issuer mismatch");
    assert_eq!(e.aadsts(), Some(70021), "{e}");
    assert!(e
        .to_string()
        .contains("Assertion Issuer: 'https://oidc.other.example/'"));

    // The right claims, but not minted by the issuer: a bad signature.
    let forged = forge(
        &token,
        &world.sandbox.options().federated_credentials[0].issuer,
    );
    std::fs::write(&file, &forged).unwrap();
    relay.tokens().forget_failure();
    let e = relay.tokens().get().await.expect_err("forged");
    assert_eq!(e.aadsts(), Some(700027), "{e}");
    relay.shutdown(Duration::from_secs(5)).await;
}

/// `token` with its `iss` replaced by `issuer` (so the signature no longer covers it).
fn forge(token: &str, issuer: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["iss"] = serde_json::Value::String(issuer.to_string());
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

#[tokio::test]
async fn an_unreadable_token_file_is_named() {
    let world = World::start().await;
    let file = world.dir.path().join("azure-identity-token");
    std::fs::write(
        &file,
        world
            .sandbox
            .federated_token(DEFAULT_SUBJECT, FEDERATION_AUDIENCE, HOUR),
    )
    .unwrap();
    let relay = Relay::start(config(&aks_env(&world, &file)))
        .await
        .expect("relay starts");
    let tokens = relay.tokens();
    let access = tokens.get().await.expect("a token while the file is there");
    std::fs::remove_file(&file).unwrap();
    let requests = world.sandbox.token_requests();
    tokens.invalidate(&access);
    let e = tokens.get().await.expect_err("missing file");
    assert!(matches!(e, TokenError::Credential(_)), "{e:?}");
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    assert!(e.is_config());
    assert_eq!(
        world.sandbox.token_requests(),
        requests,
        "no request without a token"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn managed_identity_end_to_end_against_imds() {
    let world = World::start().await;
    let identity = uami(&world);
    let env = imds_env(&world, &identity.client_id, &world.sandbox.imds_url());
    let config = config(&env);
    assert_eq!(
        config.account().credential.credential.kind(),
        CredentialKind::ManagedIdentity
    );
    let relay = Relay::start(config).await.expect("relay starts");
    assert!(relay
        .tokens()
        .describe()
        .contains(&format!("managed identity {}", identity.client_id)));
    send_one(&relay, "via imds").await;
    assert_eq!(world.wait_for(1).await.len(), 1);

    // A second Entra token reuses the IMDS token (valid for a day).
    let first = relay.tokens().get().await.unwrap();
    relay.tokens().invalidate(&first);
    let second = relay.tokens().get().await.unwrap();
    assert!(!second.is_same(&first));
    assert!(world.sandbox.tokens_issued() >= 2);
    assert_eq!(world.sandbox.imds_tokens_issued(), 1);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn managed_identity_failures_are_explained() {
    let world = World::start_with(|o| {
        o.system_assigned_identity = Some(ManagedIdentity {
            client_id: "77777777-0000-0000-0000-000000000000".into(),
            object_id: "77777777-1111-1111-1111-111111111111".into(),
        })
    })
    .await;
    let build = |env: &[(String, String)]| {
        smtp_oauth_relay::token::credential::build(&config(env).account().credential).unwrap()
    };

    // An identity this machine does not have.
    let unknown = "12345678-0000-0000-0000-000000000000";
    let source = build(&imds_env(&world, unknown, &world.sandbox.imds_url()));
    let e = source.fetch().await.expect_err("unknown identity");
    assert!(matches!(e, TokenError::Credential(_)), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("Identity not found"), "{text}");
    assert!(
        text.contains(&format!("no user-assigned identity {unknown}")),
        "{text}"
    );

    // The system-assigned identity gets an IMDS token but cannot be a federated credential.
    let mut env = imds_env(&world, "x", &world.sandbox.imds_url());
    env.retain(|(k, _)| k != "SMTP_OAUTH_RELAY_MANAGED_IDENTITY_CLIENT_ID");
    env.push((
        "SMTP_OAUTH_RELAY_CREDENTIAL".into(),
        "managed-identity".into(),
    ));
    let source = build(&env);
    assert!(source
        .describe()
        .contains("managed identity system-assigned"));
    let e = source.fetch().await.expect_err("no FIC for it");
    assert_eq!(e.aadsts(), Some(70021), "{e}");
    assert!(e
        .to_string()
        .contains("Assertion Subject: '77777777-1111-1111-1111-111111111111'"));

    // Nothing answers where IMDS should be.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}/metadata/identity/oauth2/token");
    let source = build(&imds_env(&world, &uami(&world).client_id, &url));
    let e = source.fetch().await.expect_err("no IMDS");
    assert!(e.is_transient(), "{e:?}");
    assert!(
        e.to_string()
            .contains("not on an Azure VM, or IMDS unreachable"),
        "{e}"
    );
}

/// `smtp-oauth-relay check` with exactly `env` (the parent's `SMTP_OAUTH_RELAY_*`, `AZURE_*`
/// and `RUST_LOG` removed): exit code and stdout+stderr. Killed after 30 s.
fn run_check(env: &[(String, String)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = std::fs::File::create(&out).unwrap();
    let mut cmd = Command::new(relay_binary());
    cmd.arg("check")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file));
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("SMTP_OAUTH_RELAY_") || n.starts_with("AZURE_") || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd.spawn().expect("spawn the relay binary");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check did not exit in 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), std::fs::read_to_string(&out).unwrap())
}

#[tokio::test]
async fn check_explains_70021_and_logs_no_federated_token() {
    let world = World::start().await;
    let file = world.dir.path().join("azure-identity-token");
    let token = world.sandbox.federated_token(
        "system:serviceaccount:mail:other",
        FEDERATION_AUDIENCE,
        HOUR,
    );
    std::fs::write(&file, &token).unwrap();
    let mut env = aks_env(&world, &file);
    env.push(("RUST_LOG".into(), "debug".into()));
    let (code, output) = tokio::task::spawn_blocking(move || run_check(&env))
        .await
        .unwrap();
    assert_eq!(code, Some(69), "{output}");
    assert!(output.contains("AADSTS70021"), "{output}");
    assert!(
        output.contains("Assertion Subject: 'system:serviceaccount:mail:other'"),
        "{output}"
    );
    assert!(
        output.contains("az identity federated-credential create"),
        "{output}"
    );
    let payload = token.split('.').nth(1).unwrap();
    assert!(
        !output.contains(&payload[..24]),
        "the token is in the output:\n{output}"
    );

    // And a good token: check passes, and says nothing of it either.
    let good = world
        .sandbox
        .federated_token(DEFAULT_SUBJECT, FEDERATION_AUDIENCE, HOUR);
    std::fs::write(&file, &good).unwrap();
    let mut env = aks_env(&world, &file);
    env.push(("RUST_LOG".into(), "debug".into()));
    let (code, output) = tokio::task::spawn_blocking(move || run_check(&env))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{output}");
    let payload = good.split('.').nth(1).unwrap();
    assert!(
        !output.contains(&payload[..24]),
        "the token is in the output:\n{output}"
    );
}
