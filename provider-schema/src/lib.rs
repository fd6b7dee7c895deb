//! The provider API's schema (`docs/openapi/provider.json`, embedded), compiled once per
//! API with the `jsonschema` crate (JSON Schema 2020-12, formats asserted): what the
//! conformance probes (`conformance`) and the gateways' live-traffic checks hold a
//! provider's answers to. Which schema an answer of an API with a given status is held to:
//! the documented response by exact status, then `4XX`, then `default`. No I/O: the
//! gateway links this crate, never the conformance suite (which has an HTTP client).
//!
//! `$ref`s resolve as in the end-to-end suites (`tests/src/openapi.rs`): the document is
//! registered whole as a resource under a URN and each checked schema has its local `#/…`
//! references rewritten to that URN. An open-data answer is also held to its own set's
//! item schema (the document's `OpenDataSet` accepts any of the four item kinds).
//!
//! A violation is reported by where it is (the instance path, with any segment that is not
//! a schema word or an index masked) and which schema keyword failed, never by the value:
//! the value may be customer data.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::OnceLock;

use jsonschema::{Draft, Validator};
use serde_json::{json, Value};

use feed_wire::ProviderApi as Api;

/// The provider API's OpenAPI document.
pub const PROVIDER_OPENAPI: &str = include_str!("../../docs/openapi/provider.json");
const URN: &str = "urn:openapi-hub:docs:provider";

/// Checks a successful (`200`) answer of `api`, already parsed, against the provider
/// schema; the first rule it breaks, by schema path and masked instance path only.
/// [`Violation::NoSchema`] when the schema does not compile (a build defect, never a
/// panic).
pub fn validate(api: Api, body: &Value) -> Result<(), Violation> {
    let schemas = schemas().map_err(|_| Violation::NoSchema)?;
    schemas.validate(api, 200, body)
}

/// What is wrong with an answer, in words that carry no data of the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The status has no documented response.
    #[error("status {0} is not documented")]
    Status(u16),
    /// The media type is not the documented one.
    #[error("content-type is not application/json")]
    ContentType,
    /// The body does not parse as JSON.
    #[error("the body is not JSON")]
    NotJson,
    /// The embedded schema does not compile (a build defect): nothing could be checked.
    #[error("the provider schema does not compile")]
    NoSchema,
    /// The body breaks the schema.
    #[error("{at} breaks `{keyword}` (schema path {schema_path})")]
    Schema {
        /// The instance path (JSON pointer), masked.
        at: String,
        /// The schema keyword that failed (`type`, `required`, `pattern`, …).
        keyword: String,
        /// Where in the schema.
        schema_path: String,
    },
}

/// Every validator the suite needs, compiled once.
pub struct Schemas {
    doc: Value,
    /// By the schema's pointer in the document, plus `#dataset` for open-data sets.
    validators: HashMap<String, Validator>,
}

/// The compiled schemas (compiled on first use; a failure is a build defect, reported
/// rather than panicking).
pub fn schemas() -> Result<&'static Schemas, String> {
    static SCHEMAS: OnceLock<Result<Schemas, String>> = OnceLock::new();
    SCHEMAS
        .get_or_init(Schemas::compile)
        .as_ref()
        .map_err(Clone::clone)
}

/// `~` and `/` escaped for a JSON pointer token (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

impl Schemas {
    fn compile() -> Result<Schemas, String> {
        let doc: Value = serde_json::from_str(PROVIDER_OPENAPI)
            .map_err(|e| format!("provider.json is not JSON: {e}"))?;
        let mut s = Schemas {
            doc,
            validators: HashMap::new(),
        };
        let mut pointers = Vec::new();
        for api in Api::ALL {
            let responses = format!("{}/responses", operation(api));
            let keys: Vec<String> = s
                .doc
                .pointer(&responses)
                .and_then(Value::as_object)
                .ok_or_else(|| format!("no responses at {responses}"))?
                .keys()
                .cloned()
                .collect();
            for key in keys {
                if let Some(p) = s.body_schema(&format!("{responses}/{key}")) {
                    pointers.push(p);
                }
            }
        }
        for p in pointers {
            if !s.validators.contains_key(&p) {
                // A URI fragment: the path template's braces percent-encoded (RFC 6901 §6).
                let fragment = p.replace('{', "%7B").replace('}', "%7D");
                let schema = json!({"$ref": format!("{URN}#{fragment}")});
                let v = s.build(&schema)?;
                s.validators.insert(p, v);
            }
        }
        for api in Api::ALL {
            if let Some((key, schema)) = dataset_schema(api) {
                let v = s.build(&schema)?;
                s.validators.insert(key, v);
            }
        }
        Ok(s)
    }

