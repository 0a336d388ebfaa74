//! The pure parts of the load generator.

use super::report::{accepted_as, cap_io_reasons, Accepted, MAX_IO_REASONS};
use super::*;
use secrecy::SecretString;
use std::collections::BTreeMap;

#[test]
fn size_specs() {
    assert_eq!(parse_size_spec("5000"), Ok(SizeSpec::Fixed(5000)));
    assert_eq!(parse_size_spec("5k"), Ok(SizeSpec::Fixed(5000)));
    assert_eq!(parse_size_spec("1.5m"), Ok(SizeSpec::Fixed(1_500_000)));
    assert_eq!(
        parse_size_spec("1k-100k"),
        Ok(SizeSpec::Range(1000, 100_000))
    );
    assert_eq!(
        parse_size_spec("1k:70,10k:25,1m:5"),
        Ok(SizeSpec::Mix(vec![
            (1000, 70),
            (10_000, 25),
            (1_000_000, 5)
        ]))
    );
    for bad in ["", "x", "10", "5k-1k", "1k:x", "1k:0", "1k;3"] {
        assert!(parse_size_spec(bad).is_err(), "{bad}");
    }
}

#[test]
fn picks_follow_the_spec() {
    let mix = parse_size_spec("1k:3,2k:1").unwrap();
    let picks: Vec<usize> = (0..4).map(|i| mix.pick(f64::from(i) / 4.0)).collect();
    assert_eq!(picks, [1000, 1000, 1000, 2000]);
    let range = SizeSpec::Range(1000, 2000);
    assert_eq!(range.pick(0.0), 1000);
    assert_eq!(range.pick(0.999_999), 2000);
}

#[test]
fn bodies_have_the_exact_size_and_need_no_stuffing() {
    for size in [MIN_SIZE, 301, 302, 377, 5000, 65_536, 1_000_001] {
        let mut b = body(size, "a@b");
        assert_eq!(b.len(), size);
        assert!(b.ends_with(b"\r\n"));
        assert!(!b.windows(3).any(|w| w == b"\n.\r" || w == b"\n.."));
        assert!(!b.split(|&c| c == b'\n').any(|l| l.starts_with(b".")));
        assert!(b.split(|&c| c == b'\n').all(|l| l.len() <= 1000));
        stamp(&mut b, 42);
        let text = String::from_utf8(b).unwrap();
        assert!(text.contains("Message-ID: <00000000000000000042@loadgen>"));
        assert_eq!(text.len(), size);
    }
}

#[test]
fn percentiles_are_nearest_rank() {
    let mut v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
    let l = latency(&mut v);
    assert_eq!((l.p50, l.p90, l.p99, l.max), (50.0, 90.0, 99.0, 100.0));
    assert_eq!(l.mean, 50.5);
    assert_eq!(latency(&mut []), Latency::default());
}

#[test]
fn auth_is_redacted_in_debug() {
    let a = Auth::XOAuth2 {
        user: "u@x".into(),
        token: SecretString::from("eyJ-secret-token"),
    };
    assert!(!format!("{a:?}").contains("secret-token"));
    assert!(a.command().starts_with("AUTH XOAUTH2 "));
}

#[test]
fn report_text_names_errors() {
    let mut errors = BTreeMap::new();
    errors.insert("DATA 451".to_string(), 3);
    let r = Report {
        target: "127.0.0.1:2525".into(),
        concurrency: 2,
        messages_ok: 10,
        messages_delivered: 0,
        messages_queued: 0,
        messages_failed: 3,
        bytes_ok: 50_000,
        elapsed_secs: 1.0,
        messages_per_sec: 10.0,
        megabytes_per_sec: 0.05,
        latency_ms: Latency::default(),
        errors,
        pipelining: true,
    };
    let t = r.text();
    assert!(t.contains("10 messages ok, 3 failed"), "{t}");
    assert!(t.contains("errors: DATA 451: 3"), "{t}");
    // The issue's case: 1000 answered 250, 30 delivered, 970 only queued.
    let r = Report {
        messages_ok: 1000,
        messages_delivered: 30,
        messages_queued: 970,
        messages_failed: 0,
        ..r
    };
    let t = r.text();
    assert!(
        t.contains(
            "1000 messages ok (30 delivered, 970 only queued by the relay, not yet delivered), 0 failed"
        ),
        "{t}"
    );
}

#[test]
fn the_relays_250_says_delivered_or_queued() {
    // The relay's wording (smtp::outcome), as wire::Reply keeps the text.
    for (text, want) in [
        (
            "2.0.0 1a2-03-ff delivered: OK <id@x.prod.outlook.com> [Hostname=X]",
            Accepted::Delivered,
        ),
        ("2.0.0 1a2-03-ff queued for delivery", Accepted::Queued),
        (
            "2.0.0 1a2-03-ff queued: the mailbox is at its sending pace",
            Accepted::Queued,
        ),
        (
            "2.0.0 1a2-03-ff queued, will retry: 451 4.7.500 later",
            Accepted::Queued,
        ),
        // Exchange and the sandbox say neither.
        (
            "2.0.0 OK <id@sandbox.prod.outlook.com> [Hostname=SANDBOX01]",
            Accepted::Other,
        ),
        ("", Accepted::Other),
    ] {
        assert_eq!(accepted_as(text), want, "{text}");
    }
}

#[test]
fn io_reasons_are_named_and_bounded() {
    let mut errors = BTreeMap::new();
    errors.insert("DATA 451".to_string(), 1);
    for i in 0..MAX_IO_REASONS + 3 {
        errors.insert(format!("io: reason {i:02}"), 10 + i as u64);
    }
    cap_io_reasons(&mut errors);
    assert_eq!(errors.len(), MAX_IO_REASONS + 2, "{errors:?}");
    // The three rarest (10, 11, 12) are summed; the others keep their own words.
    assert_eq!(errors["io: other errors"], 33);
    assert_eq!(
        errors[&format!("io: reason {:02}", MAX_IO_REASONS + 2)],
        10 + MAX_IO_REASONS as u64 + 2
    );
    assert!(!errors.contains_key("io: reason 00"));
    assert_eq!(errors["DATA 451"], 1);
}
