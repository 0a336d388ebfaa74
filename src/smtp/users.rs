//! The users file for inbound SMTP AUTH: who may log in, with which password, as which senders.
//!
//! One user a line: `name:argon2-hash`, optionally followed by `:sender,sender,...` (sender
//! patterns as in routing: an address, `@domain` or `*`; none listed means any sender). `#`
//! starts a comment line; blank lines are skipped; spaces around each field are trimmed. The
//! hash is an argon2 PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`, as
//! `smtp-oauth-relay hash-password` prints it; argon2i and argon2d are read too), which holds
//! no `:`.
//!
//! Pure except for [`Users::load`] (one file read) and [`Users::verify`], which is blocking on
//! purpose: argon2 is slow by design, so the session runs it in `spawn_blocking`. Hashes never
//! reach an error message or `Debug` output; a password never leaves `verify`.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use argon2::password_hash::phc::{Output, PasswordHash, Salt};
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params};

use crate::delivery::route::SenderPattern;

/// The most memory one verification may ask for (KiB, the PHC `m` parameter): 1 GiB. A hash
/// asking for more is refused when the file is read, so a typo cannot make every `AUTH`
/// allocate gigabytes.
pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;
/// The most passes one verification may ask for (the PHC `t` parameter).
pub const MAX_PASSES: u32 = 64;

/// One user of the users file. Holds no secret, so its `Debug` is derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The name given to `AUTH` (compared exactly, case included).
    pub name: String,
    /// The envelope senders this user may use; empty means any sender.
    pub senders: Vec<SenderPattern>,
}

impl User {
    /// Whether this user may send with envelope sender `address` (an empty list allows any).
    pub fn may_send_as(&self, address: &str) -> bool {
        self.senders.is_empty() || SenderPattern::any_matches(&self.senders, address)
    }
}

/// One line of the file: the user and the parsed hash it is checked against.
struct Entry {
    user: Arc<User>,
    hash: PasswordHash,
}

/// The parsed users file. Its `Debug` shows names and sender lists, never a hash.
pub struct Users {
    entries: Vec<Entry>,
    /// Verified for a name nobody has, so that an unknown name costs as much time as a known
    /// one: the first user's algorithm and parameters, with a fixed salt and output.
    dummy: PasswordHash,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field(
                "users",
                &self.entries.iter().map(|e| &*e.user).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Checks a user name as the file (and `hash-password NAME`) accepts it: not empty, no `:`, no
/// whitespace, not starting with `#` (the line would be a comment). The error is in words.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the user name is empty".into());
    }
    if name.contains(':') {
        return Err("a user name cannot contain `:` (it separates the fields)".into());
    }
    if name.contains(char::is_whitespace) {
        return Err("a user name cannot contain spaces or other whitespace".into());
    }
    if name.starts_with('#') {
        return Err("a user name cannot start with `#` (the line would be a comment)".into());
    }
    Ok(())
}

/// Reads and checks one PHC string. The error names what is wrong, never the string itself.
fn parse_hash(field: &str) -> Result<PasswordHash, String> {
    let Some(scheme) = field.strip_prefix('$').and_then(|r| r.split('$').next()) else {
        return Err(
            "the password field is not an argon2 hash (a plain-text password?): \
                    write the line that `smtp-oauth-relay hash-password NAME` prints"
                .into(),
        );
    };
    if Algorithm::try_from(scheme).is_err() {
        // Names one of our own words, never the field's text.
        let what = match scheme {
            "2" | "2a" | "2b" | "2x" | "2y" => "a bcrypt hash",
            "1" | "5" | "6" | "y" | "md5" => "a crypt(3) hash",
            s if s.starts_with("scrypt") => "an scrypt hash",
            s if s.starts_with("pbkdf2") => "a PBKDF2 hash",
            _ => "not an argon2 hash",
        };
        return Err(format!(
            "the password hash is {what}: only argon2id, argon2i and argon2d are accepted \
             (make one with `smtp-oauth-relay hash-password NAME`)"
        ));
    }
    let hash = PasswordHash::new(field).map_err(|_| {
        "the argon2 hash is not a well-formed PHC string \
         ($argon2id$v=19$m=...,t=...,p=...$salt$hash): copy the whole line that \
         `smtp-oauth-relay hash-password NAME` prints"
            .to_string()
    })?;
    let params = Params::try_from(&hash)
        .map_err(|_| "the argon2 hash has parameters out of range (m, t or p)".to_string())?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("the argon2 hash lacks its salt or its output".into());
    }
    if params.m_cost() > MAX_MEMORY_KIB {
        return Err(format!(
            "the argon2 hash asks for {} KiB of memory per login; at most {MAX_MEMORY_KIB} \
             (1 GiB) is accepted",
            params.m_cost()
        ));
    }
    if params.t_cost() > MAX_PASSES {
        return Err(format!(
            "the argon2 hash asks for {} passes per login; at most {MAX_PASSES} are accepted",
            params.t_cost()
        ));
    }
    Ok(hash)
}

