//! Contract §3 and §5 for consents restricted to some accounts: the account list the API
//! user receives holds only the consent's accounts, whatever the provider answered.
//!
//! - A sandbox bank told to ignore `x-hub-accounts` lists every account of the customer:
//!   through the hub, the restricted consent still sees only its own (row 14 keeps the
//!   other accounts' routes refused).
//! - A scripted provider (a raw TLS server in this file, answering per consent id) shows
//!   the filter on the wire: a list sent in pieces is held back and filtered, a list that
//!   cannot be checked (not JSON, an entry without `account_id`, over the hub's bound,
//!   content-encoded, declared empty) is `502 provider_bad_response` even when its header
//!   came long before its body, an error answer passes as it is, and an unrestricted
//!   consent's list streams through byte for byte. Over HTTP/1.1 and HTTP/2.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use e2e::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

/// The scripted provider's BIN.
const SCRIPTED: &str = "990340000077";
/// The accounts every restricted consent of the scripted provider covers.
const ALLOWED: [&str; 2] = ["KZ-A", "KZ-B"];
/// The hub's bound on a buffered account list (`gateway/src/proxy/accounts.rs`).
const MAX_LIST_BYTES: usize = 256 * 1024;

/// A bank's account list with the consent's two accounts among two others, a count and a
/// paging link that describe the whole list (accounts of provider.json's shape, so that
/// what passes the hub is what hub.json promises).
const FULL_LIST: &str = r#"{"data":[{"account_id":"KZ-X","iban":"KZ00X","currency":"KZT","type":"current","name":"X","opened":"2020-01-01","status":"enabled"},{"account_id":"KZ-A","iban":"KZ00A","currency":"KZT","type":"card","name":"A","opened":"2020-01-02","status":"enabled"},{"account_id":"KZ-Y","iban":"KZ00Y","currency":"USD","type":"savings","name":"Y","opened":"2020-01-03","status":"blocked"},{"account_id":"KZ-B","iban":"KZ00B","currency":"EUR","type":"current","name":"B","opened":"2020-01-04","status":"enabled"}],"links":{"self":"/v1/accounts","next":"?cursor=c2"},"meta":{"total":4,"next_cursor":"c2"}}"#;

/// One step of a scripted answer.
#[derive(Clone)]
enum Step {
    /// Bytes written and flushed at once.
    Send(Vec<u8>),
    /// A slow provider: nothing for this long.
    Pause(Duration),
}

/// The head of a `200` answer with extra header lines.
fn head(extra: &str) -> Step {
    Step::Send(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n{extra}\r\n"
        )
        .into_bytes(),
    )
}

/// One chunk of a chunked body.
fn chunk(piece: &[u8]) -> Step {
    let mut out = format!("{:x}\r\n", piece.len()).into_bytes();
    out.extend_from_slice(piece);
    out.extend_from_slice(b"\r\n");
    Step::Send(out)
}

fn last_chunk() -> Step {
    Step::Send(b"0\r\n\r\n".to_vec())
}

fn sized(body: &str) -> Vec<Step> {
    vec![
        head(&format!("content-length: {}\r\n", body.len())),
        Step::Send(body.as_bytes().to_vec()),
    ]
}