    fn build(&self, schema: &Value) -> Result<Validator, String> {
        jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .with_resource(URN, Draft::Draft202012.create_resource(self.doc.clone()))
            .build(schema)
            .map_err(|e| format!("a schema does not compile: {e}"))
    }

    /// Follows a local `$ref` chain from `pointer`.
    fn resolve(&self, mut pointer: String) -> Option<String> {
        for _ in 0..8 {
            match self
                .doc
                .pointer(&pointer)?
                .get("$ref")
                .and_then(Value::as_str)
            {
                Some(r) => pointer = r.strip_prefix('#')?.to_owned(),
                None => return Some(pointer),
            }
        }
        None
    }

    /// The pointer of the `application/json` body schema of a response (resolved).
    fn body_schema(&self, response: &str) -> Option<String> {
        let response = self.resolve(response.to_owned())?;
        let schema = format!("{response}/content/application~1json/schema");
        self.doc.pointer(&schema).map(|_| schema)
    }

    /// The validator for `api`'s answer with `status`.
    fn validator(&self, api: Api, status: u16) -> Result<&Validator, Violation> {
        if (200..300).contains(&status) {
            if let Some((key, _)) = dataset_schema(api) {
                return self.validators.get(&key).ok_or(Violation::Status(status));
            }
        }
        let responses = format!("{}/responses", operation(api));
        let range = format!("{}XX", status / 100);
        let pointer = [status.to_string(), range, "default".to_owned()]
            .iter()
            .map(|key| format!("{responses}/{key}"))
            .find(|p| self.doc.pointer(p).is_some())
            .and_then(|p| self.body_schema(&p))
            .ok_or(Violation::Status(status))?;
        self.validators
            .get(&pointer)
            .ok_or(Violation::Status(status))
    }