/// The hash verified for an unknown name: `model`'s algorithm, version and parameters, a
/// fixed salt and an all-zero output of the same length (which no password produces in
/// practice, and which is never accepted anyway).
fn dummy_like(model: &PasswordHash) -> Result<PasswordHash, String> {
    let out_len = model.hash.as_ref().map_or(32, |o| o.len());
    let salt = Salt::new(b"smtp-oauth-relay-dummy-salt").map_err(|e| e.to_string())?;
    let output = Output::new(&vec![0u8; out_len]).map_err(|e| e.to_string())?;
    let mut dummy = model.clone();
    dummy.salt = Some(salt);
    dummy.hash = Some(output);
    Ok(dummy)
}

/// Parses one non-comment line: `name:hash[:senders]`. `Err` says what is wrong in words.
fn parse_line(line: &str) -> Result<(User, PasswordHash), String> {
    let mut fields = line.splitn(3, ':');
    let name = fields.next().unwrap_or("").trim();
    let Some(hash_field) = fields.next().map(str::trim) else {
        return Err("expected `name:argon2-hash` or `name:argon2-hash:senders`".into());
    };
    check_name(name)?;
    if hash_field.is_empty() {
        return Err(format!("user `{name}` has no password hash"));
    }
    let hash = parse_hash(hash_field).map_err(|e| format!("user `{name}`: {e}"))?;
    let senders = match fields.next().map(str::trim) {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(SenderPattern::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("user `{name}`: {e}"))?,
    };
    Ok((
        User {
            name: name.to_string(),
            senders,
        },
        hash,
    ))
}

impl Users {
    /// Parses the text of a users file. Errors name the line (from 1) and the user, never the
    /// hash field.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = index + 1;
            let (user, hash) = parse_line(line).map_err(|e| format!("line {n}: {e}"))?;
            if !seen.insert(user.name.clone()) {
                return Err(format!(
                    "line {n}: user `{}` is listed twice (each name once)",
                    user.name
                ));
            }
            entries.push(Entry {
                user: Arc::new(user),
                hash,
            });
        }
        let Some(first) = entries.first() else {
            return Err("no users: the file lists no `name:argon2-hash` line".into());
        };
        let dummy = dummy_like(&first.hash)?;
        Ok(Users { entries, dummy })
    }

    /// Reads and parses the users file at `path`; errors name the path.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the users file {}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("users file {}: {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The user called `name`, if any (no password check).
    pub fn get(&self, name: &str) -> Option<Arc<User>> {
        self.entries
            .iter()
            .find(|e| e.user.name == name)
            .map(|e| e.user.clone())
    }

    /// Blocking (argon2 is deliberately slow; the caller runs it in `spawn_blocking`).
    /// Returns the user when name and password match. For an unknown name it still runs one
    /// argon2 verification against a dummy hash with the first user's parameters, so timing
    /// does not reveal which names exist.
    pub fn verify(&self, name: &str, password: &[u8]) -> Option<Arc<User>> {
        let argon2 = Argon2::default();
        match self.entries.iter().find(|e| e.user.name == name) {
            Some(entry) => argon2
                .verify_password(password, &entry.hash)
                .is_ok()
                .then(|| entry.user.clone()),
            None => {
                let _ = argon2.verify_password(password, &self.dummy);
                None
            }
        }
    }
}

/// Hashes `password` with argon2id, the argon2 crate's default parameters and a random salt
/// from the operating system; returns the PHC string for the users file.
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

#[cfg(test)]
#[path = "users_tests.rs"]
mod tests;
