//! `hash-password [NAME]`: hash a password for the users file (inbound `AUTH`).
//!
//! Reads the password from the first line of stdin (without its line ending; prompting
//! `Password: ` on stderr when stdin is a terminal) and prints its argon2id PHC string, or with
//! NAME the whole users-file line `NAME:HASH`. The password is never printed, and the buffer
//! that held it is zeroed.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use secrecy::zeroize::Zeroize;

use super::process::EXIT_CONFIG;
use crate::smtp::users::{check_name, hash_password};

#[derive(Debug, clap::Args)]
pub struct HashPasswordArgs {
    /// The user's name: print a ready users-file line `NAME:HASH` instead of the hash alone.
    pub name: Option<String>,
}

/// Runs the command: exit 0 with the hash (or line) on stdout, 64 for an empty password or a
/// name the users file cannot hold, 1 if stdin cannot be read or hashing fails.
pub fn command(args: HashPasswordArgs) -> ExitCode {
    if let Some(name) = &args.name {
        if let Err(e) = check_name(name) {
            eprintln!("smtp-oauth-relay: hash-password: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = Vec::new();
    if let Err(e) = stdin.lock().read_until(b'\n', &mut line) {
        line.zeroize();
        eprintln!("smtp-oauth-relay: hash-password: cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let result = hash_line(&line);
    line.zeroize();
    match (result, args.name) {
        (Ok(hash), None) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        (Ok(hash), Some(name)) => {
            println!("{name}:{hash}");
            ExitCode::SUCCESS
        }
        (Err(HashError::Empty), _) => {
            eprintln!(
                "smtp-oauth-relay: hash-password: the password is empty: type it (or pipe it) \
                 as the first line of stdin"
            );
            ExitCode::from(EXIT_CONFIG)
        }
        (Err(HashError::Failed(e)), _) => {
            eprintln!("smtp-oauth-relay: hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why no hash came out.
#[derive(Debug, PartialEq, Eq)]
enum HashError {
    Empty,
    Failed(String),
}

/// The password is the first line without its ending (`\n` or `\r\n`).
fn password_of(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Hashes the password held in the first line of input.
fn hash_line(line: &[u8]) -> Result<String, HashError> {
    let password = password_of(line);
    if password.is_empty() {
        return Err(HashError::Empty);
    }
    hash_password(password).map_err(HashError::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_ending_is_not_part_of_the_password() {
        assert_eq!(password_of(b"pw\n"), b"pw");
        assert_eq!(password_of(b"pw\r\n"), b"pw");
        assert_eq!(password_of(b"pw"), b"pw");
        assert_eq!(
            password_of(b" pw \n"),
            b" pw ",
            "other spaces are the password's"
        );
        assert_eq!(password_of(b"pw\n\n"), b"pw\n", "only one line ending goes");
        assert_eq!(password_of(b"\r\n"), b"");
    }

    #[test]
    fn an_empty_line_is_refused() {
        for line in [&b""[..], b"\n", b"\r\n"] {
            assert_eq!(hash_line(line), Err(HashError::Empty), "{line:?}");
        }
    }
}