    /// Checks an answer of `api` and returns its JSON.
    pub fn check(
        &self,
        api: Api,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> (Result<(), Violation>, Option<Value>) {
        let value: Option<Value> = serde_json::from_slice(body).ok();
        let validator = match self.validator(api, status) {
            Ok(v) => v,
            Err(e) => return (Err(e), value),
        };
        let media = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        if media.as_deref() != Some("application/json") {
            return (Err(Violation::ContentType), value);
        }
        let Some(v) = value else {
            return (Err(Violation::NotJson), None);
        };
        (first_violation(validator, &v), Some(v))
    }

    /// Checks a parsed answer of `api` with `status` against its schema.
    pub fn validate(&self, api: Api, status: u16, body: &Value) -> Result<(), Violation> {
        first_violation(self.validator(api, status)?, body)
    }
}

/// The first rule `v` breaks under `validator`, named by paths and keyword only.
fn first_violation(validator: &Validator, v: &Value) -> Result<(), Violation> {
    let first = validator.iter_errors(v).next().map(|e| {
        let schema_path = e.schema_path().to_string();
        Violation::Schema {
            at: mask(e.instance_path().as_str()),
            keyword: schema_path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
            schema_path,
        }
    });
    first.map_or(Ok(()), Err)
}

/// The pointer of `api`'s `GET` operation.
fn operation(api: Api) -> String {
    format!("/paths/{}/get", escape(api.template()))
}

/// For an open-data API: its validator key and a schema holding the set to its own items.
fn dataset_schema(api: Api) -> Option<(String, Value)> {
    let item = match api {
        Api::ExchangeRates => "ExchangeRate",
        Api::Branches => "Branch",
        Api::Atms => "Atm",
        Api::Products => "Product",
        _ => return None,
    };
    let dataset = api.dataset()?;
    // The set's own items first: their errors say more than `OpenDataSet`'s `anyOf`.
    let schema = json!({"allOf": [
        {"properties": {"data": {"items": {"$ref": format!("{URN}#/components/schemas/{item}")}}}},
        {"$ref": format!("{URN}#/components/schemas/OpenDataSet")}
    ]});
    Some((format!("#{dataset}"), schema))
}

/// An instance path with every segment that is neither an index nor a lower-case schema
/// word replaced by `*`: a member name chosen by the provider may be data.
fn mask(path: &str) -> String {
    if path.is_empty() {
        return "the body".to_owned();
    }
    let masked: Vec<&str> = path
        .split('/')
        .skip(1)
        .map(|seg| {
            let word = !seg.is_empty()
                && seg.len() <= 32
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-');
            let index = !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit());
            if word || index {
                seg
            } else {
                "*"
            }
        })
        .collect();
    format!("/{}", masked.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(api: Api, body: &str) -> Result<(), Violation> {
        schemas()
            .expect("compiles")
            .check(api, 200, Some("application/json"), body.as_bytes())
            .0
    }

    const BALANCES: &str = r#"{"data":{"account_id":"acc-1","currency":"KZT","booked":"10.00","available":"9.50","as_of":"2025-06-30T18:00:00+05:00"},"links":{"self":"/v1/accounts/acc-1/balances"}}"#;

    #[test]
    fn a_conforming_answer_passes_and_a_wrong_one_names_path_and_keyword_not_value() {
        ok(Api::Balances, BALANCES).expect("conforms");
        let wrong = BALANCES.replace(r#""9.50""#, "123456789.5");
        let e = ok(Api::Balances, &wrong).unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("/data/available"), "{shown}");
        assert!(shown.contains("`type`"), "{shown}");
        assert!(!shown.contains("123456789"), "{shown}");
    }

    #[test]
    fn errors_are_held_to_the_documented_error_answer() {
        let s = schemas().expect("compiles");
        let err = br#"{"error":"account_not_in_consent","message":"m"}"#;
        let ct = Some("application/json");
        assert_eq!(s.check(Api::Account, 403, ct, err).0, Ok(()));
        assert_eq!(s.check(Api::Account, 500, ct, err).0, Ok(()));
        assert!(s.check(Api::Account, 403, ct, b"{}").0.is_err());
        assert_eq!(
            s.check(Api::Account, 200, Some("text/html"), BALANCES.as_bytes())
                .0,
            Err(Violation::ContentType)
        );
        assert_eq!(
            s.check(Api::Account, 200, ct, b"<html>").0,
            Err(Violation::NotJson)
        );
    }

    #[test]
    fn an_open_data_set_is_held_to_its_own_items() {
        let rates =
            r#"{"data":[{"nope":1}],"links":{"self":"/v1/open-data/atms"},"meta":{"total":1}}"#;
        assert!(ok(Api::Atms, rates).is_err());
        let empty = r#"{"data":[],"links":{"self":"/v1/open-data/atms"},"meta":{"total":0}}"#;
        ok(Api::Atms, empty).expect("an empty set conforms");
    }

    const PAGE: &str = r#"{"data":[{"transaction_id":"tx-1","booking_date":"2025-06-30","value_date":"2025-06-30","amount":"1250.00","currency":"KZT","credit_debit":"debit","status":"booked","counterparty":"Shop","description":"Card"}],"links":{"self":"/v1/accounts/acc-1/transactions"},"meta":{"total":1}}"#;

    #[test]
    fn validate_holds_a_parsed_page_to_its_api_and_names_the_rule_not_the_value() {
        let page: Value = serde_json::from_str(PAGE).expect("json");
        validate(Api::Transactions, &page).expect("conforms");
        let broken: Value =
            serde_json::from_str(&PAGE.replace(r#""1250.00""#, r#""12,50""#)).expect("json");
        let e = validate(Api::Transactions, &broken).unwrap_err();
        let Violation::Schema {
            at, schema_path, ..
        } = &e
        else {
            panic!("{e:?}");
        };
        assert_eq!(at, "/data/0/amount");
        assert!(schema_path.ends_with("/pattern"), "{schema_path}");
        assert!(!e.to_string().contains("12,50"), "{e}");
        // A page without `links` breaks `required`; the same body as another API too.
        let no_links: Value = serde_json::json!({"data": [], "meta": {"total": 0}});
        assert!(validate(Api::Transactions, &no_links).is_err());
        assert!(validate(Api::Balances, &page).is_err());
    }

    #[test]
    fn provider_chosen_member_names_are_masked() {
        assert_eq!(mask("/data/0/iban"), "/data/0/iban");
        assert_eq!(mask("/data/KZ123/x"), "/data/*/x");
        assert_eq!(mask(""), "the body");
    }
}
