//! The README, Dockerfile and example configuration must not drift from the code.

use std::path::Path;

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn dockerfile_builds_exactly_like_the_readme() {
    let readme = read("README.md");
    let dockerfile = read("Dockerfile");
    let build = "cargo build --release --locked";
    assert!(readme.contains(build), "README must show the release build");
    let run_lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("RUN cargo"))
        .collect();
    assert_eq!(run_lines, vec![format!("RUN {build}").as_str()]);
}

#[test]
fn readme_names_the_two_commands_and_every_public_env_var() {
    let readme = read("README.md");
    assert!(readme.contains("cargo run --release -- serve --sandbox"));
    assert!(readme.contains("cargo test --locked"));
    for (name, key) in smtp_oauth_relay::config::ENV_KEYS {
        let var = format!("SMTP_OAUTH_RELAY_{name}");
        assert!(readme.contains(&var), "README does not document {var}");
        assert!(readme.contains(key), "README does not name key {key}");
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let ci = read(".ci/run");
    assert!(ci.contains("cargo test --locked"));
}

/// The README's configuration table, as (key, env var, default) rows.
fn readme_config_rows() -> Vec<(String, String, String)> {
    let readme = read("README.md");
    let section = readme
        .split("## Configuration reference")
        .nth(1)
        .expect("README has a configuration reference")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<String> = l
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect();
            (cells[1].clone(), cells[2].clone(), cells[3].clone())
        })
        .collect()
}

/// Every key of the configuration structs with its default, rendered as TOML would show it
/// (`—` for no default), from `Config::default()` itself.
fn struct_keys() -> Vec<(String, String)> {
    let value = serde_json::to_value(smtp_oauth_relay::config::Config::default()).unwrap();
    let mut out = Vec::new();
    for (section, keys) in value.as_object().unwrap() {
        for (key, v) in keys.as_object().unwrap() {
            let default = match v {
                serde_json::Value::Null => "—".to_string(),
                other => other.to_string(),
            };
            out.push((format!("{section}.{key}"), default));
        }
    }
    out
}

#[test]
fn readme_configuration_table_matches_the_structs() {
    let rows = readme_config_rows();
    let keys = struct_keys();
    let documented: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    for (key, default) in &keys {
        let row = rows
            .iter()
            .find(|r| &r.0 == key)
            .unwrap_or_else(|| panic!("README configuration table lacks `{key}`"));
        // Secrets serialize redacted; their default is "none" all the same.
        let want = if default.contains("redacted") {
            "—"
        } else {
            default.as_str()
        };
        assert_eq!(row.2, want, "README default of `{key}`");
    }
    for key in documented {
        assert!(
            keys.iter().any(|(k, _)| k == key),
            "README documents `{key}`, which is not a configuration key"
        );
    }
    for (key, env, _) in &rows {
        let public = smtp_oauth_relay::config::ENV_KEYS
            .iter()
            .find(|(_, k)| k == key)
            .map(|(n, _)| format!("SMTP_OAUTH_RELAY_{n}"));
        match public {
            Some(name) => assert_eq!(env, &name, "env var of `{key}`"),
            None => assert_eq!(env, "—", "`{key}` has no short env name"),
        }
    }
}

/// A bare `smtp-oauth-relay` command is not on PATH after `cargo run`: every code line that
/// calls it comes after the README has shown how to install it (or calls it by its path).
#[test]
fn readme_installs_the_binary_before_calling_it_bare() {
    let readme = read("README.md");
    let install = readme
        .find("cargo install --path . --locked")
        .expect("README shows `cargo install --path . --locked`");
    let mut in_block = false;
    let mut offset = 0;
    for line in readme.split_inclusive('\n') {
        if line.starts_with("```") {
            in_block = !in_block;
        } else if in_block && line.trim_start().starts_with("smtp-oauth-relay ") {
            assert!(
                offset > install,
                "`{}` comes before the install step",
                line.trim()
            );
        }
        offset += line.len();
    }
}
