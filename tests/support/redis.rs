//! A real `redis-server` for the shared governor's tests: on a loopback port of its own, in a
//! temporary directory of its own, with nothing saved to disk, stopped by PID when the handle
//! drops. Include beside `mod support;` and `#[path = "support/tools.rs"] mod tools;` with
//! `#[path = "support/redis.rs"] mod redis_server;`.
//!
//! A missing `redis-server` skips the test ("skipped: redis-server not installed"), except
//! when `COMPAT_REQUIRE_TOOLS` or `CI` is set (`.ci/run` sets it and installs the package):
//! there it fails, so CI cannot go green by skipping.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub struct RedisServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: TempDir,
    /// More `redis-server` arguments (e.g. `--requirepass`).
    extra: Vec<String>,
    /// With TLS only: the PEM of its self-signed certificate (the client's CA).
    pub tls_ca: Option<String>,
}

/// Whether `redis-server` can run here (a missing one fails where tools are required).
pub fn available() -> bool {
    crate::tools::tool_available("redis-server")
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// [`start`](Self::start) with more server arguments.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut dir = tempfile::tempdir().expect("tempdir");
        // A port that was free a moment ago; another process may take it first, so retry.
        for _ in 0..5 {
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port");
            let mut server = RedisServer {
                child: None,
                addr,
                dir,
                extra: extra.clone(),
                tls_ca: None,
            };
            if server.spawn() {
                return server;
            }
            dir = server.take_dir();
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// A server that speaks TLS only (`rediss://`), with a fresh self-signed certificate for
    /// 127.0.0.1 and localhost.
    pub fn start_tls() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("certificate");
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut server = RedisServer {
            child: None,
            addr,
            extra: vec![
                "--tls-port".into(),
                addr.port().to_string(),
                "--tls-cert-file".into(),
                cert_file.display().to_string(),
                "--tls-key-file".into(),
                key_file.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            dir,
            tls_ca: Some(cert.pem()),
        };
        assert!(server.spawn(), "redis-server with TLS starts on {addr}");
        server
    }

    fn take_dir(mut self) -> TempDir {
        self.stop();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// A client connection of the test's own (plain TCP servers only).
    pub async fn connect(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("client")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis-server")
    }

    /// Starts the server again on the same port (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after stop");
        assert!(self.spawn(), "redis-server restarts on {}", self.addr);
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &if self.tls_ca.is_some() {
                    "0".to_string()
                } else {
                    self.addr.port().to_string()
                },
                "--bind",
                "127.0.0.1",
                "--dir",
                &self.dir.path().display().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                &self.dir.path().join("redis.log").display().to_string(),
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return true;
            }
            if let Some(c) = self.child.as_mut() {
                if c.try_wait().expect("try_wait").is_some() {
                    self.child = None;
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    /// One `PING` with a short timeout (with TLS: the port accepts connections).
    pub fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) else {
            return false;
        };
        if self.tls_ca.is_some() {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        // `+PONG`, or `-NOAUTH …` from a server that wants a password: either way it runs.
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).is_ok() && (&buf == b"+PONG\r" || &buf == b"-NOAUT")
    }

    /// Stops the server by its PID (SIGKILL: like a crash or a lost node) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
