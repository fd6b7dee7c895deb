//! Live answers checked against the OpenAPI documents (`docs/openapi/*.json`): the
//! operation is found by method and path template (a request no template matches is held
//! to the document's `x-unrouted-responses`), the response by status (then `4XX`, then
//! `default`); its required headers must be there and every documented header must match
//! its schema; the body, parsed by the documented media type (`application/x-ndjson`: each
//! line), must match the schema (JSON Schema 2020-12, formats asserted).
//!
//! `$ref`s resolve through the `jsonschema` crate: each document is registered whole as a
//! resource under a URN of its own, and the schema checked is the operation's, with its
//! local `#/…` references rewritten to that URN.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use jsonschema::{Draft, Validator};
use serde_json::Value;

use crate::http::Response;

/// Which API answered, hence which document its answers are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// The hub's API users' routes (`docs/openapi/hub.json`).
    Hub,
    /// The trust sidecar (`docs/openapi/trust.json`).
    Trust,
    /// A provider bank, here a sandbox bank (`docs/openapi/provider.json`).
    Provider,
}

impl Api {
    /// The document's file name under `docs/openapi/`.
    pub const fn file(self) -> &'static str {
        match self {
            Api::Hub => "hub.json",
            Api::Trust => "trust.json",
            Api::Provider => "provider.json",
        }
    }

    const fn text(self) -> &'static str {
        match self {
            Api::Hub => include_str!("../../docs/openapi/hub.json"),
            Api::Trust => include_str!("../../docs/openapi/trust.json"),
            Api::Provider => include_str!("../../docs/openapi/provider.json"),
        }
    }

    const fn urn(self) -> &'static str {
        match self {
            Api::Hub => "urn:openapi-hub:docs:hub",
            Api::Trust => "urn:openapi-hub:docs:trust",
            Api::Provider => "urn:openapi-hub:docs:provider",
        }
    }
}

/// One document, parsed, with the validators built from it so far (by JSON pointer).
struct Doc {
    api: Api,
    value: Value,
    validators: Mutex<HashMap<String, Arc<Validator>>>,
}

fn doc(api: Api) -> &'static Doc {
    static DOCS: OnceLock<[Doc; 3]> = OnceLock::new();
    let docs = DOCS.get_or_init(|| {
        [Api::Hub, Api::Trust, Api::Provider].map(|api| Doc {
            api,
            value: serde_json::from_str(api.text())
                .unwrap_or_else(|e| panic!("docs/openapi/{} is not JSON: {e}", api.file())),
            validators: Mutex::new(HashMap::new()),
        })
    });
    match api {
        Api::Hub => &docs[0],
        Api::Trust => &docs[1],
        Api::Provider => &docs[2],
    }
}

/// Panics, naming the document, the route, the status and what failed, unless `resp` (the
/// answer to `method target`) is what `api`'s document says.
#[track_caller]
pub fn assert_conforms(api: Api, method: &str, target: &str, resp: &Response) {
    if let Err(e) = check(api, method, target, resp) {
        panic!("{e}\nanswer: {}", resp.describe());
    }
}

/// Checks `resp` (the answer to `method target`) against `api`'s document.
pub fn check(api: Api, method: &str, target: &str, resp: &Response) -> Result<(), String> {
    let doc = doc(api);
    let path = target.split(['?', '#']).next().unwrap_or("");
    let (route, responses) = match doc.operation(method, path) {
        Some((template, op)) => (format!("{method} {template}"), format!("{op}/responses")),
        None => (
            format!("{method} {path} (no route)"),
            "/x-unrouted-responses/responses".to_owned(),
        ),
    };
    let at = format!("{} {route} → {}", api.file(), resp.status);
    let response = doc
        .response(&responses, resp.status)
        .ok_or_else(|| format!("{at}: status {} is not documented", resp.status))?;
    doc.check_headers(&response, resp)
        .map_err(|e| format!("{at}: {e}"))?;
    doc.check_body(&response, method, resp)
        .map_err(|e| format!("{at}: {e}"))
}

