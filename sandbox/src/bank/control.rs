//! The control listener of a sandbox bank (contract §9, `providers[].faults_url`): a TLS
//! port of its own, on which only the hub's client certificate completes the handshake
//! (the API listener's own verifier, pinned), serving one development route:
//!
//! | request | answer |
//! |---|---|
//! | `GET /faults` | `200 {"mode": "ok"}`: the mode in force |
//! | `POST /faults` `{"mode": "ok" \| "schema" \| "slow" \| "error" \| "down"}` | `200 {"mode": …}` once in force (for `down`: once the API port is closed; out of `down`: once it listens again) |
//!
//! A bad body answers `400`, a body over 1 KiB `413`, another path `404`, another method
//! `405`, a port that did not follow within 5 s `503`; all `application/problem+json`
//! (RFC 9457). The listener stays up in every mode, `down` included.

use super::faults::FaultMode;
use super::routes::Resp;
use super::{stopped, Shared, HANDSHAKE_TIMEOUT};
use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// The path of the control route (`faults_url` is `https://{addr}/faults`).
pub const FAULTS_PATH: &str = "/faults";

/// The control route of a bank whose control listener is at `addr`: the manifest's
/// `faults_url`.
pub fn faults_url(addr: SocketAddr) -> String {
    format!("https://{addr}{FAULTS_PATH}")
}

/// The largest control request body read.
const MAX_BODY: usize = 1024;

const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The body of `POST /faults`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Switch {
    mode: FaultMode,
}

/// Accepts control connections until the bank stops.
pub(crate) async fn control_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    conns.spawn(serve(tcp, acceptor.clone(), shared.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox bank: control accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // A client without the hub's certificate ends here, before any HTTP.
            tracing::debug!(error = %e, "sandbox bank: control TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let service = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(handle(&shared, req).await) }
        })
    };
    if let Err(e) = shared
        .http
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(error = %e, "sandbox bank: control connection ended with an error");
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Resp {
    if req.uri().path() != FAULTS_PATH {
        return problem(StatusCode::NOT_FOUND, "the only route is /faults");
    }
    match *req.method() {
        Method::GET => mode_answer(shared.faults.mode()),
        Method::POST => post(shared, req).await,
        _ => {
            let mut resp = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "/faults takes GET (the mode in force) and POST (switch the mode)",
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, POST"));
            resp
        }
    }
}

async fn post(shared: &Shared, req: Request<Incoming>) -> Resp {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body must be at most {MAX_BODY} bytes"),
            )
        }
    };
    let mode = match serde_json::from_slice::<Switch>(&body) {
        Ok(s) => s.mode,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the body must be {{\"mode\": \"ok\" | \"schema\" | \"slow\" | \"error\" | \"down\"}} ({e})"
                ),
            )
        }
    };
    let followed = shared.faults.switch(mode).await;
    tracing::info!(bank = %shared.name, %mode, followed, "sandbox bank: fault mode switched");
    if !followed {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "mode {mode} is set, but the API port has not followed yet; the bank keeps trying"
            ),
        );
    }
    mode_answer(mode)
}

fn mode_answer(mode: FaultMode) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(
        json!({ "mode": mode.as_str() }).to_string(),
    )));
    resp.headers_mut().insert(CONTENT_TYPE, JSON);
    resp
}

/// An RFC 9457 problem (`about:blank`: the title is the status's reason phrase).
fn problem(status: StatusCode, detail: &str) -> Resp {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, PROBLEM_JSON);
    resp
}
