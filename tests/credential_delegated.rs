//! The delegated credential end to end (reference §1.6, §1.10): `smtp-oauth-relay login` (the
//! real binary) signs a user in against the sandbox's device code flow while the test plays
//! the user on the sandbox's side; then a relay with `credential = delegated` sends as that
//! user with the stored refresh token, which rotates on every refresh; a revoked refresh
//! token makes the relay say to run `login` again. Refresh tokens never reach a log.
//!
//! Every child process and every wait is bounded.

mod support;
#[path = "support/child.rs"]
mod child;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use child::{free_addr, RelayChild};
use smtp_oauth_relay::token::{credential, Credential, SourceSettings, TokenError};
use support::{eventually, http_get, relay_binary, RawClient, World, MAILBOX};

/// How long one `login` may run.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The sandbox with a short polling interval (Entra's is 5 s).
async fn world(lifetime: Duration) -> World {
    World::start_with(|o| {
        o.device_code_interval = Duration::from_secs(1);
        o.device_code_lifetime = lifetime;
    })
    .await
}

/// The environment of a delegated account: no client secret, the refresh token file in
/// `state/` (which does not exist yet), debug logs.
fn delegated_env(world: &World) -> (Vec<(String, String)>, PathBuf) {
    let file = world.dir.path().join("state").join("refresh-token");
    let mut env = world.env();
    env.retain(|(k, _)| k != "SMTP_OAUTH_RELAY_CLIENT_SECRET");
    env.push(("SMTP_OAUTH_RELAY_CREDENTIAL".into(), "delegated".into()));
    env.push((
        "SMTP_OAUTH_RELAY_REFRESH_TOKEN_FILE".into(),
        file.display().to_string(),
    ));
    env.push(("RUST_LOG".into(), "debug".into()));
    (env, file)
}

