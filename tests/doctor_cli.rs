//! The diagnostic subcommands as users run them: `check`, `token` and `send-test`, the real
//! binary as a child process configured by environment variables and pointed at the
//! in-process Exchange stand-in (`World`).
//!
//! Each run is bounded (30 s) and its stdout and stderr are captured whole. Exit codes:
//! 0 every step passed, 64 configuration error, 69 token or upstream failure.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{relay_binary, World, MAILBOX};

/// How long one diagnostic run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// A finished diagnostic run.
struct Run {
    code: Option<i32>,
    /// stdout followed by stderr.
    output: String,
}

impl Run {
    fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}; output:\n{}",
            self.output
        );
    }

    fn assert_contains(&self, needle: &str) {
        assert!(
            self.output.contains(needle),
            "output must contain {needle:?}:\n{}",
            self.output
        );
    }

    fn assert_lacks(&self, needle: &str, what: &str) {
        assert!(
            !self.output.contains(needle),
            "output must not contain {what}:\n{}",
            self.output
        );
    }

    fn lines(&self) -> impl Iterator<Item = &str> {
        self.output.lines()
    }

    /// The first line starting with `prefix` (e.g. `"[ OK ] token "`).
    fn line_starting(&self, prefix: &str) -> Option<&str> {
        self.lines().find(|l| l.starts_with(prefix))
    }

    /// The `fix:` lines that follow `[FAIL]` lines whose step starts with `step`.
    fn fixes_after_fail(&self, step: &str) -> Vec<&str> {
        let lines: Vec<&str> = self.lines().collect();
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if l.starts_with(&format!("[FAIL] {step}")) {
                if let Some(next) = lines.get(i + 1) {
                    if let Some(fix) = next.trim_start().strip_prefix("fix:") {
                        out.push(fix);
                    }
                }
            }
        }
        out
    }

    /// The `[FAIL]` lines whose step starts with `step`.
    fn fails(&self, step: &str) -> Vec<&str> {
        let prefix = format!("[FAIL] {step}");
        self.lines().filter(|l| l.starts_with(&prefix)).collect()
    }
}

/// `world.env()` with `extra` overriding (or adding) pairs.
fn env_with(world: &World, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = world.env();
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// Runs the binary with `args` and exactly `env` on top of the parent's environment
/// stripped of every `SMTP_OAUTH_RELAY_*` and `RUST_LOG`, in a fresh working directory.
/// Kills it and panics if it takes longer than `RUN_TIMEOUT`.
async fn run(args: &[&str], env: Vec<(String, String)>) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || run_blocking(&args, &env))
        .await
        .expect("join the child runner")
}

fn run_blocking(args: &[String], env: &[(String, String)]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut cmd = Command::new(relay_binary());
    cmd.args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            std::fs::File::create(&stdout_path).expect("create stdout file"),
        ))
        .stderr(Stdio::from(
            std::fs::File::create(&stderr_path).expect("create stderr file"),
        ));
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("SMTP_OAUTH_RELAY_") || n == "RUST_LOG" {
            cmd.env_remove(&name);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the relay binary");
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`smtp-oauth-relay {}` did not exit within {RUN_TIMEOUT:?}; stdout:\n{}\nstderr:\n{}",
                args.join(" "),
                std::fs::read_to_string(&stdout_path).unwrap_or_default(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    Run {
        code: status.code(),
        output: format!("{stdout}{stderr}"),
    }
}

fn secret_of(world: &World) -> String {
    world.secret()
}

/// Neither the real secret (plain or form-encoded) nor a token or XOAUTH2 string.
fn assert_no_credentials(run: &Run, secret: &str) {
    run.assert_lacks(secret, "the client secret");
    run.assert_lacks(
        &secret.replace('~', "%7E"),
        "the form-encoded client secret",
    );
    run.assert_lacks("eyJ", "a JWT (access token)");
    run.assert_lacks("dXNlcj", "a base64 XOAUTH2 string (user=...)");
    run.assert_lacks("auth=Bearer", "a decoded XOAUTH2 string");
}

// ---------------------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn check_passes_on_a_good_configuration() {
    let world = World::start().await;
    let r = run(&["check"], world.env()).await;
    r.assert_code(0);
    for prefix in [
        "[ OK ] configuration",
        "[ OK ] token ",
        "[ OK ] token claims",
        "[ OK ] SMTP",
    ] {
        assert!(
            r.line_starting(prefix).is_some(),
            "no line starting with {prefix:?}:\n{}",
            r.output
        );
    }
    assert!(
        !r.output.contains("[FAIL]"),
        "no step may fail:\n{}",
        r.output
    );
    let roles = r
        .lines()
        .find(|l| l.trim_start().starts_with("roles:"))
        .unwrap_or_else(|| panic!("no roles line:\n{}", r.output));
    assert!(roles.contains("SMTP.SendAsApp"), "roles line: {roles}");
    assert_no_credentials(&r, &secret_of(&world));
    assert!(
        world.sandbox.messages().is_empty(),
        "check must not send anything"
    );
}

