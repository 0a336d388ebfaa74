//! The `loadgen` driver: C connections share N messages (or run for a duration), each greets
//! once and then sends message after message, pipelined when the server offers it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::report::{accepted_as, cap_io_reasons, io_key, latency, Accepted, Report};
use super::spec::{body, stamp, Options};
use crate::cli::dialog::{Conn, Failure};
use crate::sync::Lock as _;

/// Opens a session: greeting, EHLO, STARTTLS and AUTH as configured. Returns the connection
/// and whether the server offers PIPELINING.
async fn open(o: &Options) -> Result<(Conn, bool), Failure> {
    let tcp = tokio::time::timeout(o.reply_timeout, TcpStream::connect(o.target))
        .await
        .map_err(|_| Failure::Io("connect timeout".into()))?
        .map_err(|e| Failure::Io(format!("connect: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut c = Conn::new(Box::new(tcp), o.reply_timeout);
    c.expect("greeting", 2).await?;
    let mut ehlo = c.cmd("EHLO loadgen.example\r\n", "EHLO", 2).await?;
    if let Some(tls) = &o.tls {
        c.cmd("STARTTLS\r\n", "STARTTLS", 2).await?;
        let name = rustls_pki_types::ServerName::try_from(tls.server_name.clone())
            .map_err(|e| Failure::Io(format!("TLS name: {e}")))?;
        let Conn { io, buf, timeout } = c;
        if !buf.is_empty() {
            return Err(Failure::Io("data after STARTTLS reply".into()));
        }
        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
            .connect(name, io)
            .await
            .map_err(|e| Failure::Io(format!("TLS: {e}")))?;
        c = Conn {
            io: Box::new(stream),
            buf,
            timeout,
        };
        ehlo = c.cmd("EHLO loadgen.example\r\n", "EHLO", 2).await?;
    }
    if let Some(auth) = &o.auth {
        c.cmd(&auth.command(), "AUTH", 2).await?;
    }
    let pipelining = ehlo
        .lines
        .iter()
        .any(|l| l.eq_ignore_ascii_case("PIPELINING"));
    Ok((c, pipelining))
}

/// One transaction; `Ok` on `250` after the final dot, with what the reply said became of
/// the message.
async fn transaction(
    c: &mut Conn,
    o: &Options,
    pipelined: bool,
    body: &[u8],
    n: u64,
) -> Result<Accepted, Failure> {
    let mut envelope = format!("MAIL FROM:<{}> SIZE={}\r\n", o.from, body.len());
    for r in 0..o.recipients {
        envelope += &format!(
            "RCPT TO:<loadgen-{}@{}>\r\n",
            (n + u64::from(r)) % 1000,
            o.rcpt_domain
        );
    }
    if pipelined {
        envelope += "DATA\r\n";
        c.send(envelope.as_bytes()).await?;
        let mut refused = None;
        let mail = c.reply().await?;
        if mail.code / 100 != 2 {
            refused.get_or_insert(Failure::Refused("MAIL", mail));
        }
        for _ in 0..o.recipients {
            let r = c.reply().await?;
            if r.code / 100 != 2 {
                refused.get_or_insert(Failure::Refused("RCPT", r));
            }
        }
        let data = c.reply().await?;
        if data.code != 354 {
            return Err(refused.unwrap_or(Failure::Refused("DATA", data)));
        }
        if let Some(f) = refused {
            // DATA was accepted although an earlier command failed: end the (empty) message.
            c.send(b".\r\n").await?;
            let _ = c.reply().await?;
            return Err(f);
        }
    } else {
        c.cmd(
            &format!("MAIL FROM:<{}> SIZE={}\r\n", o.from, body.len()),
            "MAIL",
            2,
        )
        .await?;
        for line in envelope.lines().skip(1) {
            c.cmd(&format!("{line}\r\n"), "RCPT", 2).await?;
        }
        c.cmd("DATA\r\n", "DATA", 3).await?;
    }
    c.send(body).await?;
    c.send(b".\r\n").await?;
    let reply = c.expect("end of data", 2).await?;
    Ok(accepted_as(reply.lines.first().map_or("", String::as_str)))
}

#[derive(Default)]
struct Tally {
    ok: u64,
    delivered: u64,
    queued: u64,
    failed: u64,
    bytes: u64,
    micros: Vec<u32>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, f: &Failure) {
        let key = match f {
            Failure::Refused(stage, r) => format!("{stage} {}", r.code),
            Failure::Io(text) => io_key(text),
        };
        *self.errors.entry(key).or_default() += 1;
    }
}

/// Runs the load and returns the report. The first error of each kind that is not a reply
/// (I/O, TLS) is printed to stderr once, so a misconfiguration is visible.
pub async fn run(o: Options) -> Report {
    let o = Arc::new(o);
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let said = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let bodies: Arc<BTreeMap<usize, Vec<u8>>> = Arc::new(
        o.size
            .sizes()
            .into_iter()
            .map(|s| (s, body(s, &o.from)))
            .collect(),
    );
    let started = Instant::now();
    let deadline = o.duration.map(|d| started + d);
    let progress = o.progress.map(|every| {
        let (done, stop) = (done.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64);
            loop {
                tokio::time::sleep(every).await;
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let now = (Instant::now(), done.load(Ordering::Relaxed));
                let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64();
                eprintln!(
                    "loadgen: {} messages in {:.0} s, {:.0} msg/s now",
                    now.1,
                    started.elapsed().as_secs_f64(),
                    rate
                );
                last = now;
            }
        })
    });
    let mut workers = Vec::new();
    for w in 0..o.concurrency.max(1) {
        let (o, next, done, bodies, said) = (
            o.clone(),
            next.clone(),
            done.clone(),
            bodies.clone(),
            said.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut conn: Option<(Conn, bool)> = None;
            let mut rng_state: u64 = 0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1);
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                if o.messages.is_some_and(|m| n >= m) {
                    break;
                }
                if conn.is_none() {
                    match open(&o).await {
                        Ok(c) => conn = Some(c),
                        Err(f) => {
                            report_once(&said, &f);
                            t.error(&f);
                            t.failed += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    }
                }
                let (c, offers_pipelining) = conn.as_mut().expect("connected");
                // xorshift: cheap, deterministic per worker.
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                let size = o.size.pick((rng_state >> 11) as f64 / (1u64 << 53) as f64);
                let key = *bodies
                    .range(..=size)
                    .next_back()
                    .map(|(k, _)| k)
                    .unwrap_or_else(|| bodies.keys().next().expect("a body"));
                let mut msg = bodies[&key].clone();
                stamp(&mut msg, n);
                let t0 = Instant::now();
                match transaction(c, &o, o.pipelining && *offers_pipelining, &msg, n).await {
                    Ok(accepted) => {
                        t.ok += 1;
                        match accepted {
                            Accepted::Delivered => t.delivered += 1,
                            Accepted::Queued => t.queued += 1,
                            Accepted::Other => {}
                        }
                        t.bytes += msg.len() as u64;
                        t.micros
                            .push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    Err(f) => {
                        t.failed += 1;
                        t.error(&f);
                        match f {
                            Failure::Io(_) => {
                                report_once(&said, &f);
                                conn = None;
                            }
                            Failure::Refused(..) => {
                                if c.cmd("RSET\r\n", "RSET", 2).await.is_err() {
                                    conn = None;
                                }
                            }
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            if let Some((mut c, _)) = conn {
                let _ = c.send(b"QUIT\r\n").await;
                let _ = tokio::time::timeout(Duration::from_secs(1), c.reply()).await;
            }
            t
        }));
    }
    let mut total = Tally::default();
    for w in workers {
        if let Ok(t) = w.await {
            total.ok += t.ok;
            total.delivered += t.delivered;
            total.queued += t.queued;
            total.failed += t.failed;
            total.bytes += t.bytes;
            total.micros.extend(t.micros);
            for (k, v) in t.errors {
                *total.errors.entry(k).or_default() += v;
            }
        }
    }
    cap_io_reasons(&mut total.errors);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }
    Report {
        target: o.target.to_string(),
        concurrency: o.concurrency,
        messages_ok: total.ok,
        messages_delivered: total.delivered,
        messages_queued: total.queued,
        messages_failed: total.failed,
        bytes_ok: total.bytes,
        elapsed_secs: elapsed,
        messages_per_sec: total.ok as f64 / elapsed.max(1e-9),
        megabytes_per_sec: total.bytes as f64 / 1e6 / elapsed.max(1e-9),
        latency_ms: latency(&mut total.micros),
        errors: total.errors,
        pipelining: o.pipelining,
    }
}

fn report_once(said: &Mutex<std::collections::HashSet<String>>, f: &Failure) {
    if let Failure::Io(text) = f {
        if said.locked().insert(text.clone()) {
            eprintln!("loadgen: {text}");
        }
    }
}
