//! The Postfix peer of the end-to-end benchmark (issue 14): a throwaway Postfix instance on
//! loopback that relays everything to a do-nothing SMTP sink, so that queue mode can be
//! compared with a real MTA on the same machine, in the same run.
//!
//! Shared by `benches/e2e.rs` (the `postfix` scenario) and `tests/postfix_peer.rs` through
//! `#[path]`.
//!
//! The instance lives entirely in one temporary directory: `conf/` (its `main.cf` and
//! `master.cf`, also its `meta_directory`), `queue/` (its `queue_directory`, laid out as the
//! package's `postfix-files` lays out the system's), `data/` (its `data_directory`) and
//! `maillog`. The harness runs Postfix's `master -c DIR/conf` itself rather than `postfix
//! start`: on Debian `postfix start` runs `postfix-script` and `post-install` from
//! `/etc/postfix` (the package's `meta_directory`), and this instance must not read or write
//! anything of the system's Postfix (`/etc/postfix`, `/var/spool/postfix`, `/var/lib/postfix`).
//! [`refuse_system_paths`] checks that before anything starts. The master detaches into its own
//! session (its process group is its PID) and is stopped by the PID in `queue/pid/master.pid`:
//! SIGTERM, a bounded wait, then SIGKILL to its process group if anything is left.
//!
//! Postfix keeps its default durability: `cleanup` fsyncs the queue file before `smtpd`
//! answers `250`, as the relay's queue mode does.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Where the Debian package `postfix` puts its programs.
pub const MASTER: &str = "/usr/lib/postfix/sbin/master";
pub const POSTCONF: &str = "/usr/sbin/postconf";
/// The system instance's directories: never read or written here.
pub const SYSTEM_PATHS: &[&str] = &["/etc/postfix", "/var/spool/postfix", "/var/lib/postfix"];
/// The users the package creates: `mail_owner` and `setgid_group`.
pub const MAIL_OWNER: &str = "postfix";
pub const SETGID_GROUP: &str = "postdrop";

// ---------------------------------------------------------------------------------------------
// Finding the installation

/// An installed Postfix this harness can run.
#[derive(Debug, Clone)]
pub struct Install {
    pub master: PathBuf,
    pub postconf: PathBuf,
    /// `mail_owner`'s user and group IDs.
    pub owner: (u32, u32),
    /// `setgid_group`'s group ID.
    pub setgid_gid: u32,
}

impl Install {
    /// The Debian package's Postfix, or why it cannot be used (in words for a skip line).
    pub fn find() -> Result<Install, String> {
        Self::find_at(Path::new(MASTER), Path::new(POSTCONF))
    }

