//! Packaging (Dockerfile, .dockerignore, deploy/) must agree with the README, the example
//! configuration and the relay's behaviour. The files are read as text: no docker, kubectl or
//! systemd is needed to run these tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const PREFIX: &str = "SMTP_OAUTH_RELAY_";
/// `shutdown.grace_secs` when nothing sets it.
const DEFAULT_GRACE_SECS: u64 = 30;
const GRACE_VARS: [&str; 2] = [
    "SMTP_OAUTH_RELAY_SHUTDOWN_GRACE_SECS",
    "SMTP_OAUTH_RELAY__SHUTDOWN__GRACE_SECS",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every file under `dir` (relative to the crate), recursively, sorted.
fn files_under(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    out.sort();
    out
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn kubernetes_manifests() -> Vec<PathBuf> {
    let files: Vec<PathBuf> = files_under("deploy/kubernetes")
        .into_iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    files
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuation lines
/// joined, comment lines dropped (as Docker does).
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn instructions(dockerfile: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
            continue;
        }
        let (part, continued) = match trimmed.strip_suffix('\\') {
            Some(p) => (p.trim(), true),
            None => (trimmed, false),
        };
        if !pending.is_empty() && !part.is_empty() {
            pending.push(' ');
        }
        pending.push_str(part);
        if !continued && !pending.is_empty() {
            let (keyword, args) = pending
                .split_once(char::is_whitespace)
                .unwrap_or((&pending, ""));
            out.push(Instruction {
                keyword: keyword.to_ascii_uppercase(),
                args: args.trim().to_string(),
            });
            pending.clear();
        }
    }
    assert!(
        pending.is_empty(),
        "Dockerfile ends inside a continued line"
    );
    out
}

/// The instructions of the last stage (the image that ships).
fn final_stage(all: &[Instruction]) -> &[Instruction] {
    let start = all
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("Dockerfile has no FROM");
    &all[start..]
}

fn exec_form(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{what} must use the exec (JSON array) form, got `{args}`: {e}"))
}

/// Splits on whitespace outside double quotes, removing the quotes.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// `ENV` settings of the given instructions (`ENV K=V K2=V2` and the legacy `ENV K V`).
fn dockerfile_env(stage: &[Instruction]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for i in stage.iter().filter(|i| i.keyword == "ENV") {
        let words = shell_words(&i.args);
        if words.len() >= 2 && !words[0].contains('=') {
            env.insert(words[0].clone(), words[1..].join(" "));
            continue;
        }
        for w in words {
            let (k, v) = w
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV `{}`: `{w}` is not K=V", i.args));
            env.insert(k.to_string(), v.to_string());
        }
    }
    env
}

/// The `cargo build` command a user is told to run for a release build.
///
/// Rule: among the lines of the README's fenced code blocks that start with `cargo build`
/// (a trailing `# comment` removed), the release build is the one with `--release`; there
/// must be exactly one such command (several distinct ones would make "the" build ambiguous).
fn readme_release_build(readme: &str) -> String {
    let mut in_code = false;
    let mut found = BTreeSet::new();
    for line in readme.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code || !t.starts_with("cargo build") {
            continue;
        }
        let command = t.split(" #").next().unwrap().trim();
        if command.split_whitespace().any(|w| w == "--release") {
            found.insert(command.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    assert_eq!(
        found.len(),
        1,
        "README must show exactly one release `cargo build` command, found {found:?}"
    );
    found.into_iter().next().unwrap()
}

#[test]
fn dockerfile_runs_the_readme_release_build() {
    let release = readme_release_build(&read("README.md"));
    let all = instructions(&read("Dockerfile"));
    let builds: Vec<String> = all
        .iter()
        .filter(|i| i.keyword == "RUN" && i.args.contains("cargo "))
        .map(|i| i.args.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        builds,
        vec![release],
        "the Dockerfile must run exactly the README's release build (one RUN, no extra flags)"
    );
    // The binary the build produces is the one the image ships.
    let copies: Vec<&Instruction> = final_stage(&all)
        .iter()
        .filter(|i| i.keyword == "COPY" && i.args.contains("/target/release/smtp-oauth-relay"))
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "the final stage must copy the release binary"
    );
    let entrypoint = final_stage(&all)
        .iter()
        .rfind(|i| i.keyword == "ENTRYPOINT")
        .expect("no ENTRYPOINT");
    let entrypoint = exec_form(&entrypoint.args, "ENTRYPOINT");
    assert!(
        copies[0].args.ends_with(&format!(" {}", entrypoint[0])),
        "ENTRYPOINT {entrypoint:?} is not where the binary is copied: {}",
        copies[0].args
    );
}

#[test]
fn dockerfile_runtime_is_non_root_with_healthcheck_and_spool_volume() {
    let all = instructions(&read("Dockerfile"));
    let stage = final_stage(&all);
    let last = |kw: &str| stage.iter().rfind(|i| i.keyword == kw);

    // HEALTHCHECK: exec form (no shell in distroless), the relay's own `healthcheck` command.
    let hc = last("HEALTHCHECK").expect("final stage has no HEALTHCHECK");
    let (_, cmd) = hc
        .args
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("HEALTHCHECK without CMD: {}", hc.args));
    let cmd = exec_form(cmd.trim(), "HEALTHCHECK CMD");
    let entrypoint = exec_form(
        &last("ENTRYPOINT").expect("no ENTRYPOINT").args,
        "ENTRYPOINT",
    );
    assert_eq!(
        cmd[0], entrypoint[0],
        "HEALTHCHECK must run the relay binary"
    );
    assert_eq!(
        cmd.get(1).map(String::as_str),
        Some("healthcheck"),
        "{cmd:?}"
    );

    // USER: set, and not root (by name or uid 0).
    let user = last("USER").expect("final stage sets no USER (it would run as root)");
    let uid = user.args.split(':').next().unwrap().trim();
    assert!(
        !uid.is_empty() && uid != "root" && uid.parse::<u32>() != Ok(0),
        "USER {} is root",
        user.args
    );

    // VOLUME: exactly the spool directory the relay is told to use.
    let env = dockerfile_env(stage);
    let spool = env
        .get("SMTP_OAUTH_RELAY_SPOOL_DIR")
        .expect("final stage sets no SMTP_OAUTH_RELAY_SPOOL_DIR");
    let volumes: Vec<String> = stage
        .iter()
        .filter(|i| i.keyword == "VOLUME")
        .flat_map(|i| {
            if i.args.starts_with('[') {
                exec_form(&i.args, "VOLUME")
            } else {
                shell_words(&i.args)
            }
        })
        .collect();
    assert!(
        volumes
            .iter()
            .any(|v| v.trim_end_matches('/') == spool.trim_end_matches('/')),
        "VOLUME {volumes:?} does not include SMTP_OAUTH_RELAY_SPOOL_DIR={spool}"
    );
    // The spool directory in the image belongs to the runtime user (a new volume copies it).
    assert!(
        stage.iter().any(|i| i.keyword == "COPY"
            && i.args.contains(&format!("--chown={}", user.args))
            && i.args
                .trim_end_matches('/')
                .ends_with(spool.trim_end_matches('/'))),
        "the spool directory is not created owned by USER {}",
        user.args
    );

    let exposed: Vec<&str> = stage
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp"))
        .collect();
    for port in ["2525", "9325"] {
        assert!(exposed.contains(&port), "EXPOSE {exposed:?} lacks {port}");
    }
    assert_eq!(last("STOPSIGNAL").map(|i| i.args.as_str()), Some("SIGTERM"));
}

#[test]
fn dockerignore_keeps_build_output_spool_and_git_out_but_not_sources() {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/').trim_end_matches('/').to_string())
        .collect();
    for needed in ["target", "spool", "sandbox-mail", ".git"] {
        assert!(
            patterns.iter().any(|p| p == needed),
            ".dockerignore does not exclude {needed}: {patterns:?}"
        );
    }
    // `**/spool` or `src` would drop source files (src/spool/ is a module) and break the build.
    for p in &patterns {
        assert!(
            !p.starts_with("**") && !p.starts_with('!') && p != "src" && !p.starts_with("src/"),
            ".dockerignore pattern `{p}` would exclude sources"
        );
    }
    for needed in ["Cargo.toml", "Cargo.lock", "config", "benches"] {
        assert!(
            !patterns.iter().any(|p| p == needed),
            ".dockerignore excludes {needed}, which the build needs"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Environment variable names

/// Every `SMTP_OAUTH_RELAY_*` name in `text` (a bare prefix, as in `SMTP_OAUTH_RELAY_*`, is not
/// a name).
fn env_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches('_');
        if name.len() > PREFIX.len() {
            names.insert(name.to_string());
        }
        rest = &tail[end.max(1)..];
    }
    names
}

/// The README's `## Configuration reference` section.
fn readme_config_reference(readme: &str) -> &str {
    let start = readme
        .find("\n## Configuration reference")
        .expect("README has no `## Configuration reference` section");
    let section = &readme[start + 1..];
    match section[3..].find("\n## ") {
        Some(end) => &section[..end + 3],
        None => section,
    }
}

/// `section.key` for every key in the example configuration, commented-out ones included.
fn example_keys(toml: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in toml.lines() {
        let t = line.trim();
        if let Some(s) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        let t = t.trim_start_matches('#').trim();
        if let Some((key, _)) = t.split_once('=') {
            let key = key.trim();
            if !section.is_empty()
                && !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    keys
}

fn contains_word(haystack: &str, word: &str) -> bool {
    haystack.match_indices(word).any(|(at, _)| {
        haystack[at + word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}

#[test]
fn every_env_var_in_the_packaging_is_documented() {
    let readme = read("README.md");
    let reference = readme_config_reference(&readme);
    let keys = example_keys(&read("config/relay.example.toml"));
    assert!(keys.contains("listen.allow") && keys.contains("account.client_secret_file"));

    let mut files = vec![root().join("Dockerfile")];
    files.extend(kubernetes_manifests());
    files.extend(files_under("deploy/systemd"));
    let mut undocumented = Vec::new();
    let mut seen = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for name in env_names(&text) {
            seen += 1;
            let documented = match name.strip_prefix("SMTP_OAUTH_RELAY__") {
                // Generic form: its section.key must be in the example configuration.
                Some(generic) => {
                    let parts: Vec<String> = generic
                        .split("__")
                        .map(|s| s.to_ascii_lowercase())
                        .collect();
                    parts.len() == 2 && keys.contains(&parts.join("."))
                }
                None => contains_word(reference, &name),
            };
            if !documented {
                undocumented.push(format!("{}: {name}", rel(file)));
            }
        }
    }
    assert!(
        seen > 10,
        "found only {seen} variable names; is the scan broken?"
    );
    assert!(
        undocumented.is_empty(),
        "not in README's configuration reference (nor SMTP_OAUTH_RELAY__SECTION__KEY of a key \
         in config/relay.example.toml):\n  {}",
        undocumented.join("\n  ")
    );
}

#[test]
fn the_env_name_scan_finds_what_it_should() {
    let names = env_names(
        "X=SMTP_OAUTH_RELAY_TENANT, ${SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE}\n\
         SMTP_OAUTH_RELAY__LISTEN__ALLOW='[]' SMTP_OAUTH_RELAY_* SMTP_OAUTH_RELAY_LOG_FORMAT_",
    );
    let want = [
        "SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE",
        "SMTP_OAUTH_RELAY_LOG_FORMAT",
        "SMTP_OAUTH_RELAY_TENANT",
        "SMTP_OAUTH_RELAY__LISTEN__ALLOW",
    ];
    assert_eq!(names.iter().map(String::as_str).collect::<Vec<_>>(), want);
    assert!(contains_word(
        "`SMTP_OAUTH_RELAY_MODE` |",
        "SMTP_OAUTH_RELAY_MODE"
    ));
    assert!(!contains_word(
        "SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE",
        "SMTP_OAUTH_RELAY_CLIENT_SECRET"
    ));
}

/// The deploy files and README tell users to pass `listen.allow` as a JSON-style list in one
/// variable; the configuration loader must accept that.
#[test]
fn listen_allow_can_be_given_as_one_env_var() {
    let env = vec![
        (
            "SMTP_OAUTH_RELAY_LISTEN".to_string(),
            "0.0.0.0:2525".to_string(),
        ),
        (
            "SMTP_OAUTH_RELAY__LISTEN__ALLOW".to_string(),
            r#"["10.0.0.0/8", "172.16.0.0/12"]"#.to_string(),
        ),
    ];
    let config = smtp_oauth_relay::config::Config::load(None, &env)
        .unwrap_or_else(|e| panic!("SMTP_OAUTH_RELAY__LISTEN__ALLOW as documented: {e}"));
    let allow: Vec<String> = config.listen.allow.iter().map(|n| n.to_string()).collect();
    assert_eq!(allow, ["10.0.0.0/8", "172.16.0.0/12"]);
}

// ---------------------------------------------------------------------------------------------
// systemd

/// `(section, key, value)` of a unit file, comments and blank lines dropped.
fn unit_directives(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if t.starts_with('[') && t.ends_with(']') {
            section = t[1..t.len() - 1].to_string();
            continue;
        }
        assert!(
            !t.ends_with('\\'),
            "keep unit lines unbroken for this test: {t}"
        );
        let (k, v) = t
            .split_once('=')
            .unwrap_or_else(|| panic!("not a directive: {t}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// Seconds of a systemd time span such as `45`, `45s`, `1min 30s`, `2min`.
fn timespan_secs(v: &str) -> u64 {
    v.split_whitespace()
        .map(|part| {
            let digits: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
            let n: u64 = digits.parse().unwrap_or_else(|_| panic!("time span `{v}`"));
            match &part[digits.len()..] {
                "" | "s" | "sec" => n,
                "m" | "min" => n * 60,
                "h" => n * 3600,
                unit => panic!("time span `{v}`: unit `{unit}` not handled here"),
            }
        })
        .sum()
}

#[test]
fn systemd_unit_is_hardened_and_wired_to_the_relay() {
    let unit = unit_directives(&read("deploy/systemd/smtp-oauth-relay.service"));
    let service: Vec<(&str, &str)> = unit
        .iter()
        .filter(|(s, _, _)| s == "Service")
        .map(|(_, k, v)| (k.as_str(), v.as_str()))
        .collect();
    let all = |key: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    let one = |key: &str| -> &str {
        match all(key).as_slice() {
            [v] => v,
            other => panic!("[Service] needs exactly one {key}=, has {other:?}"),
        }
    };

    // Exactly these values.
    for (key, want) in [
        ("Type", "simple"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "smtp-oauth-relay"),
        ("ConfigurationDirectory", "smtp-oauth-relay"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(one(key), want, "{key}=");
    }
    let families: BTreeSet<&str> = one("RestrictAddressFamilies").split_whitespace().collect();
    assert_eq!(
        families,
        BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX"]),
        "RestrictAddressFamilies="
    );
    let filters = all("SystemCallFilter");
    assert!(
        filters.first().is_some_and(
            |f| !f.starts_with('~') && f.split_whitespace().any(|g| g == "@system-service")
        ),
        "the first SystemCallFilter= must allow @system-service: {filters:?}"
    );
    let exec = one("ExecStart");
    assert!(
        exec.starts_with("/usr/local/bin/smtp-oauth-relay ") && exec.ends_with(" serve"),
        "ExecStart={exec}"
    );

    // Environment: spool inside the StateDirectory, secret from the credential.
    let mut env = BTreeMap::new();
    for v in all("Environment") {
        for word in shell_words(v) {
            let (k, val) = word.split_once('=').expect("Environment= K=V");
            env.insert(k.to_string(), val.to_string());
        }
    }
    assert_eq!(
        env.get("SMTP_OAUTH_RELAY_SPOOL_DIR").map(String::as_str),
        Some("/var/lib/smtp-oauth-relay/spool"),
        "spool must be inside StateDirectory=smtp-oauth-relay"
    );
    assert_eq!(
        env.get("SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE")
            .map(String::as_str),
        Some("%d/client-secret")
    );
    let credentials = all("LoadCredential");
    assert!(
        credentials.iter().any(|c| c.starts_with("client-secret:/")),
        "LoadCredential=client-secret:/path missing: {credentials:?}"
    );

    // Stopping: systemd must wait longer than the relay's shutdown grace.
    let mut grace = DEFAULT_GRACE_SECS;
    let example = read("deploy/systemd/relay.env.example");
    let env_file = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.trim().trim_matches('\'').to_string(),
            )
        });
    for (k, v) in env.clone().into_iter().chain(env_file) {
        if GRACE_VARS.contains(&k.as_str()) {
            grace = grace.max(v.parse().expect("grace seconds"));
        }
    }
    let timeout = timespan_secs(one("TimeoutStopSec"));
    assert!(
        timeout > grace,
        "TimeoutStopSec={timeout}s must exceed the shutdown grace of {grace}s"
    );
}

#[test]
fn timespans_parse() {
    assert_eq!(timespan_secs("45"), 45);
    assert_eq!(timespan_secs("45s"), 45);
    assert_eq!(timespan_secs("1min 30s"), 90);
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// Lines of a manifest that are not comments.
fn live_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect()
}

fn unquote(v: &str) -> &str {
    let v = v.split(" #").next().unwrap().trim();
    v.trim_matches('"').trim_matches('\'')
}

/// Env values set in a manifest: `- name: X` followed by `value: Y`.
fn manifest_env(text: &str) -> BTreeMap<String, String> {
    let lines = live_lines(text);
    let mut env = BTreeMap::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(name) = line.trim().strip_prefix("- name:") else {
            continue;
        };
        let value = lines
            .get(n + 1)
            .and_then(|next| next.trim().strip_prefix("value:"));
        if let Some(value) = value {
            env.insert(unquote(name).to_string(), unquote(value).to_string());
        }
    }
    env
}

/// Values of `key: value` lines (not commented out).
fn yaml_values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    live_lines(text)
        .into_iter()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(key))
        .filter_map(|rest| rest.strip_prefix(':'))
        .map(unquote)
        .collect()
}

#[test]
fn kubernetes_waits_longer_than_the_relay_shutdown_grace() {
    let mut checked = 0;
    for file in kubernetes_manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        let env = manifest_env(&text);
        let grace = GRACE_VARS
            .iter()
            .filter_map(|v| env.get(*v))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{}: grace `{v}`", rel(&file)))
            })
            .max()
            .unwrap_or(DEFAULT_GRACE_SECS);
        for period in yaml_values(&text, "terminationGracePeriodSeconds") {
            let period: u64 = period.parse().expect("terminationGracePeriodSeconds");
            assert!(
                period > grace,
                "{}: terminationGracePeriodSeconds {period} must exceed the relay's shutdown \
                 grace {grace} (plus the app's own shutdown time)",
                rel(&file)
            );
            checked += 1;
        }
    }
    assert!(
        checked > 0,
        "no manifest sets terminationGracePeriodSeconds"
    );
}

#[test]
fn kubernetes_probes_reach_the_admin_server() {
    let image_env = dockerfile_env(final_stage(&instructions(&read("Dockerfile"))));
    for file in kubernetes_manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        if !text.contains("smtp-oauth-relay") || !yaml_values(&text, "kind").contains(&"Deployment")
        {
            continue;
        }
        let env = manifest_env(&text);
        let admin = env
            .get("SMTP_OAUTH_RELAY_ADMIN_LISTEN")
            .or_else(|| image_env.get("SMTP_OAUTH_RELAY_ADMIN_LISTEN"))
            .map(String::as_str)
            .unwrap_or("127.0.0.1:9325");
        let addr: std::net::SocketAddr = admin.parse().expect("admin listen address");
        assert!(
            !addr.ip().is_loopback(),
            "{}: httpGet probes and scrapes hit the pod IP, admin listens on {admin}",
            rel(&file)
        );
        let port = addr.port().to_string();
        assert!(
            yaml_values(&text, "containerPort").contains(&port.as_str()),
            "{}: no containerPort {port} for the admin server",
            rel(&file)
        );
        let paths = yaml_values(&text, "path");
        for probe in ["/healthz", "/readyz"] {
            assert!(
                paths.contains(&probe),
                "{}: no probe on {probe}",
                rel(&file)
            );
        }
        assert!(
            yaml_values(&text, "prometheus.io/port").contains(&port.as_str()),
            "{}: scrape annotation does not name port {port}",
            rel(&file)
        );
        // Inbound SMTP stays on loopback unless listen.allow says who may connect.
        if let Some(listen) = env.get("SMTP_OAUTH_RELAY_LISTEN") {
            let ip: std::net::SocketAddr = listen.parse().expect("listen address");
            assert!(
                ip.ip().is_loopback() || env.contains_key("SMTP_OAUTH_RELAY__LISTEN__ALLOW"),
                "{}: listening on {listen} needs SMTP_OAUTH_RELAY__LISTEN__ALLOW",
                rel(&file)
            );
        }
        // The client secret comes from a mounted file, never a literal value; with workload
        // identity there is no secret at all, and the pod is labelled for the webhook and runs
        // as the ServiceAccount carrying the client ID.
        assert!(
            !env.contains_key("SMTP_OAUTH_RELAY_CLIENT_SECRET"),
            "{}: use SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE with a Secret volume",
            rel(&file)
        );
        if env.get("SMTP_OAUTH_RELAY_CREDENTIAL").map(String::as_str) == Some("workload-identity") {
            assert!(
                !env.contains_key("SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE")
                    && yaml_values(&text, "azure.workload.identity/use").contains(&"true")
                    && !yaml_values(&text, "azure.workload.identity/client-id").is_empty()
                    && !yaml_values(&text, "serviceAccountName").is_empty(),
                "{}: workload identity needs the pod label azure.workload.identity/use: \"true\", \
                 a ServiceAccount annotated azure.workload.identity/client-id, and no secret",
                rel(&file)
            );
        } else {
            assert!(
                env.contains_key("SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE"),
                "{}: use SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE with a Secret volume",
                rel(&file)
            );
        }
        let security = [
            ("runAsNonRoot", "true"),
            ("readOnlyRootFilesystem", "true"),
            ("allowPrivilegeEscalation", "false"),
        ];
        for (key, want) in security {
            assert!(
                yaml_values(&text, key).contains(&want),
                "{}: {key}: {want} missing",
                rel(&file)
            );
        }
        assert!(
            yaml_values(&text, "drop").contains(&"[\"ALL\"]"),
            "{}: capabilities drop [\"ALL\"] missing",
            rel(&file)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// README

#[test]
fn readme_deployment_section_has_the_env_only_example() {
    let readme = read("README.md");
    let start = readme
        .find("\n## Deployment")
        .expect("README has no `## Deployment` section");
    let ops = readme
        .find("\n## Operations")
        .expect("README has no `## Operations` section");
    assert!(start < ops, "## Deployment must come before ## Operations");
    let section = &readme[start..ops];
    let example = section
        .split("Env-only configuration for the single-account sidecar")
        .nth(1)
        .expect("no `Env-only configuration for the single-account sidecar` example");
    let block = example
        .split("```")
        .nth(1)
        .expect("the env-only example has no code block");
    for var in [
        "SMTP_OAUTH_RELAY_TENANT",
        "SMTP_OAUTH_RELAY_CLIENT_ID",
        "SMTP_OAUTH_RELAY_CLIENT_SECRET_FILE",
        "SMTP_OAUTH_RELAY_MAILBOX",
    ] {
        assert!(
            contains_word(block, var),
            "the env-only example lacks {var}"
        );
    }
    for pointer in [
        "deploy/kubernetes",
        "deploy/systemd",
        "docker build",
        "docker run",
    ] {
        assert!(
            section.contains(pointer),
            "## Deployment does not mention {pointer}"
        );
    }
}