#[tokio::test]
async fn check_with_wrong_secret_exits_69_with_aadsts7000215_and_value_advice() {
    let world = World::start().await;
    let real = secret_of(&world);
    // Microsoft's value shape: 3 chars, a digit, `Q~`, 34 chars.
    let wrong = format!("xyz8Q~{}", "Wr0ngS3cretWr0ngS3cretWr0ngS3cret_");
    assert_eq!(wrong.len(), 40);
    let r = run(
        &["check"],
        env_with(&world, &[("SMTP_OAUTH_RELAY_CLIENT_SECRET", &wrong)]),
    )
    .await;
    r.assert_code(69);
    r.assert_contains("[ OK ] configuration");
    r.assert_contains("AADSTS7000215");
    let fixes = r.fixes_after_fail("token");
    assert!(
        fixes.iter().any(|f| f.contains("Value")),
        "the token failure's fix must mention the secret Value:\n{}",
        r.output
    );
    r.assert_lacks(&wrong, "the wrong secret");
    assert_no_credentials(&r, &real);
    assert!(
        r.line_starting("[ OK ] SMTP").is_none(),
        "no SMTP step without a token:\n{}",
        r.output
    );
}

#[tokio::test]
async fn check_with_guid_secret_exits_64_mentioning_secret_id() {
    let world = World::start().await;
    let guid = "0f0f0f0f-1111-2222-3333-444455556666";
    let r = run(
        &["check"],
        env_with(&world, &[("SMTP_OAUTH_RELAY_CLIENT_SECRET", guid)]),
    )
    .await;
    r.assert_code(64);
    r.assert_contains("secret ID");
    r.assert_lacks(guid, "the GUID given as secret");
    assert_eq!(
        world.sandbox.token_requests(),
        0,
        "a configuration error must stop before asking for a token"
    );
}

#[tokio::test]
async fn check_with_pasted_token_as_secret_exits_64_mentioning_access_token() {
    let world = World::start().await;
    let pasted = "eyJhbGciOi.eyJhdWQi.c2ln";
    let r = run(
        &["check"],
        env_with(&world, &[("SMTP_OAUTH_RELAY_CLIENT_SECRET", pasted)]),
    )
    .await;
    r.assert_code(64);
    r.assert_contains("access token");
    // The advice may name the `eyJ` prefix, but never echoes what was pasted.
    r.assert_lacks(pasted, "the pasted token");
    r.assert_lacks("eyJhbGciOi", "the pasted token's header");
    assert_eq!(world.sandbox.token_requests(), 0);
}

#[tokio::test]
async fn check_with_graph_scope_exits_64_mentioning_graph() {
    let world = World::start().await;
    let r = run(
        &["check"],
        env_with(
            &world,
            &[(
                "SMTP_OAUTH_RELAY_SCOPE",
                "https://graph.microsoft.com/.default",
            )],
        ),
    )
    .await;
    r.assert_code(64);
    r.assert_contains("Graph");
    assert_eq!(world.sandbox.token_requests(), 0);
}