/// A running `login`: its output files.
struct Login {
    child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Login {
    fn spawn(env: &[(String, String)]) -> Login {
        let dir = tempfile::tempdir().expect("tempdir");
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let mut cmd = Command::new(relay_binary());
        cmd.arg("login")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()));
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("SMTP_OAUTH_RELAY_") || n == "RUST_LOG" {
                cmd.env_remove(&name);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        Login {
            child: cmd.spawn().expect("spawn login"),
            stdout,
            stderr,
            _dir: dir,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!(
            "{}{}",
            self.stdout(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// Waits for the exit (bounded), returns the exit code.
    async fn finish(&mut self) -> Option<i32> {
        let deadline = Instant::now() + LOGIN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("login did not exit in time:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Login {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the sandbox has handed out a device code and `login` has printed it.
async fn user_code_shown(world: &World, login: &Login) -> String {
    let shown = eventually(Duration::from_secs(20), || {
        world
            .sandbox
            .pending_device_codes()
            .iter()
            .any(|c| login.stdout().contains(c.as_str()))
    })
    .await;
    assert!(shown, "no user code printed:\n{}", login.output());
    world.sandbox.pending_device_codes().remove(0)
}

fn read_token(file: &Path) -> String {
    std::fs::read_to_string(file)
        .expect("refresh token file")
        .trim()
        .to_string()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Signs `upn` in with `login`; returns the output and the stored refresh token.
async fn sign_in(world: &World, env: &[(String, String)], file: &Path, upn: &str) -> String {
    let mut login = Login::spawn(env);
    let code = user_code_shown(world, &login).await;
    let stdout = login.stdout();
    assert!(
        stdout.contains("https://microsoft.com/devicelogin"),
        "{stdout}"
    );
    assert_eq!(world.sandbox.approve_device_code(Some(&code), upn), 1);
    let exit = login.finish().await;
    let output = login.output();
    assert_eq!(exit, Some(0), "{output}");
    assert!(output.contains(&format!("Signed in as {upn}.")), "{output}");
    let token = read_token(file);
    assert!(token.starts_with("0.A"), "a refresh token is stored");
    assert!(!output.contains(&token), "refresh token printed:\n{output}");
    output
}

/// Polls `/readyz` until its status is `want` and its body holds `needle`; returns the body.
async fn readyz_becomes(addr: std::net::SocketAddr, want: u16, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = http_get(addr, "/readyz").await;
        if status == want && body.contains(needle) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status}, wanted {want}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_then_the_relay_sends_as_the_user_with_a_rotating_refresh_token() {
    let world = world(Duration::from_secs(900)).await;
    let (env, file) = delegated_env(&world);
    sign_in(&world, &env, &file, MAILBOX).await;
    #[cfg(unix)]
    {
        assert_eq!(mode(&file), 0o600, "the token file is the owner's only");
        assert_eq!(
            mode(file.parent().unwrap()),
            0o700,
            "login made the directory"
        );
    }
    let from_login = read_token(&file);

    // The relay, as a process with debug logs, delegated.
    let addr = free_addr();
    let admin = free_addr();
    let mut relay_env = env.clone();
    relay_env
        .retain(|(k, _)| k != "SMTP_OAUTH_RELAY_LISTEN" && k != "SMTP_OAUTH_RELAY_ADMIN_LISTEN");
    relay_env.push(("SMTP_OAUTH_RELAY_LISTEN".into(), addr.to_string()));
    relay_env.push(("SMTP_OAUTH_RELAY_ADMIN_LISTEN".into(), admin.to_string()));
    let log = world.dir.path().join("relay.log");
    let mut relay = RelayChild::spawn(relay_binary(), &[], &relay_env, world.dir.path(), &log);
    relay.wait_ready(addr, Duration::from_secs(30)).await;
    readyz_becomes(admin, 200, "token: valid").await;

    // The relay's first refresh rotated the token: the file holds a new one.
    let rotated = read_token(&file);
    assert_ne!(rotated, from_login, "the refresh token rotated");
    assert!(rotated.starts_with("0.A"));

    let mut c = RawClient::connect(addr).await;
    c.cmd("EHLO app.example", 250).await;
    let reply = c
        .send_mail(
            "app@example.com",
            &["someone@example.com"],
            b"Subject: delegated\r\n\r\nSent as the signed-in user.\r\n",
        )
        .await;
    assert!(reply.starts_with("250"), "{reply}");
    let stored = world.wait_for(1).await;
    assert_eq!(stored.len(), 1, "delivered with the user's token");
    assert_eq!(world.sandbox.auth_failures(), 0);

    // The spent refresh token no longer works.
    let e = fetch_with(&world, &from_login).await;
    assert_eq!(e.oauth_error(), Some("invalid_grant"), "{e}");
    assert!(
        e.advice()
            .unwrap_or_default()
            .contains("smtp-oauth-relay login"),
        "{e:?}"
    );

    let logs = relay.stderr();
    drop(c);
    drop(relay);

    // The user's sessions are revoked (a password reset): a relay starting now is told to
    // sign in again.
    world.sandbox.revoke_refresh_tokens();
    world.sandbox.revoke_tokens();
    let mut relay = RelayChild::spawn(relay_binary(), &[], &relay_env, world.dir.path(), &log);
    relay.wait_ready(addr, Duration::from_secs(30)).await;
    let body = readyz_becomes(admin, 503, "AADSTS").await;
    let token_line = body
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("token"))
        .unwrap_or_else(|| panic!("no failing token check:\n{body}"));
    assert!(token_line.contains("AADSTS50173"), "{token_line}");
    assert!(
        token_line.contains("smtp-oauth-relay login"),
        "{token_line}"
    );

    let logs = format!("{logs}{}", relay.stderr());
    assert!(logs.contains("DEBUG"), "debug logs were on");
    for token in [&from_login, &rotated, &read_token(&file)] {
        assert!(
            !logs.contains(token.as_str()),
            "a refresh token reached the log"
        );
        assert!(!body.contains(token.as_str()));
    }
}

/// One refresh with `refresh_token`, by an in-process delegated source; its error.
async fn fetch_with(world: &World, refresh_token: &str) -> TokenError {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rt");
    std::fs::write(&file, refresh_token).unwrap();
    let e = source_for(world, &file)
        .fetch()
        .await
        .expect_err("the refresh is refused");
    assert_eq!(
        read_token(&file),
        refresh_token,
        "a refused refresh writes nothing"
    );
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_is_a_warning_about_full_access() {
    let world = world(Duration::from_secs(900)).await;
    let (env, file) = delegated_env(&world);
    let output = sign_in(&world, &env, &file, "alice@sandbox.example").await;
    assert!(
        output.contains("warning: alice@sandbox.example is not account.mailbox"),
        "{output}"
    );
    assert!(output.contains("FullAccess"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_code_ends_login_with_69_and_stores_nothing() {
    let world = world(Duration::from_secs(3)).await;
    let (env, file) = delegated_env(&world);
    let mut login = Login::spawn(&env);
    user_code_shown(&world, &login).await;
    let exit = login.finish().await;
    let output = login.output();
    assert_eq!(exit, Some(69), "{output}");
    assert!(output.contains("expired"), "{output}");
    assert!(!file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_sign_in_ends_login_with_69() {
    let world = world(Duration::from_secs(900)).await;
    let (env, file) = delegated_env(&world);
    let mut login = Login::spawn(&env);
    let code = user_code_shown(&world, &login).await;
    assert_eq!(world.sandbox.decline_device_code(Some(&code)), 1);
    let exit = login.finish().await;
    let output = login.output();
    assert_eq!(exit, Some(69), "{output}");
    assert!(output.contains("declined"), "{output}");
    assert!(!file.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_needs_a_delegated_account() {
    let world = World::start().await;
    let mut login = Login::spawn(&world.env());
    let exit = login.finish().await;
    let output = login.output();
    assert_eq!(exit, Some(64), "{output}");
    assert!(output.contains("delegated"), "{output}");
    assert!(world.sandbox.pending_device_codes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_without_a_login_says_to_run_login() {
    let world = world(Duration::from_secs(900)).await;
    let (env, file) = delegated_env(&world);
    let env: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| k.starts_with("SMTP_OAUTH_RELAY_CREDENTIAL") || k.ends_with("TOKEN_FILE"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let relay = world.relay(&env).await;
    let admin = relay.admin_addr().expect("admin is on");
    let body = readyz_becomes(admin, 503, "refresh").await;
    assert!(body.contains("smtp-oauth-relay login"), "{body}");
    assert!(body.contains(&file.display().to_string()), "{body}");
}

/// A delegated source for the world's app reading `file`, as `serve` and `check` build one.
fn source_for(
    world: &World,
    file: &Path,
) -> std::sync::Arc<dyn smtp_oauth_relay::token::TokenSource> {
    let o = world.sandbox.options();
    let settings = SourceSettings {
        token_url: world.sandbox.token_url(),
        client_id: o.client_id.clone(),
        scope: "https://outlook.office.com/SMTP.Send offline_access".into(),
        extra_roots: smtp_oauth_relay::tls::load_pem_certificates(&world.ca_file).unwrap(),
        timeout: Duration::from_secs(10),
        credential: Credential::Delegated {
            refresh_token_file: file.to_path_buf(),
        },
    };
    credential::build(&settings).expect("source")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_of_one_file_follow_each_others_rotations() {
    // A relay and a `check` run beside it share the refresh token file. Each refresh spends
    // the token it used; the other then holds a spent one, which the sandbox refuses as
    // Entra would. The refused one must take the newer token from the file, not give up
    // with "sign in again".
    let world = world(Duration::from_secs(60)).await;
    let (env, file) = delegated_env(&world);
    sign_in(&world, &env, &file, "relay@sandbox.example").await;
    let first = read_token(&file);
    let relay = source_for(&world, &file);
    let check = source_for(&world, &file);
    relay.fetch().await.expect("the relay refreshes");
    let after_relay = read_token(&file);
    assert_ne!(after_relay, first, "rotated and stored");
    check
        .fetch()
        .await
        .expect("check's spent token is replaced by the file's newer one");
    let after_check = read_token(&file);
    assert_ne!(after_check, after_relay);
    relay
        .fetch()
        .await
        .expect("and the relay follows check's rotation in turn");
    assert_ne!(read_token(&file), after_check);
}
