//! The token room: getting OAuth2 access tokens for Exchange Online and keeping them fresh.
//!
//! The upstream pulls a token each time it opens an authenticated SMTP session. Tokens come
//! from a [`TokenSource`] (one implementation per credential kind, listed in [`credential`], all
//! talking to Entra through [`endpoint`]) and are cached per credential by [`TokenCache`], because one app-only token
//! serves every mailbox of that app registration (DESIGN §6). The cache refreshes ahead of expiry
//! in the background, makes one request for many concurrent misses, and remembers failures
//! briefly so a storm of connections cannot hammer Entra.
//!
//! Secrets never leave this room in readable form except through [`AccessToken::expose`], whose
//! one caller is the XOAUTH2 encoder. Tokens and client secrets are `SecretString`s with
//! redacted `Debug`; errors ([`TokenError`]) carry only what the endpoint said about the failure,
//! scrubbed by [`scrub`] (the secret in every form it may be echoed in, and any JWT) before
//! any excerpt of it is cut.

pub mod cache;
pub mod certificate;
pub mod certificate_files;
pub mod client_secret;
pub mod cloud;
pub mod credential;
pub mod delegated;
pub mod device_code;
pub mod endpoint;
pub mod error;
pub mod refresh_file;
pub mod managed_identity;
pub mod expiry;
pub mod jwt;
pub mod scrub;
pub mod source;
pub mod workload_identity;

pub use cache::TokenCache;
pub use certificate::{CertificateSettings, CertificateSource};
pub use client_secret::{read_secret_file, ClientSecretSettings, ClientSecretSource};
pub use cloud::Cloud;
pub use credential::{
    AssertionAlgorithm, BuildError, CertificateFiles, Credential, CredentialKind, SourceSettings,
};
pub use endpoint::{token_url, TokenEndpoint, TokenGrant};
pub use error::TokenError;
pub use expiry::{expiry, Expiry};
pub use managed_identity::{ImdsSettings, ManagedIdentitySource};
pub use source::{AccessToken, FetchFuture, Reloaded, TokenSource};
pub use workload_identity::{read_token_file, WorkloadIdentitySource};