#[tokio::test]
async fn check_without_sendasapp_role_fails_claims_and_smtp_535() {
    let world = World::start_with(|o| o.app_roles.clear()).await;
    let r = run(&["check"], world.env()).await;
    r.assert_code(69);
    r.assert_contains("[ OK ] token ");
    let claims = r.fails("token claims");
    assert!(
        claims.iter().any(|l| l.contains("SMTP.SendAsApp")),
        "a FAIL on token claims must name SMTP.SendAsApp:\n{}",
        r.output
    );
    let smtp = r.fails("SMTP");
    assert!(
        smtp.iter().any(|l| l.contains("535 5.7.3")),
        "a FAIL on SMTP must show 535 5.7.3:\n{}",
        r.output
    );
    let fixes = r.fixes_after_fail("SMTP");
    assert!(
        fixes
            .iter()
            .any(|f| f.contains("Add-MailboxPermission") || f.contains("SMTP.SendAsApp")),
        "the SMTP failure's fix must mention Add-MailboxPermission or SMTP.SendAsApp:\n{}",
        r.output
    );
    assert_no_credentials(&r, &secret_of(&world));
}

#[tokio::test]
async fn check_with_smtp_auth_disabled_advises_set_casmailbox() {
    let world = World::start_with(|o| o.smtp_auth_disabled = vec![MAILBOX.into()]).await;
    let r = run(&["check"], world.env()).await;
    r.assert_code(69);
    r.assert_contains("[ OK ] token claims");
    assert!(
        !r.fails("SMTP").is_empty(),
        "the SMTP step must fail:\n{}",
        r.output
    );
    let fixes = r.fixes_after_fail("SMTP");
    assert!(
        fixes.iter().any(|f| f.contains("Set-CASMailbox")),
        "the SMTP failure's fix must mention Set-CASMailbox:\n{}",
        r.output
    );
    assert_no_credentials(&r, &secret_of(&world));
}

// ---------------------------------------------------------------------------------------
// token
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn token_prints_claims_but_never_the_token_or_secret() {
    let world = World::start().await;
    let r = run(&["token"], world.env()).await;
    r.assert_code(0);
    r.assert_contains("[ OK ] token ");
    let aud = r
        .lines()
        .find(|l| l.trim_start().starts_with("aud:"))
        .unwrap_or_else(|| panic!("no aud line:\n{}", r.output));
    assert!(aud.contains("outlook.office365.com"), "aud line: {aud}");
    let roles = r
        .lines()
        .find(|l| l.trim_start().starts_with("roles:"))
        .unwrap_or_else(|| panic!("no roles line:\n{}", r.output));
    assert!(roles.contains("SMTP.SendAsApp"), "roles line: {roles}");
    assert!(
        r.line_starting("[ OK ] SMTP").is_none(),
        "token must not connect to SMTP:\n{}",
        r.output
    );
    assert_no_credentials(&r, &secret_of(&world));
    assert_eq!(world.sandbox.auth_attempts(), 0, "token must not AUTH");
}

// ---------------------------------------------------------------------------------------
// send-test
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn send_test_delivers_one_message() {
    let world = World::start().await;
    let r = run(&["send-test", "--to", "someone@example.com"], world.env()).await;
    r.assert_code(0);
    r.assert_contains("[ OK ] SMTP");
    r.assert_contains("[ OK ] send");
    assert_no_credentials(&r, &secret_of(&world));

    let stored = world.wait_for(1).await;
    assert_eq!(stored.len(), 1, "output:\n{}", r.output);
    assert_eq!(stored[0].envelope.rcpt_to, vec!["someone@example.com"]);
    let data = String::from_utf8_lossy(&stored[0].data);
    assert!(
        data.contains("\r\nSubject: smtp-oauth-relay test message\r\n"),
        "stored message:\n{data}"
    );
    // No moment given to a stray second message: `send-test` has exited, so it opens no
    // more connections, and once every SMTP connection the sandbox accepted has ended,
    // nothing more of its visit can be stored. (A message needs the sandbox's greeting and
    // TLS handshake, so its connection was accepted while `send-test` still ran.)
    support::wait_until(
        "the sandbox to end every SMTP session of send-test",
        Duration::from_secs(10),
        || world.sandbox.smtp_connections_open() == 0,
    )
    .await;
    assert_eq!(world.sandbox.message_count(), 1);
}

