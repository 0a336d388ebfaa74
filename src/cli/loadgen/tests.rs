//! The pure parts of the load generator.

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
}