    pub fn find_at(master: &Path, postconf: &Path) -> Result<Install, String> {
        for p in [master, postconf] {
            if !p.is_file() {
                return Err(format!(
                    "Postfix is not installed: {} is missing (Debian package `postfix`)",
                    p.display()
                ));
            }
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        match effective_uid(&status) {
            Some(0) => {}
            Some(uid) => {
                return Err(format!(
                    "Postfix's master must run as root (it drops to `{MAIL_OWNER}` itself); \
                     this process runs as user ID {uid}"
                ))
            }
            None => return Err("cannot read this process's user ID from /proc".into()),
        }
        let owner = parse_passwd_entry(&getent("passwd", MAIL_OWNER)?)?;
        let setgid_gid = parse_group_entry(&getent("group", SETGID_GROUP)?)?;
        Ok(Install {
            master: master.to_path_buf(),
            postconf: postconf.to_path_buf(),
            owner,
            setgid_gid,
        })
    }
}

fn getent(db: &str, name: &str) -> Result<String, String> {
    let out = Command::new("getent")
        .args([db, name])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run getent {db} {name}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the {db} entry `{name}` does not exist (the Debian package `postfix` creates it)"
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The effective user ID from `/proc/self/status` (`Uid: real effective saved fs`).
pub fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// `(uid, gid)` from a passwd line `name:x:uid:gid:gecos:home:shell`.
pub fn parse_passwd_entry(line: &str) -> Result<(u32, u32), String> {
    let f: Vec<&str> = line.split(':').collect();
    let num = |i: usize, what: &str| {
        f.get(i)
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| format!("passwd entry `{line}` has no numeric {what}"))
    };
    if f.len() != 7 {
        return Err(format!(
            "passwd entry `{line}` has {} fields, not 7",
            f.len()
        ));
    }
    let (uid, gid) = (num(2, "user ID")?, num(3, "group ID")?);
    if uid == 0 {
        return Err(format!(
            "passwd entry `{line}`: Postfix refuses a mail_owner with user ID 0"
        ));
    }
    Ok((uid, gid))
}

/// The gid from a group line `name:x:gid:members`.
pub fn parse_group_entry(line: &str) -> Result<u32, String> {
    let f: Vec<&str> = line.split(':').collect();
    if f.len() != 4 {
        return Err(format!(
            "group entry `{line}` has {} fields, not 4",
            f.len()
        ));
    }
    f[2].parse()
        .map_err(|_| format!("group entry `{line}` has no numeric group ID"))
}

// ---------------------------------------------------------------------------------------------
// The instance's files (pure)

/// The instance's directories, all under one temporary directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn config(&self) -> PathBuf {
        self.root.join("conf")
    }
    pub fn queue(&self) -> PathBuf {
        self.root.join("queue")
    }
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn maillog(&self) -> PathBuf {
        self.root.join("maillog")
    }
    pub fn stderr(&self) -> PathBuf {
        self.root.join("master.stderr")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.queue().join("pid/master.pid")
    }
}

/// Refuses a layout any of whose directories is, or is inside, the system instance's.
pub fn refuse_system_paths(layout: &Layout) -> Result<(), String> {
    for p in [
        layout.root.clone(),
        layout.config(),
        layout.queue(),
        layout.data(),
    ] {
        if !p.is_absolute() {
            return Err(format!("{} is not an absolute path", p.display()));
        }
        if let Some(sys) = SYSTEM_PATHS
            .iter()
            .find(|s| p.starts_with(s) || Path::new(s).starts_with(&p))
        {
            return Err(format!(
                "{} overlaps the system Postfix's {sys}: refusing to use it",
                p.display()
            ));
        }
    }
    Ok(())
}

/// The queue directory's subdirectories: name, owner is `mail_owner` (else root), group is
/// `setgid_group` (else root), mode. As in the package's `postfix-files`.
pub const QUEUE_DIRS: &[(&str, bool, bool, u32)] = &[
    ("active", true, false, 0o700),
    ("bounce", true, false, 0o700),
    ("corrupt", true, false, 0o700),
    ("defer", true, false, 0o700),
    ("deferred", true, false, 0o700),
    ("flush", true, false, 0o700),
    ("hold", true, false, 0o700),
    ("incoming", true, false, 0o700),
    ("private", true, false, 0o700),
    ("maildrop", true, true, 0o730),
    ("public", true, true, 0o710),
    ("pid", false, false, 0o755),
    ("saved", true, false, 0o700),
    ("trace", true, false, 0o700),
];