#[tokio::test]
async fn send_test_sendas_denied_exits_69_with_sendas_advice() {
    let world = World::start().await;
    let r = run(
        &["send-test", "--to", "sendas-denied@example.com"],
        world.env(),
    )
    .await;
    r.assert_code(69);
    r.assert_contains("[ OK ] SMTP");
    let fails = r.fails("send");
    assert!(
        fails.iter().any(|l| l.contains("554 5.2.252")),
        "a FAIL on send must show 554 5.2.252:\n{}",
        r.output
    );
    let fixes = r.fixes_after_fail("send");
    assert!(
        fixes.iter().any(|f| f.contains("SendAs")),
        "the send failure's fix must mention SendAs:\n{}",
        r.output
    );
    assert_no_credentials(&r, &secret_of(&world));
    assert!(world.sandbox.messages().is_empty());
}

// ---------------------------------------------------------------------------------------
// Microsoft cannot be reached: the advice names the port and the proxy
// ---------------------------------------------------------------------------------------

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn check_names_its_proxy_and_advises_when_the_token_endpoint_is_unreachable() {
    let world = World::start().await;
    let port = closed_port();
    let authority = format!("https://127.0.0.1:{port}");
    let proxy = format!("http://bob:Pr0xy-Pa55@127.0.0.1:{port}");
    let env = env_with(
        &world,
        &[
            ("SMTP_OAUTH_RELAY_AUTHORITY", authority.as_str()),
            ("HTTPS_PROXY", proxy.as_str()),
            ("NO_PROXY", ""),
            ("SMTP_OAUTH_RELAY_TENNANT", "typo"),
        ],
    );
    let r = run(&["check"], env).await;
    r.assert_code(69);
    r.assert_contains(&format!(
        "proxy for the token request: http://127.0.0.1:{port} (from HTTPS_PROXY)"
    ));
    r.assert_lacks("Pr0xy-Pa55", "the proxy password");
    r.assert_contains("unknown environment variable SMTP_OAUTH_RELAY_TENNANT");
    let fixes = r.fixes_after_fail("token from");
    assert_eq!(fixes.len(), 1, "{}", r.output);
    assert!(
        fixes[0].contains("outbound HTTPS (TCP 443)"),
        "{}",
        fixes[0]
    );
    assert!(fixes[0].contains("HTTPS_PROXY="), "{}", fixes[0]);
}

#[tokio::test]
async fn check_says_direct_when_no_proxy_is_set() {
    let world = World::start().await;
    let mut env = world.env();
    for name in ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        env.push((name.to_string(), String::new()));
    }
    let r = run(&["check"], env).await;
    r.assert_code(0);
    r.assert_contains("proxy for the token request: none: direct connection");
}

#[tokio::test]
async fn check_advises_opening_the_smtp_port_when_exchange_is_unreachable() {
    let world = World::start().await;
    let port = closed_port();
    let upstream = format!("127.0.0.1:{port}");
    let env = env_with(&world, &[("SMTP_OAUTH_RELAY_UPSTREAM", upstream.as_str())]);
    let r = run(&["check"], env).await;
    r.assert_code(69);
    let fixes = r.fixes_after_fail("SMTP ");
    assert_eq!(fixes.len(), 1, "{}", r.output);
    assert!(
        fixes[0].contains(&format!("Allow outbound TCP {port} to 127.0.0.1")),
        "{}",
        fixes[0]
    );
    assert!(
        fixes[0].contains("does not go through HTTPS_PROXY"),
        "{}",
        fixes[0]
    );
}

#[tokio::test]
async fn check_names_every_config_mistake_with_file_and_line() {
    let world = World::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let typos = dir.path().join("typos.toml");
    std::fs::write(
        &typos,
        "[listen]\nadress = \"127.0.0.1:2525\"\n[acount]\nx = 1\n",
    )
    .unwrap();
    let typos_arg = typos.display().to_string();
    let r = run(&["--config", &typos_arg, "check"], world.env()).await;
    r.assert_code(64);
    r.assert_contains("2 unknown keys");
    r.assert_contains("`listen.adress` (did you mean `address`?)");
    r.assert_contains("`acount` (did you mean `account`?)");

    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[listen]\naddress = 127.0.0.1:2525\n").unwrap();
    let broken_arg = broken.display().to_string();
    let r = run(&["--config", &broken_arg, "check"], world.env()).await;
    r.assert_code(64);
    r.assert_contains(&format!("`{broken_arg}`"));
    r.assert_contains("line 2");
}
