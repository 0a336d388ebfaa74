//! Environment overrides applied to the loaded file, where the file may hold one `[account]`
//! table or several `[[account]]` entries. Pure: a JSON value in, the same value changed.
//!
//! - `account.<key>` (the public single-account names such as `SMTP_OAUTH_RELAY_TENANT`, or
//!   `SMTP_OAUTH_RELAY__ACCOUNT__TENANT`) sets a key of the one account; with several
//!   accounts it is ambiguous and refused.
//! - `account.<name>.<key>` (`SMTP_OAUTH_RELAY__ACCOUNT__<NAME>__<KEY>`) sets a key of the
//!   account with that `name`, adding one if there is none.
//! - Any other `section.key` is set as it is.

use serde_json::{Map, Value};

use super::file::ConfigError;

/// Applies `overrides` (`(dotted.key, value)`, in order) to `root`.
pub(super) fn apply_overrides(
    root: &mut Value,
    overrides: Vec<(String, Value)>,
) -> Result<(), ConfigError> {
    for (key, value) in overrides {
        let parts: Vec<&str> = key.split('.').collect();
        match parts.as_slice() {
            ["account", field] => one_account(root, &key)?.insert((*field).to_string(), value),
            ["account", name, field] => {
                named_account(root, name).insert((*field).to_string(), value)
            }
            _ => set_path(root, &parts, value),
        };
    }
    Ok(())
}

/// `account` as a list whatever the file wrote: one `[account]` table becomes its only
/// entry, so the structs see one shape (the environment's strings are still converted to
/// numbers and booleans where a key wants them, which an either-or type would not do).
pub(super) fn normalise(root: &mut Value) {
    if let Some(account) = root.as_object_mut().and_then(|r| r.get_mut("account")) {
        if account.is_object() {
            *account = Value::Array(vec![account.take()]);
        }
    }
}

fn object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut().expect("made an object above")
}

fn set_path(root: &mut Value, parts: &[&str], value: Value) -> Option<Value> {
    let (last, path) = parts.split_last()?;
    let mut here = root;
    for p in path {
        here = object(here)
            .entry((*p).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    object(here).insert((*last).to_string(), value)
}

/// The single account's table: `account` as a table, or the one entry of `[[account]]`.
fn one_account<'a>(
    root: &'a mut Value,
    key: &str,
) -> Result<&'a mut Map<String, Value>, ConfigError> {
    let entry = object(root)
        .entry("account")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Array(list) = entry {
        match list.len() {
            0 => list.push(Value::Object(Map::new())),
            1 => {}
            n => {
                let field = key.strip_prefix("account.").unwrap_or(key);
                return Err(ConfigError::new(
                    key,
                    format!(
                        "the file has {n} [[account]] entries, so this environment variable does \
                         not say which one to change; use \
                         SMTP_OAUTH_RELAY__ACCOUNT__<NAME>__{} for the account named <name>",
                        field.to_ascii_uppercase()
                    ),
                ));
            }
        }
        return Ok(object(&mut list[0]));
    }
    Ok(object(entry))
}

/// The table of the account named `name` (compared without case), added if missing. A
/// single `[account]` table becomes the list's first entry.
fn named_account<'a>(root: &'a mut Value, name: &str) -> &'a mut Map<String, Value> {
    let entry = object(root)
        .entry("account")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        let table = entry.take();
        let empty = table.as_object().is_none_or(Map::is_empty);
        *entry = Value::Array(if empty { Vec::new() } else { vec![table] });
    }
    let list = entry.as_array_mut().expect("made a list above");
    let pos = list.iter().position(|a| {
        a.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    });
    let pos = match pos {
        Some(p) => p,
        None => {
            let mut m = Map::new();
            m.insert("name".into(), Value::from(name));
            list.push(Value::Object(m));
            list.len() - 1
        }
    };
    object(&mut list[pos])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(mut root: Value, o: &[(&str, Value)]) -> Result<Value, ConfigError> {
        let o = o.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        apply_overrides(&mut root, o)?;
        Ok(root)
    }

    #[test]
    fn single_account_keys_fill_the_table_or_the_one_entry() {
        let v = apply(json!({}), &[("account.tenant", json!("t"))]).unwrap();
        assert_eq!(v, json!({"account": {"tenant": "t"}}));
        let v = apply(
            json!({"account": [{"name": "a", "tenant": "x"}]}),
            &[
                ("account.tenant", json!("t")),
                ("listen.address", json!("1")),
            ],
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"account": [{"name": "a", "tenant": "t"}], "listen": {"address": "1"}})
        );
    }

    #[test]
    fn single_account_keys_are_ambiguous_with_several() {
        let e = apply(
            json!({"account": [{"name": "a"}, {"name": "b"}]}),
            &[("account.client_id", json!("c"))],
        )
        .unwrap_err();
        assert_eq!(e.key, "account.client_id");
        assert!(
            e.message
                .contains("SMTP_OAUTH_RELAY__ACCOUNT__<NAME>__CLIENT_ID"),
            "{}",
            e.message
        );
    }

    #[test]
    fn named_keys_find_or_add_the_account() {
        let v = apply(
            json!({"account": [{"name": "ERP", "tenant": "x"}]}),
            &[
                ("account.erp.mailbox", json!("erp@c")),
                ("account.scanners.mailbox", json!("scan@c")),
            ],
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"account": [
                {"name": "ERP", "tenant": "x", "mailbox": "erp@c"},
                {"name": "scanners", "mailbox": "scan@c"}
            ]})
        );
        // A single table becomes the first entry; an empty one is dropped.
        let v = apply(
            json!({"account": {"name": "one", "tenant": "t"}}),
            &[("account.two.tenant", json!("u"))],
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"account": [{"name": "one", "tenant": "t"}, {"name": "two", "tenant": "u"}]})
        );
        let v = apply(json!({}), &[("account.two.tenant", json!("u"))]).unwrap();
        assert_eq!(v, json!({"account": [{"name": "two", "tenant": "u"}]}));
    }
}
