//! The provider-side schema the suite holds answers to: the `provider-schema` crate, which
//! the gateways' live-traffic checks share (re-exported under its former path).

pub use provider_schema::{schemas, validate, Schemas, Violation, PROVIDER_OPENAPI};