/// `~` and `/` escaped for a JSON pointer token (RFC 6901).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

impl Doc {
    fn at(&self, pointer: &str) -> Option<&Value> {
        self.value.pointer(pointer)
    }

    /// Follows a local `$ref` chain from `pointer` to the object it names.
    fn resolve(&self, mut pointer: String) -> Option<String> {
        for _ in 0..8 {
            match self.at(&pointer)?.get("$ref").and_then(Value::as_str) {
                Some(r) => pointer = r.strip_prefix('#')?.to_owned(),
                None => return Some(pointer),
            }
        }
        None
    }

    /// The path template matching `path` (the one with the most literal segments wins) and
    /// the pointer of its operation for `method`.
    fn operation(&self, method: &str, path: &str) -> Option<(String, String)> {
        let segs: Vec<&str> = path.split('/').collect();
        let paths = self.value.get("paths")?.as_object()?;
        let (template, _) = paths
            .keys()
            .filter_map(|t| {
                let parts: Vec<&str> = t.split('/').collect();
                let fits = parts.len() == segs.len()
                    && parts.iter().zip(&segs).all(|(p, s)| {
                        (p.starts_with('{') && p.ends_with('}') && !s.is_empty()) || p == s
                    });
                fits.then(|| (t, parts.iter().filter(|p| !p.starts_with('{')).count()))
            })
            .max_by_key(|(_, literal)| *literal)?;
        let op = format!(
            "/paths/{}/{}",
            escape(template),
            method.to_ascii_lowercase()
        );
        self.at(&op)?;
        Some((template.clone(), op))
    }

    /// The pointer of the response documented for `status`: exact, `4XX`, or `default`.
    fn response(&self, responses: &str, status: u16) -> Option<String> {
        let range = format!("{}XX", status / 100);
        [status.to_string(), range, "default".to_owned()]
            .iter()
            .map(|key| format!("{responses}/{key}"))
            .find(|p| self.at(p).is_some())
            .and_then(|p| self.resolve(p))
    }

