//! National clouds (reference §1.1 and the table in §8): which login host, which Exchange
//! resource and which SMTP host an account uses. Pure.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `account.cloud`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Microsoft 365 worldwide (and GCC, which uses the worldwide hosts).
    #[default]
    Global,
    /// US Government: GCC High and DoD.
    Usgov,
    /// Microsoft 365 operated by 21Vianet.
    China,
}

impl Cloud {
    /// The login (token) host's base URL.
    pub fn authority(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::Usgov => "https://login.microsoftonline.us",
            Cloud::China => "https://login.partner.microsoftonline.cn",
        }
    }

    /// The Exchange Online resource an app-only token is for.
    pub fn exchange_resource(self) -> &'static str {
        match self {
            Cloud::Global => "https://outlook.office365.com",
            Cloud::Usgov => "https://outlook.office365.us",
            Cloud::China => "https://partner.outlook.cn",
        }
    }

    /// The app-only scope: the resource followed by `/.default` (reference §1.2).
    pub fn app_scope(self) -> String {
        format!("{}/.default", self.exchange_resource())
    }

    /// The delegated scope (reference §1.6): `SMTP.Send` on the Outlook resource, and
    /// `offline_access` for a refresh token.
    pub fn delegated_scope(self) -> String {
        let resource = match self {
            Cloud::Global => "https://outlook.office.com",
            other => other.exchange_resource(),
        };
        format!("{resource}/SMTP.Send offline_access")
    }

    /// The SMTP submission host and port (the national ones are not confirmed on a live
    /// tenant yet, reference §7 item 12).
    pub fn smtp_address(self) -> &'static str {
        match self {
            Cloud::Global => "smtp.office365.com:587",
            Cloud::Usgov => "smtp.office365.us:587",
            Cloud::China => "smtp.partner.outlook.cn:587",
        }
    }

    /// The audience of a federated credential (reference §1.4, §1.5): what an IMDS token
    /// used as an assertion must be issued for.
    pub fn federation_audience(self) -> &'static str {
        match self {
            Cloud::Global => "api://AzureADTokenExchange",
            Cloud::Usgov => "api://AzureADTokenExchangeUSGov",
            Cloud::China => "api://AzureADTokenExchangeChina",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cloud::Global => "global",
            Cloud::Usgov => "usgov",
            Cloud::China => "china",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_table() {
        let rows = [
            (
                Cloud::Global,
                "https://login.microsoftonline.com",
                "https://outlook.office365.com/.default",
                "smtp.office365.com:587",
                "api://AzureADTokenExchange",
            ),
            (
                Cloud::Usgov,
                "https://login.microsoftonline.us",
                "https://outlook.office365.us/.default",
                "smtp.office365.us:587",
                "api://AzureADTokenExchangeUSGov",
            ),
            (
                Cloud::China,
                "https://login.partner.microsoftonline.cn",
                "https://partner.outlook.cn/.default",
                "smtp.partner.outlook.cn:587",
                "api://AzureADTokenExchangeChina",
            ),
        ];
        for (cloud, login, scope, smtp, audience) in rows {
            assert_eq!(cloud.authority(), login, "{cloud}");
            assert_eq!(cloud.app_scope(), scope, "{cloud}");
            assert_eq!(cloud.smtp_address(), smtp, "{cloud}");
            assert_eq!(cloud.federation_audience(), audience, "{cloud}");
        }
        assert_eq!(
            Cloud::Global.delegated_scope(),
            "https://outlook.office.com/SMTP.Send offline_access"
        );
        assert_eq!(
            Cloud::Usgov.delegated_scope(),
            "https://outlook.office365.us/SMTP.Send offline_access"
        );
    }

    #[test]
    fn names_round_trip_through_serde() {
        for cloud in [Cloud::Global, Cloud::Usgov, Cloud::China] {
            let text = serde_json::to_string(&cloud).unwrap();
            assert_eq!(text, format!("\"{}\"", cloud.name()));
            assert_eq!(serde_json::from_str::<Cloud>(&text).unwrap(), cloud);
        }
        assert!(serde_json::from_str::<Cloud>("\"gcc\"").is_err());
    }
}
