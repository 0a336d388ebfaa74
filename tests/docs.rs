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