/// `main.cf`: loopback in, everything relayed to the sink, nothing local, no DNS. `extra`
/// lines come last (a later setting wins in `main.cf`).
pub fn main_cf(layout: &Layout, sink: SocketAddr, extra: &[(String, String)]) -> String {
    let mut lines: Vec<(String, String)> = [
        ("compatibility_level", "3.6".to_string()),
        ("queue_directory", layout.queue().display().to_string()),
        ("data_directory", layout.data().display().to_string()),
        // Where postfix-files, dynamicmaps.cf and the scripts would be: ours, not /etc/postfix.
        ("meta_directory", layout.config().display().to_string()),
        ("mail_owner", MAIL_OWNER.to_string()),
        ("setgid_group", SETGID_GROUP.to_string()),
        ("myhostname", "postfix.peer.example".to_string()),
        ("mydomain", "peer.example".to_string()),
        // No local delivery: no domain is ours, no aliases, no local recipients.
        ("mydestination", String::new()),
        ("local_recipient_maps", String::new()),
        ("alias_maps", String::new()),
        ("alias_database", String::new()),
        (
            "local_transport",
            "error:5.1.1 no local delivery".to_string(),
        ),
        ("inet_interfaces", sink.ip().to_string()),
        ("inet_protocols", "ipv4".to_string()),
        ("mynetworks", "127.0.0.0/8".to_string()),
        ("relay_domains", String::new()),
        ("relayhost", format!("[{}]:{}", sink.ip(), sink.port())),
        ("default_transport", "smtp".to_string()),
        ("smtp_dns_support_level", "disabled".to_string()),
        (
            "smtpd_relay_restrictions",
            "permit_mynetworks, reject".to_string(),
        ),
        (
            "smtpd_recipient_restrictions",
            "permit_mynetworks, reject".to_string(),
        ),
        ("smtpd_tls_security_level", "none".to_string()),
        ("smtp_tls_security_level", "none".to_string()),
        ("biff", "no".to_string()),
        ("maillog_file", layout.maillog().display().to_string()),
        ("maillog_file_prefixes", layout.root.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    lines.extend(extra.iter().cloned());
    let mut out = String::from("# Throwaway Postfix peer of the e2e benchmark.\n");
    for (k, v) in lines {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

/// `master.cf`: an `smtpd` on `listen` and the services a relay needs; nothing chrooted, no
/// `local`, no `pickup` (nothing is submitted through the `sendmail` command).
pub fn master_cf(listen: SocketAddr) -> String {
    let services: &[(&str, &str, &str, &str, &str, &str)] = &[
        // service, type, private, wakeup, maxproc, command
        ("cleanup", "unix", "n", "-", "0", "cleanup"),
        ("qmgr", "unix", "n", "300", "1", "qmgr"),
        ("rewrite", "unix", "-", "-", "-", "trivial-rewrite"),
        ("bounce", "unix", "-", "-", "0", "bounce"),
        ("defer", "unix", "-", "-", "0", "bounce"),
        ("trace", "unix", "-", "-", "0", "bounce"),
        ("verify", "unix", "-", "-", "1", "verify"),
        ("flush", "unix", "n", "1000?", "0", "flush"),
        ("proxymap", "unix", "-", "-", "-", "proxymap"),
        ("smtp", "unix", "-", "-", "-", "smtp"),
        ("relay", "unix", "-", "-", "-", "smtp"),
        ("error", "unix", "-", "-", "-", "error"),
        ("retry", "unix", "-", "-", "-", "error"),
        ("discard", "unix", "-", "-", "-", "discard"),
        ("anvil", "unix", "-", "-", "1", "anvil"),
        ("scache", "unix", "-", "-", "1", "scache"),
        ("postlog", "unix-dgram", "n", "-", "1", "postlogd"),
    ];
    let mut out = String::from("# service type private unpriv chroot wakeup maxproc command\n");
    out.push_str(&format!("{listen} inet n - n - - smtpd\n"));
    for (name, kind, private, wakeup, maxproc, command) in services {
        out.push_str(&format!(
            "{name} {kind} {private} - n {wakeup} {maxproc} {command}\n"
        ));
    }
    out
}

/// The PID in `master.pid` (Postfix writes it right-aligned, space padded).
pub fn parse_pid_file(text: &str) -> Result<u32, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("the master's pid file is empty".into());
    }
    match t.parse::<u32>() {
        Ok(pid) if pid > 1 => Ok(pid),
        Ok(pid) => Err(format!(
            "the master's pid file names PID {pid}, which is not a master"
        )),
        Err(_) => Err(format!("the master's pid file holds `{t}`, not a PID")),
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings of the master's process tree (pure parsing)

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub state: char,
    pub pgrp: u32,
    /// utime + stime + cutime + cstime, in clock ticks: the process and its reaped children.
    pub ticks: u64,
}

pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        pid,
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        ticks: num(11)? + num(12)? + num(13)? + num(14)?,
    })
}

