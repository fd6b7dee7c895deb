//! Conformance details over real TLS: the RFC 8414 metadata carries every REQUIRED member
//! (and validates with authlib's RFC 8414 validator: `metadata_validates_with_authlib`,
//! ignored unless `pip install authlib` has run — `.ci/run` runs it); a malformed BIN on a
//! registry route answers `422 invalid_field` naming `bin`, over HTTP/1.1 and HTTP/2; the
//! OpenAPI document (`docs/openapi/trust.json`) is served on both listeners to callers
//! without a client certificate.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use sandbox::pki::Identity;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use trust::clock::ManualClock;

async fn metadata() -> (Value, String) {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let running = trust::start(f.config(&clock), None).await.unwrap();
    let v = f
        .client(running.addr())
        .get(None, "/.well-known/oauth-authorization-server")
        .await
        .expect(200);
    let url = running.url().to_owned();
    running.stop().await;
    (v, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_has_every_required_member() {
    let (m, url) = metadata().await;
    // RFC 8414 §2 and §3.
    assert_eq!(
        m["issuer"],
        url.as_str(),
        "the issuer the document is served for"
    );
    assert_eq!(m["token_endpoint"], format!("{url}/oauth2/token"));
    assert_eq!(m["jwks_uri"], format!("{url}/.well-known/jwks.json"));
    let response_types = m["response_types_supported"].as_array().expect("REQUIRED");
    assert!(
        !response_types.is_empty(),
        "an empty array is read as absent"
    );
    assert!(response_types.iter().all(Value::is_string));
    // No authorization endpoint, so no grant type may need one.
    assert!(m.get("authorization_endpoint").is_none());
    assert_eq!(m["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(
        m["token_endpoint_auth_methods_supported"],
        json!(["tls_client_auth"])
    );
    assert_eq!(m["tls_client_certificate_bound_access_tokens"], true);
    // Every array member says something: none is empty.
    for (k, v) in m.as_object().unwrap() {
        if let Some(a) = v.as_array() {
            assert!(!a.is_empty(), "{k} is an empty array");
        }
    }
}

/// authlib's `AuthorizationServerMetadata.validate()` (Python), through
/// `tests/conformance/rfc8414.py`. Needs `pip install authlib`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Python with authlib (pip install authlib); .ci/run runs it"]
async fn metadata_validates_with_authlib() {
    let (m, url) = metadata().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metadata.json");
    std::fs::write(&file, m.to_string()).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/rfc8414.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&file)
        .arg(&url)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "authlib refused the metadata: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One request over HTTP/2 with `id`'s certificate.
async fn h2(
    f: &Fixture,
    addr: std::net::SocketAddr,
    id: &Identity,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let tls = f.client(addr).tls_with_alpn(Some(id), b"h2");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .expect("an answer, not a stream error");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_bin_is_named_over_http1_and_http2() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let running = trust::start(f.config(&clock), None).await.unwrap();
    let c = f.client(running.addr());
    let op = f.operator();
    let record =
        json!({"name": "Bank", "roles": ["provider"], "provider_urls": ["https://127.0.0.1:1"]});
    for bad in [
        "18034001234",
        "1803400123456",
        "18034001234X",
        "%31%38%30%33%34%30%30%31%32%33%34%35",
        "abc",
    ] {
        for (method, path, body) in [
            ("GET", format!("/v1/participants/{bad}"), Value::Null),
            ("PUT", format!("/v1/participants/{bad}"), record.clone()),
            (
                "PUT",
                format!("/v1/participants/{bad}/status"),
                json!({"status": "suspended"}),
            ),
        ] {
            let one = c.json(Some(op), method, &path, body.clone()).await;
            let two = h2(&f, running.addr(), op, method, &path, body).await;
            for (proto, status, v) in [
                ("HTTP/1.1", one.status, one.json()),
                ("HTTP/2", two.0, two.1),
            ] {
                assert_eq!(status, 422, "{proto} {method} {path}: {v}");
                assert_eq!(v["code"], "invalid_field", "{proto} {method} {path}");
                assert!(
                    v["detail"].as_str().unwrap_or_default().starts_with("bin:"),
                    "{proto} {method} {path}: {v}"
                );
            }
        }
    }
    // The caller must still be the operator: a malformed BIN tells nobody else anything.
    let r = c.get(Some(f.user(USER_A)), "/v1/participants/abc").await;
    assert_eq!(
        (r.status, r.code()),
        (403, "operator_certificate_required".to_string())
    );
    running.stop().await;
}

/// `GET /openapi.json` answers the committed document, as JSON, to a caller without a
/// certificate, on the public and on the internal listener; other methods are `405`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_without_a_client_certificate() {
    let f = Fixture::new();
    let clock = ManualClock::new(now());
    let mut config = f.config(&clock);
    config.internal_listen = Some("127.0.0.1:0".parse().unwrap());
    let running = trust::start(config, None).await.unwrap();
    let committed: Value = serde_json::from_str(include_str!("../../docs/openapi/trust.json"))
        .expect("the committed document is JSON");
    let internal = running.internal_addr().expect("an internal listener");
    for addr in [running.addr(), internal] {
        let r = f.client(addr).get(None, "/openapi.json").await;
        assert_eq!(
            r.status,
            200,
            "{addr}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok());
        assert_eq!(ct, Some("application/json"), "{addr}");
        assert_eq!(r.json(), committed, "{addr}");
        assert_eq!(r.json()["openapi"], "3.1.0");
        let post = f
            .client(addr)
            .send(None, "POST", "/openapi.json", &[], Vec::new())
            .await;
        assert_eq!(
            (post.status, post.code()),
            (405, "method_not_allowed".into())
        );
    }
    running.stop().await;
}