/// A body of `n` bytes that is a valid list of allowed accounts until it runs out.
fn oversized(n: usize) -> Vec<u8> {
    let mut body = br#"{"data":["#.to_vec();
    while body.len() < n {
        body.extend_from_slice(br#"{"account_id":"KZ-A"},"#);
    }
    body
}

/// What the scripted provider answers, by consent id (`x-hub-consent-id`).
fn scripts() -> HashMap<&'static str, Vec<Step>> {
    let pause = Step::Pause(Duration::from_millis(150));
    let (first, rest) = FULL_LIST.split_at(60);
    let (second, third) = rest.split_at(90);
    let big = oversized(MAX_LIST_BYTES + 4096);
    let mut s: HashMap<&'static str, Vec<Step>> = HashMap::new();
    s.insert(
        "c-list-in-pieces",
        vec![
            head("transfer-encoding: chunked\r\n"),
            chunk(first.as_bytes()),
            pause.clone(),
            chunk(second.as_bytes()),
            pause.clone(),
            chunk(third.as_bytes()),
            last_chunk(),
        ],
    );
    s.insert("c-list-sized", sized(FULL_LIST));
    s.insert("c-list-open", sized(FULL_LIST));
    s.insert(
        "c-late-garbage",
        vec![
            head("transfer-encoding: chunked\r\n"),
            Step::Pause(Duration::from_millis(300)),
            chunk(br#"{"data":[{"account_id":"KZ-A","iban":"KZ00A"},"#),
            pause.clone(),
            chunk(b"<html>oops</html>"),
            last_chunk(),
        ],
    );
    s.insert(
        "c-entry-without-id",
        sized(r#"{"data":[{"account_id":"KZ-A"},{"iban":"KZ00X"}]}"#),
    );
    s.insert(
        "c-oversized",
        vec![
            head("transfer-encoding: chunked\r\n"),
            chunk(&big[..big.len() / 2]),
            chunk(&big[big.len() / 2..]),
            chunk(b"]}"),
            last_chunk(),
        ],
    );
    s.insert(
        "c-oversized-declared",
        vec![
            head(&format!("content-length: {}\r\n", big.len())),
            Step::Send(big),
        ],
    );
    s.insert(
        "c-gzip",
        vec![
            head("content-encoding: gzip\r\ncontent-length: 4\r\n"),
            Step::Send(b"\x1f\x8b\x08\x00".to_vec()),
        ],
    );
    s.insert("c-empty", vec![head("content-length: 0\r\n")]);
    s.insert(
        "c-bank-error",
        vec![Step::Send(
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 64\r\nconnection: close\r\n\r\n{\"error\":\"customer_not_found\",\"message\":\"no such customer here\"}"
                .to_vec(),
        )],
    );
    s
}

/// The listener of the scripted provider, bound while the hub is configured.
static LISTENER: Mutex<Option<TcpListener>> = Mutex::new(None);

static HUB: OnceLock<Hub> = OnceLock::new();

fn hub() -> &'static Hub {
    HUB.get_or_init(|| {
        let hub = Hub::start_with(hub_exe!(), |s| {
            s.unlimited();
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind the scripted bank");
            let url = format!("https://{}", listener.local_addr().expect("addr"));
            // A retried start-up binds again; the last listener is the one configured.
            *LISTENER.lock().expect("listener") = Some(listener);
            s.add_provider(SCRIPTED, &url, true);
            let customer = s.consents[0]["customer"]
                .as_str()
                .expect("customer")
                .to_string();
            for id in scripts().into_keys() {
                s.add_consent(id, USER_A, &customer, &[SCRIPTED], &ALL_PERMISSIONS);
                if id != "c-list-open" {
                    if let Some(c) = s.consents.last_mut() {
                        c["accounts"] = json!(ALLOWED);
                    }
                }
            }
        });
        let listener = LISTENER
            .lock()
            .expect("listener")
            .take()
            .expect("the scripted bank's listener");
        let provider = hub
            .pki
            .provider_server(bin(BANK_1))
            .expect("a server identity");
        serve_scripted(listener, &provider.cert_pem, &provider.key_pem);
        // The demo's first bank now behaves as a careless provider would.
        hub.bank(BANK_1).ignore_accounts_header(true);
        hub
    })
}

/// Runs the scripted provider on a thread of its own (the tests' runtimes come and go):
/// TLS with a certificate of the development PKI, one request per connection, the script
/// of the request's consent, then close.
fn serve_scripted(listener: TcpListener, cert_pem: &str, key_pem: &str) {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate PEM");
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .expect("key PEM")
        .expect("a key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let scripts = Arc::new(scripts());
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, scripts) = (acceptor.clone(), scripts.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        answer(tls, &scripts).await;
                    }
                });
            }
        });
    });
}

