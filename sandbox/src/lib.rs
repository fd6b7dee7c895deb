//! Development environment of the hub: sandbox provider banks (real HTTPS servers
//! with mTLS), their deterministic synthetic data, a development PKI and a
//! development token issuer, used by the development hub (`devhub`), the end-to-end
//! tests and the benches.
#![forbid(unsafe_code)]

pub mod bank;
pub mod data;
pub mod pki;
pub mod tokens;
