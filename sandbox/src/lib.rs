//! Development environment of the hub: sandbox provider banks (real HTTPS servers
//! with mTLS), their deterministic synthetic data, a development PKI, a development
//! token issuer, a development OpenID Connect identity provider and a throwaway Redis
//! server, used by the development hub (`devhub`), the end-to-end tests and the benches;
//! and `hubtool` (`mint`), which mints test tokens for a hub deployed with `scripts/pki`.
#![forbid(unsafe_code)]

pub mod bank;
pub mod data;
pub mod idp;
pub mod mint;
pub mod pki;
pub mod redis;
pub mod tokens;