/// Reads one request head and plays the script of its consent.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut io: S,
    scripts: &HashMap<&'static str, Vec<Step>>,
) {
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match io.read(&mut piece).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&piece[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let consent = text
        .lines()
        .find_map(|l| l.strip_prefix("x-hub-consent-id:"))
        .map(str::trim)
        .unwrap_or("");
    let steps = scripts.get(consent).cloned().unwrap_or_else(|| {
        vec![Step::Send(
            b"HTTP/1.1 500 Unscripted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
        )]
    });
    for step in steps {
        match step {
            Step::Send(bytes) => {
                if io.write_all(&bytes).await.is_err() || io.flush().await.is_err() {
                    return;
                }
            }
            Step::Pause(d) => tokio::time::sleep(d).await,
        }
    }
    let _ = io.shutdown().await;
}

fn ids(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array: {v}"))
        .iter()
        .map(|a| a["account_id"].as_str().expect("account_id").to_string())
        .collect()
}

async fn list(consent: &str) -> Response {
    let hub = hub();
    hub.client_as(USER_A)
        .get(
            &accounts_path(SCRIPTED),
            Some(&hub.mint_for(USER_A, consent)),
        )
        .await
}

// ------------------------------------------------------------- a bank that ignores the header

#[tokio::test]
async fn a_bank_ignoring_x_hub_accounts_leaks_no_other_account() {
    let hub = hub();
    let consent = "c-authorised-restricted";
    let token = hub.token(consent);
    let allowed: Vec<String> = hub.consent(consent)["accounts"]
        .as_array()
        .expect("restricted accounts")
        .iter()
        .map(|a| a.as_str().expect("id").to_string())
        .collect();
    let every = hub.accounts_of(consent);
    let others: Vec<&String> = every.iter().filter(|a| !allowed.contains(a)).collect();
    assert!(
        !others.is_empty(),
        "the customer has accounts outside the consent"
    );
    let client = hub.client_as(USER_A);

    let iid = uuid::Uuid::new_v4().to_string();
    let r = client
        .send(
            &Req::get(accounts_path(BANK_1))
                .bearer(&token)
                .interaction_id(&iid),
        )
        .await;
    let v = r.ok_json();
    assert_eq!(ids(&v), allowed, "{v}");
    assert_eq!(v["meta"]["total"], allowed.len(), "{v}");
    for other in &others {
        assert!(!r.text().contains(other.as_str()), "{other} leaked: {v}");
    }
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(r
        .header("content-length")
        .is_none_or(|n| n == r.body.len().to_string()));
    // The bank was told, and answered with every account anyway.
    let seen = hub.bank(BANK_1).recent_requests();
    let asked = seen
        .iter()
        .rev()
        .find(|q| q.header("x-fapi-interaction-id") == Some(iid.as_str()))
        .expect("the bank saw the request");
    assert_eq!(
        asked.header("x-hub-accounts"),
        Some(allowed.join(",").as_str())
    );

    // Row 14 refuses the other accounts' own routes at the hub.
    for other in &others {
        client
            .get(&balances_path(BANK_1, other), Some(&token))
            .await
            .assert_problem(403, "account_not_in_consent");
    }
    client
        .get(&balances_path(BANK_1, &allowed[0]), Some(&token))
        .await
        .ok_json();

    // An unrestricted consent lists every account of its customer, as the bank sent it.
    let full = "c-authorised-full";
    let v = client
        .get(&accounts_path(BANK_1), Some(&hub.token(full)))
        .await
        .ok_json();
    assert_eq!(ids(&v), hub.accounts_of(full), "{v}");
}

// ------------------------------------------------------------------ the scripted provider

#[tokio::test]
async fn a_list_sent_in_pieces_is_held_and_filtered() {
    for consent in ["c-list-in-pieces", "c-list-sized"] {
        let r = list(consent).await;
        let v = r.ok_json();
        assert_eq!(
            v,
            json!({"data":[
                {"account_id":"KZ-A","iban":"KZ00A","currency":"KZT","type":"card","name":"A",
                 "opened":"2020-01-02","status":"enabled"},
                {"account_id":"KZ-B","iban":"KZ00B","currency":"EUR","type":"current","name":"B",
                 "opened":"2020-01-04","status":"enabled"}],
                "meta":{"total":2}}),
            "{consent}"
        );
        for other in ["KZ-X", "KZ-Y", "cursor", "c2"] {
            assert!(
                !r.text().contains(other),
                "{consent}: {other} in {}",
                r.text()
            );
        }
        assert_eq!(r.header("cache-control"), Some("no-store"), "{consent}");
    }
}

#[tokio::test]
async fn an_unrestricted_consent_streams_the_bank_answer_untouched() {
    let r = list("c-list-open").await;
    r.ok_json();
    assert_eq!(r.text(), FULL_LIST);
    assert_eq!(
        r.header("content-length"),
        Some(FULL_LIST.len().to_string().as_str())
    );
}

#[tokio::test]
async fn a_list_that_cannot_be_checked_is_provider_bad_response() {
    for consent in [
        "c-late-garbage",
        "c-entry-without-id",
        "c-oversized",
        "c-oversized-declared",
        "c-gzip",
        "c-empty",
    ] {
        let r = list(consent).await;
        r.assert_problem(502, "provider_bad_response");
        assert!(!r.text().contains("KZ-"), "{consent}: {}", r.text());
    }
    // Journalled off the request path: polled with a deadline.
    let journalled = poll_until(Duration::from_secs(10), || {
        let audit = hub().audit_text();
        let n = audit
            .lines()
            .filter(|l| l.contains("\"provider_bad_response\""))
            .count();
        (n >= 6).then_some(n)
    });
    assert!(journalled.is_some(), "every refusal is journalled");
}

#[tokio::test]
async fn an_error_answer_passes_as_the_bank_sent_it() {
    let r = list("c-bank-error").await;
    assert_eq!(r.status, 404, "{}", r.describe());
    assert_eq!(
        r.json(),
        json!({"error":"customer_not_found","message":"no such customer here"})
    );
}

#[tokio::test]
async fn http2_clients_get_the_same_filtered_list_and_the_same_refusal() {
    let hub = hub();
    let mut h2 = hub.client_as(USER_A).h2().await.expect("h2");
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let get = |consent: &str| {
        (
            accounts_path(SCRIPTED),
            format!("Bearer {}", hub.mint_for(USER_A, consent)),
        )
    };
    let (path, auth) = get("c-list-in-pieces");
    let r = h2
        .get(&path, &[("authorization", &auth)])
        .await
        .expect("answer");
    assert_eq!(ids(&r.ok_json()), ALLOWED);
    let (path, auth) = get("c-late-garbage");
    let r = h2
        .get(&path, &[("authorization", &auth)])
        .await
        .expect("answer");
    r.assert_problem(502, "provider_bad_response");
}