/// Every process of process group `pgrp`, zombies included.
pub fn group_members(pgrp: u32) -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name();
        name.to_str()?.parse::<u32>().ok()?;
        let text = std::fs::read_to_string(Path::new("/proc").join(&name).join("stat")).ok()?;
        parse_proc_stat(&text).filter(|s| s.pgrp == pgrp)
    })
    .collect()
}

/// Processes of the group that still run (zombies have ended).
pub fn live_members(pgrp: u32) -> Vec<ProcStat> {
    group_members(pgrp)
        .into_iter()
        .filter(|s| s.state != 'Z' && s.state != 'X')
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The instance

/// What went wrong starting Postfix, with its log.
#[derive(Debug)]
pub struct StartError {
    pub reason: String,
    /// The instance's `maillog` and the master's stderr.
    pub log: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n--- Postfix's log ---\n{}", self.reason, self.log)
    }
}

/// How to start the instance.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// Where every message goes.
    pub sink: SocketAddr,
    /// The temporary directory's parent (the system temporary directory if `None`).
    pub parent_dir: Option<PathBuf>,
    /// Extra `main.cf` settings, after the harness's.
    pub extra_main_cf: Vec<(String, String)>,
    /// Longest wait for the SMTP greeting.
    pub start_timeout: Duration,
    /// The `smtpd` address; a free loopback port if `None`.
    pub listen: Option<SocketAddr>,
}

impl PeerOptions {
    pub fn new(sink: SocketAddr) -> PeerOptions {
        PeerOptions {
            sink,
            parent_dir: None,
            extra_main_cf: Vec::new(),
            start_timeout: Duration::from_secs(20),
            listen: None,
        }
    }
}

/// How the instance stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// SIGTERM was not enough: the process group got SIGKILL.
    pub killed: bool,
    /// Processes of the group still running afterwards (none, normally).
    pub left_running: usize,
}

/// A running throwaway Postfix; stopped and removed when dropped.
pub struct PostfixPeer {
    master: Option<Child>,
    pid: u32,
    listen: SocketAddr,
    layout: Layout,
    version: String,
    dir: Option<tempfile::TempDir>,
}