    fn check_headers(&self, response: &str, resp: &Response) -> Result<(), String> {
        let Some(headers) = self
            .at(&format!("{response}/headers"))
            .and_then(Value::as_object)
        else {
            return Ok(());
        };
        for name in headers.keys() {
            let header = self
                .resolve(format!("{response}/headers/{}", escape(name)))
                .ok_or_else(|| format!("header {name}: unresolvable $ref"))?;
            let required = self
                .at(&format!("{header}/required"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let Some(value) = resp.header(name) else {
                if required {
                    return Err(format!("required header {name} is missing"));
                }
                continue;
            };
            let schema = format!("{header}/schema");
            if self.at(&schema).is_none() {
                continue;
            }
            // A header is text; a schema asking for an integer gets the number it spells.
            let as_text = Value::String(value.to_owned());
            let as_number = value.parse::<i64>().ok().map(Value::from);
            let text_error = self.errors(&schema, &as_text)?;
            let number_ok = match &as_number {
                Some(n) => self.errors(&schema, n)?.is_none(),
                None => false,
            };
            if let (Some(e), false) = (text_error, number_ok) {
                return Err(format!("header {name}: {value:?}: {e}"));
            }
        }
        Ok(())
    }

    fn check_body(&self, response: &str, method: &str, resp: &Response) -> Result<(), String> {
        let content = self
            .at(&format!("{response}/content"))
            .and_then(Value::as_object);
        let Some(content) = content else {
            return match resp.body.is_empty() {
                true => Ok(()),
                false => Err("a body where the document has none".to_owned()),
            };
        };
        if method.eq_ignore_ascii_case("HEAD") || matches!(resp.status, 204 | 304) {
            return Ok(());
        }
        let media = resp
            .header("content-type")
            .and_then(|ct| ct.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase())
            .unwrap_or_default();
        if !content.contains_key(&media) {
            let documented: Vec<&String> = content.keys().collect();
            return Err(format!(
                "content-type {media:?} is not documented (documented: {documented:?})"
            ));
        }
        let schema = format!("{response}/content/{}/schema", escape(&media));
        if self.at(&schema).is_none() {
            return Ok(());
        }
        let text = std::str::from_utf8(&resp.body).map_err(|_| "the body is not UTF-8")?;
        if !(media.ends_with("json") || media == "application/x-ndjson") {
            // A text media type (Prometheus text, CSV): the instance is the text itself.
            let value = Value::String(text.to_owned());
            return match self.errors(&schema, &value)? {
                Some(e) => Err(format!("body (schema {schema}): {e}")),
                None => Ok(()),
            };
        }
        let instances: Vec<&str> = if media == "application/x-ndjson" {
            text.lines().filter(|l| !l.trim().is_empty()).collect()
        } else {
            vec![text]
        };
        for (i, instance) in instances.iter().enumerate() {
            let value: Value = serde_json::from_str(instance)
                .map_err(|e| format!("body (item {i}) is not JSON ({e})"))?;
            if let Some(e) = self.errors(&schema, &value)? {
                return Err(format!("body (schema {schema}): {e}"));
            }
        }
        Ok(())
    }

    /// `None` when `instance` matches the schema at `pointer`, otherwise the first errors,
    /// each with where in the instance and where in the schema it failed.
    fn errors(&self, pointer: &str, instance: &Value) -> Result<Option<String>, String> {
        let validator = self.validator(pointer)?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .take(5)
            .map(|e| {
                format!(
                    "{e} (at instance {:?}, schema path {})",
                    e.instance_path().to_string(),
                    e.schema_path()
                )
            })
            .collect();
        Ok((!errors.is_empty()).then(|| errors.join("; ")))
    }

    fn validator(&self, pointer: &str) -> Result<Arc<Validator>, String> {
        let mut cache = self
            .validators
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = cache.get(pointer) {
            return Ok(v.clone());
        }
        let schema = self
            .at(pointer)
            .map(|s| with_base(s.clone(), self.api.urn()))
            .ok_or_else(|| format!("no schema at {pointer}"))?;
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .with_resource(
                self.api.urn(),
                Draft::Draft202012.create_resource(self.value.clone()),
            )
            .build(&schema)
            .map(Arc::new)
            .map_err(|e| format!("the schema at {pointer} does not compile: {e}"))?;
        cache.insert(pointer.to_owned(), validator.clone());
        Ok(validator)
    }
}

/// `schema` with every local `$ref` (`#/components/…`) made absolute under `urn`, so that
/// it resolves into the registered document whatever the schema's own base is.
fn with_base(mut schema: Value, urn: &str) -> Value {
    fn walk(v: &mut Value, urn: &str) {
        match v {
            Value::Object(map) => {
                for (k, child) in map.iter_mut() {
                    match child {
                        Value::String(r) if k == "$ref" && r.starts_with('#') => {
                            *r = format!("{urn}{r}");
                        }
                        _ => walk(child, urn),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, urn)),
            _ => {}
        }
    }
    walk(&mut schema, urn);
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            version: "HTTP/1.1".into(),
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
            authorization_sent: Some(true),
        }
    }

    const IID: &str = "0b5e7c1a-2f3d-4e5f-8a9b-0c1d2e3f4a5b";
    const DATE: &str = "Sat, 05 Dec 2026 20:00:00 GMT";

    fn balances(available: &str) -> String {
        format!(
            r#"{{"data":{{"account_id":"acc-1","currency":"KZT","booked":"10.00","available":{available},"as_of":"2025-06-30T18:00:00+05:00"}},"links":{{"self":"/v1/accounts/acc-1/balances"}}}}"#
        )
    }

    fn ok(body: &str) -> Response {
        answer(
            200,
            &[
                ("content-type", "application/json"),
                ("x-fapi-interaction-id", IID),
                ("date", DATE),
                ("cache-control", "no-store"),
            ],
            body,
        )
    }

    const BALANCES: &str = "/v1/providers/990340000011/accounts/acc-1/balances";

    #[test]
    fn a_conforming_answer_passes() {
        check(Api::Hub, "GET", BALANCES, &ok(&balances(r#""9.50""#))).expect("conforms");
    }

    /// The message names the document, the route template, the status and the schema
    /// path of what failed.
    #[test]
    fn a_wrong_body_is_named_with_route_status_and_schema_path() {
        let e = check(Api::Hub, "GET", BALANCES, &ok(&balances("9.5"))).unwrap_err();
        for part in [
            "hub.json",
            "GET /v1/providers/{provider_id}/accounts/{account_id}/balances",
            "→ 200",
            "/data/available",
            "properties/available/type",
        ] {
            assert!(e.contains(part), "{part:?} not in {e}");
        }
    }

    #[test]
    fn a_missing_required_header_fails() {
        let mut r = ok(&balances(r#""9.50""#));
        r.headers.retain(|(n, _)| n != "x-fapi-interaction-id");
        let e = check(Api::Hub, "GET", BALANCES, &r).unwrap_err();
        assert!(e.contains("x-fapi-interaction-id is missing"), "{e}");
    }

    #[test]
    fn problems_are_held_to_their_status_codes() {
        let problem = |status: u16, code: &str| {
            answer(
                status,
                &[
                    ("content-type", "application/problem+json"),
                    ("x-fapi-interaction-id", IID),
                    ("date", DATE),
                    ("www-authenticate", "Bearer error=\"invalid_token\""),
                ],
                &format!(
                    r#"{{"type":"urn:openapi-hub:problem:{code}","title":"t","status":{status},"code":"{code}","interaction_id":"{IID}","detail":"d"}}"#
                ),
            )
        };
        check(Api::Hub, "GET", BALANCES, &problem(401, "invalid_token")).expect("a 401");
        // Every problem says which rule failed.
        let mut bare = problem(401, "invalid_token");
        let text = String::from_utf8_lossy(&bare.body).replace(r#","detail":"d""#, "");
        bare.body = text.into_bytes();
        assert!(
            check(Api::Hub, "GET", BALANCES, &bare).is_err(),
            "detail is required"
        );
        // A real code under the wrong status, and a code the hub never sends.
        assert!(check(Api::Hub, "GET", BALANCES, &problem(403, "invalid_token")).is_err());
        assert!(check(Api::Hub, "GET", BALANCES, &problem(401, "nope")).is_err());
        // No route: the unrouted answers apply.
        check(Api::Hub, "GET", "/v2/x", &problem(404, "route_not_found")).expect("404");
        let e = check(Api::Hub, "GET", "/v2/x", &problem(401, "invalid_token")).unwrap_err();
        assert!(e.contains("not documented"), "{e}");
    }

    /// The hub's document lists exactly the codes the hub emits, each under its status.
    #[test]
    fn the_hub_document_has_every_code_of_the_hub() {
        let schemas = &doc(Api::Hub).value["components"]["schemas"];
        let documented: Vec<&str> = schemas["Code"]["enum"]
            .as_array()
            .expect("the Code enum")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let emitted: Vec<&str> = policy::code::Code::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(documented, emitted);
        for code in policy::code::Code::ALL {
            let by_status = &schemas[format!("Problem{}", code.status())]["properties"]["code"];
            let listed = by_status["enum"].as_array().expect("codes of the status");
            assert!(listed.contains(&Value::from(code.as_str())), "{code}");
        }
    }

    #[test]
    fn every_document_compiles_and_is_complete() {
        for api in [Api::Hub, Api::Trust, Api::Provider] {
            let d = doc(api);
            assert_eq!(d.value["openapi"], "3.1.0", "{}", api.file());
            let schemas = d.value["components"]["schemas"]
                .as_object()
                .expect("schemas");
            for name in schemas.keys() {
                d.validator(&format!("/components/schemas/{}", escape(name)))
                    .unwrap_or_else(|e| panic!("{}: {e}", api.file()));
            }
        }
    }
}
