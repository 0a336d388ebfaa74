//! Unknown keys, all of them at once. Serde's `deny_unknown_fields` stops at the first one, so
//! a file with three typos took three runs to fix; this pass compares the merged file and
//! environment with the keys of `Config::default()` and names every key it does not know,
//! with the nearest known name when one is close. Pure: values in, messages out.

use serde_json::{Map, Value};

/// Every key in `given` (section tables of key/value) that `known` (the same shape, from the
/// defaults) does not have, each with a hint: `("listen.adress",
/// "did you mean `listen.address`?")`, sorted by name.
pub fn unknown_keys(given: &Value, known: &Value) -> Vec<(String, String)> {
    let (Some(given), Some(known)) = (given.as_object(), known.as_object()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (section, value) in given {
        let Some(known_keys) = known.get(section) else {
            out.push((section.clone(), hint(section, known, "sections")));
            continue;
        };
        // A list section (`[[account]]`): each entry has the keys of the one known entry.
        let known_keys = match known_keys {
            Value::Array(one) => one.first().unwrap_or(&Value::Null),
            other => other,
        };
        let Some(known_keys) = known_keys.as_object() else {
            continue;
        };
        let entries: Vec<(String, &Map<String, Value>)> = match value {
            Value::Object(keys) => vec![(section.clone(), keys)],
            Value::Array(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, entry)| {
                    let keys = entry.as_object()?;
                    let label = match keys.get("name").and_then(Value::as_str) {
                        Some(name) => format!("{section}.{name}"),
                        None => format!("{section}[{}]", i + 1),
                    };
                    Some((label, keys))
                })
                .collect(),
            // A value where a table belongs: serde names the wrong type.
            _ => continue,
        };
        for (label, keys) in entries {
            for key in keys.keys() {
                if !known_keys.contains_key(key) {
                    let name = format!("{label}.{key}");
                    let what = format!("keys of [{section}]");
                    out.push((name, hint(key, known_keys, &what)));
                }
            }
        }
    }
    out
}

/// "did you mean `x`?" for a near miss, else the list of names that exist.
fn hint(name: &str, known: &Map<String, Value>, what: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let nearest = known
        .keys()
        .map(|k| (distance(&lower, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d);
    match nearest {
        Some((_, k)) => format!("did you mean `{k}`?"),
        None => {
            let names: Vec<&str> = known.keys().map(String::as_str).collect();
            format!("the {what} are: {}", names.join(", "))
        }
    }
}

/// The one message for all unknown keys.
pub fn describe(unknown: &[(String, String)]) -> String {
    let n = unknown.len();
    let list: Vec<String> = unknown
        .iter()
        .map(|(key, hint)| format!("`{key}` ({hint})"))
        .collect();
    format!(
        "{n} unknown {}: {}",
        if n == 1 { "key" } else { "keys" },
        list.join("; ")
    )
}

/// Levenshtein distance (names are short).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(here)
            };
            prev = here;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn known() -> Value {
        json!({
            "listen": {"address": "127.0.0.1:2525", "allow": [], "max_connections": 1000},
            "account": {"tenant": null, "mailbox": null},
        })
    }

    #[test]
    fn names_every_unknown_key_with_the_nearest_known_one() {
        let given = json!({
            "listen": {"adress": "x", "allow": [], "colour": 1},
            "acount": {"tenant": "t"},
            "account": {"mailbox": "m", "mailbx": "n"},
        });
        let mut unknown = unknown_keys(&given, &known());
        unknown.sort();
        let hint_of = |name: &str| {
            unknown
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, h)| h.as_str())
        };
        assert_eq!(unknown.len(), 4, "{unknown:?}");
        assert_eq!(hint_of("listen.adress"), Some("did you mean `address`?"));
        assert_eq!(
            hint_of("listen.colour"),
            Some("the keys of [listen] are: address, allow, max_connections")
        );
        assert_eq!(hint_of("acount"), Some("did you mean `account`?"));
        assert_eq!(hint_of("account.mailbx"), Some("did you mean `mailbox`?"));
        let text = describe(&unknown);
        assert!(
            text.starts_with("4 unknown keys: `account.mailbx`"),
            "{text}"
        );
    }

    #[test]
    fn known_keys_pass() {
        let given = json!({"listen": {"address": "x"}, "account": {}});
        assert!(unknown_keys(&given, &known()).is_empty());
    }

    #[test]
    fn distances() {
        assert_eq!(distance("adress", "address"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