impl PostfixPeer {
    pub fn start(install: &Install, o: &PeerOptions) -> Result<PostfixPeer, StartError> {
        let plain = |reason: String| StartError {
            reason,
            log: String::new(),
        };
        let builder = tempfile::Builder::new()
            .prefix("postfix-peer-")
            .tempdir_in(o.parent_dir.clone().unwrap_or_else(std::env::temp_dir));
        let dir =
            builder.map_err(|e| plain(format!("cannot create a temporary directory: {e}")))?;
        let layout = Layout {
            root: dir.path().to_path_buf(),
        };
        refuse_system_paths(&layout).map_err(plain)?;
        let listen = match o.listen {
            Some(a) => a,
            None => free_port().map_err(|e| plain(format!("no free loopback port: {e}")))?,
        };
        prepare(install, &layout, o, listen).map_err(|e| StartError {
            reason: format!("cannot prepare {}: {e}", layout.root.display()),
            log: String::new(),
        })?;
        let version = postconf_version(install, &layout).map_err(|reason| StartError {
            reason,
            log: read_log(&layout),
        })?;
        let stderr = std::fs::File::create(layout.stderr())
            .map_err(|e| plain(format!("cannot create the master's stderr file: {e}")))?;
        let mut cmd = Command::new(&install.master);
        cmd.arg("-c")
            .arg(layout.config())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr));
        for var in ["MAIL_CONFIG", "MAIL_DEBUG", "MAIL_VERBOSE", "MAIL_LOGTAG"] {
            cmd.env_remove(var);
        }
        let child = cmd
            .spawn()
            .map_err(|e| plain(format!("cannot run {}: {e}", install.master.display())))?;
        let mut peer = PostfixPeer {
            pid: child.id(),
            master: Some(child),
            listen,
            layout,
            version,
            dir: Some(dir),
        };
        if let Err(reason) = peer.wait_listening(o.start_timeout) {
            let log = startup_log(&peer.layout);
            peer.stop();
            return Err(StartError { reason, log });
        }
        Ok(peer)
    }

    /// The `smtpd` port.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The master's PID, which is also its process group.
    pub fn master_pid(&self) -> u32 {
        self.pid
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn log(&self) -> String {
        read_log(&self.layout)
    }

    /// CPU seconds (user + system) of the master's process tree so far: every process of its
    /// group plus the children each has reaped (the master reaps `smtpd`, `cleanup`, …).
    pub fn cpu_secs(&self) -> f64 {
        let ticks: u64 = group_members(self.pid).iter().map(|s| s.ticks).sum();
        ticks as f64 / 100.0 // USER_HZ is 100 on Linux
    }

    /// Waits for this instance's `smtpd` greeting (not just an open port: a port taken by
    /// someone else must not pass for Postfix).
    fn wait_listening(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if greets(self.listen) {
                return Ok(());
            }
            if let Some(child) = self.master.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("Postfix's master exited at start-up ({status})"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "Postfix did not listen on {} within {limit:?}",
                    self.listen
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the instance by the PID in its pid file (SIGTERM, then SIGKILL to its process
    /// group if needed) and removes its directory.
    pub fn stop(&mut self) -> Stopped {
        let Some(mut child) = self.master.take() else {
            return Stopped {
                killed: false,
                left_running: 0,
            };
        };
        // The pid file names the master we started; anything else is not ours to signal.
        let pid = std::fs::read_to_string(self.layout.pid_file())
            .ok()
            .and_then(|t| parse_pid_file(&t).ok())
            .filter(|p| *p == self.pid)
            .unwrap_or(self.pid);
        signal("-TERM", &pid.to_string());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The master sends SIGTERM to its group as it exits; give the children a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while exited && !live_members(pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut killed = false;
        if !exited || !live_members(pid).is_empty() {
            killed = true;
            signal("-KILL", &format!("-{pid}"));
            let _ = child.kill();
        }
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !live_members(pid).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let left_running = live_members(pid).len();
        self.dir.take();
        Stopped {
            killed,
            left_running,
        }
    }
}

impl Drop for PostfixPeer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `kill SIG TARGET` (a PID, or `-PGID` for a process group).
fn signal(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args([sig, "--", target])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether `addr` answers with this instance's greeting within a second.
fn greets(addr: SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    is_peer_greeting(&buf[..n])
}

/// `220 postfix.peer.example ESMTP …`: the greeting of this harness's `myhostname`.
pub fn is_peer_greeting(reply: &[u8]) -> bool {
    reply.starts_with(b"220 postfix.peer.example ")
}

fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Writes the configuration and lays out the queue and data directories.
fn prepare(
    install: &Install,
    layout: &Layout,
    o: &PeerOptions,
    listen: SocketAddr,
) -> std::io::Result<()> {
    let (uid, _) = install.owner;
    // Traversable by `mail_owner` (the daemons run as that user).
    std::fs::set_permissions(&layout.root, std::fs::Permissions::from_mode(0o755))?;
    let mkdir = |p: &Path, mode: u32, owner: Option<u32>, group: Option<u32>| {
        std::fs::create_dir(p)?;
        chown(p, owner, group)?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
    };
    mkdir(&layout.config(), 0o755, Some(0), Some(0))?;
    mkdir(&layout.queue(), 0o755, Some(0), Some(0))?;
    mkdir(&layout.data(), 0o700, Some(uid), None)?;
    for (name, owned, setgid, mode) in QUEUE_DIRS {
        let owner = if *owned { uid } else { 0 };
        let group = if *setgid { install.setgid_gid } else { 0 };
        mkdir(&layout.queue().join(name), *mode, Some(owner), Some(group))?;
    }
    std::fs::write(
        layout.config().join("main.cf"),
        main_cf(layout, o.sink, &o.extra_main_cf),
    )?;
    std::fs::write(layout.config().join("master.cf"), master_cf(listen))?;
    Ok(())
}

/// `postconf -c DIR -h mail_version`: the version, and a first read of the configuration.
fn postconf_version(install: &Install, layout: &Layout) -> Result<String, String> {
    let out = Command::new(&install.postconf)
        .arg("-c")
        .arg(layout.config())
        .args(["-h", "mail_version"])
        .env_remove("MAIL_CONFIG")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", install.postconf.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "postconf rejected the configuration: {}",
            stderr.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The log after a failed start: Postfix's own, or (it reports start-up errors to syslog
/// only, before its `maillog_file` is open) a hint and the configuration it was given.
fn startup_log(layout: &Layout) -> String {
    let log = read_log(layout);
    if !log.starts_with('(') {
        return log;
    }
    let syslog = if Path::new("/dev/log").exists() {
        "see the system log (journalctl or /var/log/mail.log)"
    } else {
        "and this machine has no syslog (/dev/log)"
    };
    let mut out = format!(
        "{log}Postfix reports start-up errors (before its maillog_file is open) to syslog \
         only: {syslog}. Its configuration was:\n"
    );
    for name in ["main.cf", "master.cf"] {
        let text = std::fs::read_to_string(layout.config().join(name)).unwrap_or_default();
        out.push_str(&format!("[{name}]\n{text}"));
    }
    out
}

fn read_log(layout: &Layout) -> String {
    let mut out = String::new();
    for (what, path) in [
        ("maillog", layout.maillog()),
        ("master stderr", layout.stderr()),
    ] {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.trim().is_empty() {
            out.push_str(&format!("[{what}]\n{}\n", text.trim_end()));
        }
    }
    if out.is_empty() {
        out.push_str("(Postfix logged nothing)\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The sink: accepts every message with 250 and discards it

/// Longest command or data line the sink reads (Postfix folds lines at 998 bytes).
const SINK_LINE_LIMIT: u64 = 64 * 1024;
/// Connections served at once; a further client waits in the listen backlog.
const SINK_CONNECTIONS: usize = 256;
/// Longest wait for a client's next line.
const SINK_IDLE: Duration = Duration::from_secs(60);

/// A do-nothing SMTP server on loopback, stopped when dropped (or with its runtime).
pub struct Sink {
    addr: SocketAddr,
    messages: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Sink {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start() -> std::io::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let messages = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(SINK_CONNECTIONS));
        let (count, token) = (messages.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                let accepted = tokio::select! {
                    _ = token.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let (count, token) = (count.clone(), token.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = sink_session(stream, &count) => {}
                    }
                    drop(permit);
                });
            }
        });
        Ok(Sink {
            addr,
            messages,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Waits until the sink has accepted `n` messages; false on timeout.
    pub fn wait_for(&self, n: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.messages() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What the sink answers to one command line (without its line ending).
#[derive(Debug, PartialEq, Eq)]
pub enum SinkReply {
    Send(&'static str),
    /// `354`, then read the message up to the lone dot.
    Data,
    Quit,
}

pub fn sink_reply(line: &[u8]) -> SinkReply {
    let verb: Vec<u8> = line
        .iter()
        .take_while(|b| !b.is_ascii_whitespace())
        .map(u8::to_ascii_uppercase)
        .collect();
    match verb.as_slice() {
        b"EHLO" => SinkReply::Send("250-sink.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
        b"HELO" => SinkReply::Send("250 sink.example\r\n"),
        b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => SinkReply::Send("250 2.0.0 ok\r\n"),
        b"DATA" => SinkReply::Data,
        b"QUIT" => SinkReply::Quit,
        _ => SinkReply::Send("502 5.5.2 not here\r\n"),
    }
}

async fn sink_session(stream: TcpStream, count: &AtomicU64) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::with_capacity(1024);
    write.write_all(b"220 sink.example ESMTP\r\n").await?;
    loop {
        if !read_line(&mut read, &mut line).await? {
            return Ok(());
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match sink_reply(text) {
            SinkReply::Send(reply) => write.write_all(reply.as_bytes()).await?,
            SinkReply::Quit => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            SinkReply::Data => {
                write.write_all(b"354 go ahead\r\n").await?;
                loop {
                    if !read_line(&mut read, &mut line).await? {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                }
                count.fetch_add(1, Ordering::Relaxed);
                write.write_all(b"250 2.0.0 discarded\r\n").await?;
            }
        }
    }
}

/// One line into `line` (bounded in length and time); false at the end of the stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    read: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<bool> {
    line.clear();
    let n = tokio::time::timeout(
        SINK_IDLE,
        (&mut *read).take(SINK_LINE_LIMIT).read_until(b'\n', line),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "sink: client idle"))??;
    if n as u64 == SINK_LINE_LIMIT && !line.ends_with(b"\n") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "sink: line too long",
        ));
    }
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            root: PathBuf::from("/tmp/postfix-peer-x"),
        }
    }

    #[test]
    fn main_cf_relays_everything_to_the_sink_and_delivers_nothing_locally() {
        let sink: SocketAddr = "127.0.0.1:2526".parse().unwrap();
        let cf = main_cf(&layout(), sink, &[]);
        for line in [
            "relayhost = [127.0.0.1]:2526",
            "default_transport = smtp",
            "mydestination = \n",
            "inet_interfaces = 127.0.0.1",
            "mynetworks = 127.0.0.0/8",
            "smtpd_recipient_restrictions = permit_mynetworks, reject",
            "smtp_dns_support_level = disabled",
            "queue_directory = /tmp/postfix-peer-x/queue",
            "data_directory = /tmp/postfix-peer-x/data",
            "meta_directory = /tmp/postfix-peer-x/conf",
            "maillog_file = /tmp/postfix-peer-x/maillog",
        ] {
            assert!(cf.contains(line), "main.cf lacks `{line}`:\n{cf}");
        }
        for sys in SYSTEM_PATHS {
            assert!(!cf.contains(sys), "main.cf names {sys}:\n{cf}");
        }
    }

    #[test]
    fn extra_main_cf_settings_come_last_so_they_win() {
        let sink: SocketAddr = "127.0.0.1:2526".parse().unwrap();
        let cf = main_cf(&layout(), sink, &[("mail_owner".into(), "root".into())]);
        let last = cf
            .lines()
            .rev()
            .find(|l| l.starts_with("mail_owner"))
            .unwrap();
        assert_eq!(last, "mail_owner = root");
    }

    #[test]
    fn master_cf_listens_on_loopback_chroots_nothing_and_has_no_local_delivery() {
        let cf = master_cf("127.0.0.1:4025".parse().unwrap());
        assert!(
            cf.contains("\n127.0.0.1:4025 inet n - n - - smtpd\n"),
            "{cf}"
        );
        assert!(cf.contains("postlog unix-dgram n - n - 1 postlogd"), "{cf}");
        for line in cf.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f[4], "n", "chrooted: {line}");
            assert!(
                !["local", "virtual", "pipe", "pickup"].contains(&f[7]),
                "{line}"
            );
        }
    }

    #[test]
    fn system_directories_are_refused() {
        assert!(refuse_system_paths(&layout()).is_ok());
        for root in ["/etc/postfix", "/var/spool/postfix/x", "/var/lib", "/"] {
            let err = refuse_system_paths(&Layout { root: root.into() }).unwrap_err();
            assert!(err.contains("system Postfix"), "{root}: {err}");
        }
        let err = refuse_system_paths(&Layout {
            root: "relative".into(),
        })
        .unwrap_err();
        assert!(err.contains("not an absolute path"), "{err}");
    }

    #[test]
    fn pid_files_are_read_and_bad_ones_refused_in_words() {
        assert_eq!(parse_pid_file("             4242\n"), Ok(4242));
        assert_eq!(
            parse_pid_file("  \n"),
            Err("the master's pid file is empty".into())
        );
        assert!(parse_pid_file("abc").unwrap_err().contains("not a PID"));
        assert!(parse_pid_file("1").unwrap_err().contains("not a master"));
        assert!(parse_pid_file("0").unwrap_err().contains("not a master"));
    }

    #[test]
    fn proc_stat_counts_own_and_reaped_children_ticks() {
        // Fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime ...
        let text = "812 (smtpd (x) y) S 800 800 800 0 -1 4194560 10 0 0 0 7 3 20 5 20 0 1";
        let s = parse_proc_stat(text).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 812,
                state: 'S',
                pgrp: 800,
                ticks: 35
            }
        );
        assert_eq!(parse_proc_stat("812 (smtpd) S 800"), None);
        assert_eq!(parse_proc_stat(""), None);
    }

    #[test]
    fn passwd_group_and_status_lines_are_parsed_and_bad_ones_refused() {
        assert_eq!(
            parse_passwd_entry("postfix:x:102:105::/var/spool/postfix:/usr/sbin/nologin"),
            Ok((102, 105))
        );
        assert!(parse_passwd_entry("root:x:0:0:root:/root:/bin/bash")
            .unwrap_err()
            .contains("user ID 0"));
        assert!(parse_passwd_entry("postfix:x:abc:105::/:/bin/false")
            .unwrap_err()
            .contains("no numeric user ID"));
        assert!(parse_passwd_entry("postfix").unwrap_err().contains("not 7"));
        assert_eq!(parse_group_entry("postdrop:x:106:"), Ok(106));
        assert!(parse_group_entry("postdrop:x:106")
            .unwrap_err()
            .contains("not 4"));
        assert!(parse_group_entry("postdrop:x::")
            .unwrap_err()
            .contains("numeric"));
        assert_eq!(effective_uid("Name:\tx\nUid:\t1000\t0\t0\t0\n"), Some(0));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn a_missing_postfix_is_a_skip_reason_naming_the_program() {
        let err = Install::find_at(
            Path::new("/nonexistent/postfix/master"),
            Path::new(POSTCONF),
        )
        .unwrap_err();
        assert!(err.contains("Postfix is not installed"), "{err}");
        assert!(err.contains("/nonexistent/postfix/master"), "{err}");
    }

    #[test]
    fn only_this_instances_greeting_counts_as_started() {
        assert!(is_peer_greeting(
            b"220 postfix.peer.example ESMTP Postfix (Debian/GNU)\r\n"
        ));
        assert!(!is_peer_greeting(b"220 sink.example ESMTP\r\n"));
        assert!(!is_peer_greeting(b"421 postfix.peer.example busy\r\n"));
        assert!(!is_peer_greeting(b""));
    }

    #[test]
    fn the_sink_answers_each_command() {
        assert_eq!(
            sink_reply(b"ehlo postfix.peer.example"),
            SinkReply::Send("250-sink.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        );
        assert_eq!(
            sink_reply(b"MAIL FROM:<a@b>"),
            SinkReply::Send("250 2.0.0 ok\r\n")
        );
        assert_eq!(
            sink_reply(b"RCPT TO:<c@d>"),
            SinkReply::Send("250 2.0.0 ok\r\n")
        );
        assert_eq!(sink_reply(b"DATA"), SinkReply::Data);
        assert_eq!(sink_reply(b"QUIT"), SinkReply::Quit);
        assert_eq!(
            sink_reply(b"STARTTLS"),
            SinkReply::Send("502 5.5.2 not here\r\n")
        );
        assert_eq!(sink_reply(b""), SinkReply::Send("502 5.5.2 not here\r\n"));
    }
}
