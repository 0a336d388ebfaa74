//! `smtp-oauth-relay hash-password [NAME]` as a user runs it: the real binary, a password piped
//! on stdin, and what it prints read back with the users-file parser the relay uses.
//!
//! Every run is bounded in time; a child still running at the limit is killed.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smtp_oauth_relay::smtp::users::Users;
use support::relay_binary;

/// How long one run may take (one argon2 hash with default parameters).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `hash-password` with `args`, writes `stdin` and closes it, waits at most
/// [`RUN_TIMEOUT`].
fn hash_password(args: &[&str], stdin: &[u8]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(relay_binary())
        .arg("hash-password")
        .args(args)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn the relay binary");
    {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        // The child may exit before reading (a refused NAME): a broken pipe is fine then.
        let _ = pipe.write_all(stdin);
    }
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hash-password {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).expect("read stdout"),
        stderr: std::fs::read_to_string(&err_path).expect("read stderr"),
    }
}

#[test]
fn prints_a_hash_that_verifies_the_piped_password() {
    let run = hash_password(&[], b"correct horse battery\n");
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    let hash = run.stdout.strip_suffix('\n').expect("one line");
    assert!(!hash.contains('\n'), "{:?}", run.stdout);
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(
        !run.stderr.contains("Password:"),
        "no prompt when stdin is a pipe"
    );
    assert!(!run.stdout.contains("correct horse") && !run.stderr.contains("correct horse"));

    let users = Users::parse(&format!("app:{hash}\n")).expect("the users file takes it");
    assert!(users.verify("app", b"correct horse battery").is_some());
    assert!(users.verify("app", b"correct horse battery\n").is_none());
    assert!(users.verify("app", b"correct horse").is_none());
}

#[test]
fn with_a_name_prints_a_users_file_line() {
    // CRLF ends the line too; spaces inside belong to the password.
    let run = hash_password(&["alice@contoso.com"], b" s3cret pass \r\nsecond line\n");
    assert_eq!(run.code, Some(0), "stderr: {}", run.stderr);
    assert!(
        run.stdout.starts_with("alice@contoso.com:$argon2id$"),
        "{}",
        run.stdout
    );
    let users = Users::parse(&run.stdout).expect("a ready users-file line");
    assert_eq!(users.len(), 1);
    let alice = users
        .verify("alice@contoso.com", b" s3cret pass ")
        .expect("right password");
    assert!(alice.senders.is_empty());
    assert!(users.verify("alice@contoso.com", b"s3cret pass").is_none());
    assert!(users
        .verify("alice@contoso.com", b" s3cret pass \r")
        .is_none());
    assert!(users.verify("bob", b" s3cret pass ").is_none());
    assert!(!run.stdout.contains("s3cret") && !run.stderr.contains("s3cret"));
}

#[test]
fn an_empty_password_exits_64() {
    for stdin in [&b""[..], b"\n", b"\r\n", b"\nthe second line is not read\n"] {
        let run = hash_password(&["app"], stdin);
        assert_eq!(run.code, Some(64), "{stdin:?}: {}", run.stderr);
        assert!(
            run.stderr.contains("the password is empty"),
            "{}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{:?}", run.stdout);
    }
}

#[test]
fn a_name_the_users_file_cannot_hold_exits_64() {
    let cases = [
        ("app:admin", "cannot contain `:`"),
        ("app admin", "cannot contain spaces"),
        ("app\tadmin", "cannot contain spaces"),
        ("#app", "cannot start with `#`"),
        ("", "the user name is empty"),
    ];
    for (name, want) in cases {
        let run = hash_password(&[name], b"s3cret\n");
        assert_eq!(run.code, Some(64), "{name:?}: {}", run.stderr);
        assert!(run.stderr.contains(want), "{name:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{name:?}: {:?}", run.stdout);
        assert!(!run.stderr.contains("s3cret"));
    }
}
