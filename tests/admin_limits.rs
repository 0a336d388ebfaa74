//! The admin port under a flood of idle connections (issue 11, item 8), through the binary:
//! with only 256 file descriptors, 300 silent connections to the admin port once starved the
//! SMTP listener (`accept failed: Too many open files`) and stayed open for minutes. Now the
//! admin port serves at most 64 connections at once (the rest wait in the kernel's accept
//! queue, costing the relay no descriptor), SMTP still greets and delivers, and the server
//! closes the silent connections it took at its header timeout (10 s). (Connections beyond
//! the admin port's accept queue of 128 are the kernel's, not the relay's: they never reach it.)
//!
//! Heavy (300 connections, ~12 s): `#[ignore]`d, run by `.ci/run`. The relay is started
//! through `sh -c 'ulimit -n 256; exec …'` (no unsafe code needed).

mod support;

#[path = "support/child.rs"]
mod child;

use std::time::{Duration, Instant};

use child::{free_addr, RelayChild};
use support::{relay_binary, RawClient, World, MAILBOX};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const FLOOD: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: run by .ci/run"]
async fn a_flooded_admin_port_neither_starves_smtp_nor_keeps_silent_connections() {
    let world = World::start().await;
    let smtp = free_addr();
    let admin = free_addr();
    let mut env = world.env();
    env.retain(|(k, _)| k != "SMTP_OAUTH_RELAY_LISTEN" && k != "SMTP_OAUTH_RELAY_ADMIN_LISTEN");
    env.push(("SMTP_OAUTH_RELAY_LISTEN".into(), smtp.to_string()));
    env.push(("SMTP_OAUTH_RELAY_ADMIN_LISTEN".into(), admin.to_string()));
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("stderr.log");
    let binary = relay_binary().display().to_string();
    let mut relay = RelayChild::spawn(
        std::path::Path::new("/bin/sh"),
        &["-c", "ulimit -n 256 && exec \"$0\" serve", &binary],
        &env,
        work.path(),
        &log,
    );
    relay.wait_ready(smtp, Duration::from_secs(30)).await;

    // The flood: silent connections, more than the relay has descriptors, all at once.
    // Each reports when the server closed it, if it did within 15 s of the start.
    let flooded = Instant::now();
    let checks: Vec<_> = (0..FLOOD)
        .map(|_| {
            tokio::spawn(async move {
                let until = tokio::time::Instant::from_std(flooded + Duration::from_secs(15));
                let mut s = tokio::time::timeout_at(until, TcpStream::connect(admin))
                    .await
                    .ok()?
                    .ok()?;
                let mut buf = [0u8; 64];
                match tokio::time::timeout_at(until, s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => Some(flooded.elapsed()),
                    Ok(Ok(_)) => panic!("the server sent something on a silent connection"),
                    Err(_) => None,
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // SMTP still greets and delivers.
    let mut c = tokio::time::timeout(Duration::from_secs(10), RawClient::connect(smtp))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no SMTP greeting within 10 s of the admin flood; relay log:\n{}",
                relay.stderr_tail(10)
            )
        });
    c.cmd("EHLO app.example", 250).await;
    let reply = c
        .send_mail(
            "app@example.com",
            &[MAILBOX],
            b"Subject: flood\r\n\r\nhi\r\n",
        )
        .await;
    assert!(reply.starts_with("250 "), "{reply}");
    assert!(!relay.stderr().contains("Too many open files"));

    // The server closes the silent connections it took (at most 64 at once) at its header
    // timeout; nothing is ever sent on them.
    let mut closed = Vec::new();
    for check in checks {
        closed.extend(check.await.expect("check task"));
    }
    closed.sort();
    eprintln!(
        "{} of {FLOOD} silent admin connections closed by the server, the first after {:?}",
        closed.len(),
        closed.first()
    );
    assert!(
        closed.len() >= 64,
        "only {} silent admin connections were closed within ~15 s",
        closed.len()
    );
    assert!(
        closed[0] >= Duration::from_secs(9) && closed[63] <= Duration::from_secs(13),
        "the first 64 should be closed at the 10 s header timeout: {:?}",
        &closed[..64]
    );
}
