//! Which web proxy the token request goes through, decided exactly as the HTTP client decides
//! it (the same matcher, the same variables: `HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`, upper
//! case first), so `check` can say what it used. Credentials in a proxy URL are never shown.

use hyper_util::client::proxy::matcher::Matcher;

/// The proxy for `url` under `env`, as one line for a report: `http://proxy:3128 (from
/// HTTPS_PROXY)`, or why there is none.
pub fn describe(url: &str, env: &[(String, String)]) -> String {
    let get = |names: [&str; 2]| {
        names.iter().find_map(|name| {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(k, v)| (k.clone(), v.clone()))
        })
    };
    let https = get(["HTTPS_PROXY", "https_proxy"]);
    let all = get(["ALL_PROXY", "all_proxy"]);
    let no = get(["NO_PROXY", "no_proxy"]);
    let value = |v: &Option<(String, String)>| v.as_ref().map(|(_, v)| v.clone());
    let matcher = Matcher::builder()
        .https(value(&https).unwrap_or_default())
        .all(value(&all).unwrap_or_default())
        .no(value(&no).unwrap_or_default())
        .build();
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return "none (the token URL is not a URL)".into();
    };
    match matcher.intercept(&uri) {
        Some(proxy) => {
            let p = proxy.uri();
            let shown = format!(
                "{}://{}{}",
                p.scheme_str().unwrap_or("http"),
                p.host().unwrap_or("?"),
                p.port_u16().map(|n| format!(":{n}")).unwrap_or_default()
            );
            // The variable that supplied it: the specific one wins over ALL_PROXY.
            let from = https
                .filter(|(_, v)| !v.trim().is_empty())
                .or(all)
                .map(|(k, _)| k)
                .unwrap_or_default();
            format!("{shown} (from {from})")
        }
        None if no.is_some() && (https.is_some() || all.is_some()) => {
            let (name, _) = no.unwrap_or_default();
            format!(
                "none: {} is listed in {name}, so it is reached directly",
                host(&uri)
            )
        }
        None => "none: direct connection (set HTTPS_PROXY if this network needs a proxy)".into(),
    }
}

fn host(uri: &axum::http::Uri) -> &str {
    uri.host().unwrap_or("the host")
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://login.microsoftonline.com/t/oauth2/v2.0/token";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_the_proxy_and_its_variable_without_credentials() {
        let line = describe(
            URL,
            &env(&[("HTTPS_PROXY", "http://bob:hunter2@proxy.corp:3128")]),
        );
        assert_eq!(line, "http://proxy.corp:3128 (from HTTPS_PROXY)");
        let line = describe(URL, &env(&[("all_proxy", "http://p2:8080")]));
        assert_eq!(line, "http://p2:8080 (from all_proxy)");
        let line = describe(
            URL,
            &env(&[
                ("ALL_PROXY", "http://p2:8080"),
                ("https_proxy", "http://p1:1"),
            ]),
        );
        assert_eq!(line, "http://p1:1 (from https_proxy)");
    }

    #[test]
    fn says_why_there_is_none() {
        assert!(describe(URL, &[]).starts_with("none: direct connection"));
        let line = describe(
            URL,
            &env(&[
                ("HTTPS_PROXY", "http://proxy.corp:3128"),
                ("NO_PROXY", ".microsoftonline.com"),
            ]),
        );
        assert_eq!(
            line,
            "none: login.microsoftonline.com is listed in NO_PROXY, so it is reached directly"
        );
        // HTTP_PROXY is for http:// URLs only; the token URL is https.
        let line = describe(URL, &env(&[("HTTP_PROXY", "http://proxy.corp:3128")]));
        assert!(line.starts_with("none: direct connection"), "{line}");
    }
}
