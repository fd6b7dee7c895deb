//! The admin listener (plain HTTP, loopback by default): `/metrics`, `/healthz`,
//! `/readyz`, `POST /admin/reload` and `/openapi.json` (the API users' OpenAPI document,
//! `docs/openapi/hub.json`). Never exposes customer data or secrets.

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use crate::metrics::Metrics;
use crate::state::State;

/// The API users' OpenAPI 3.1 document (contract §2, §6, §7), built into the binary so that
/// what is served is what this build implements.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi/hub.json");

/// The admin application.
pub struct Admin {
    state: Arc<State>,
    /// One scrape at a time refreshes and renders (a family rebuilt at scrape is never
    /// rendered half-built by another).
    scrape: Mutex<()>,
}

impl Admin {
    /// Wraps the shared state.
    pub fn new(state: Arc<State>) -> Admin {
        Admin {
            state,
            scrape: Mutex::new(()),
        }
    }

    /// Refreshes the gauges computed at scrape and renders every family.
    pub(crate) fn scrape(&self) -> Vec<u8> {
        let _one = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh_gauges();
        self.state.metrics.render()
    }

    fn refresh_gauges(&self) {
        let m = &self.state.metrics;
        let snap = self.state.snapshot();
        {
            let store = snap.consents();
            m.consents.set(store.len() as i64);
            m.consent_version.set(store.version() as i64);
        }
        if let Some(plane) = snap.trust() {
            let s = &plane.status;
            m.feed_version.set(s.version() as i64);
            m.feed_staleness.set(s.staleness().as_secs_f64());
            Metrics::sync_counter(&m.feed_resyncs, s.resyncs());
            Metrics::sync_counter(&m.feed_reconnects, s.reconnects());
            Metrics::sync_counter(&m.trust_endpoint_switches, s.endpoint_switches());
            Metrics::sync_counter(&m.participant_changes, s.participant_changes());
        }
        let (hits, misses) = self.state.token_cache_totals();
        Metrics::sync_counter(&m.token_cache.with_label_values(&["hit"]), hits);
        Metrics::sync_counter(&m.token_cache.with_label_values(&["miss"]), misses);
        let net = snap.network();
        m.participants_refused.set(net.refused as i64);
        let ejected: usize = net
            .upstreams
            .iter()
            .map(|u| (0..u.targets.len()).filter(|&i| u.is_ejected(i)).count())
            .sum();
        m.ejected.set(ejected as i64);
        // Rebuilt: a provider no longer configured loses its series.
        m.provider_timeout.reset();
        for u in net.upstreams.iter() {
            m.provider_timeout
                .with_label_values(&[u.bin.to_string()])
                .set(u.timeout.as_secs_f64());
        }
    }
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    let len = r.body().len();
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method, path.as_str()) {
            (Method::GET, "/metrics") => {
                reply(StatusCode::OK, "text/plain; version=0.0.4", self.scrape())
            }
            (Method::GET, "/healthz") => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            (Method::GET, "/readyz") => {
                if self.state.ready.load(Ordering::Relaxed) {
                    json(
                        StatusCode::OK,
                        serde_json::json!({"status": "ready", "generation": self.state.generation()}),
                    )
                } else {
                    let waiting = if self.state.awaits_control_plane() {
                        "the first snapshot of the control plane"
                    } else {
                        "the listener"
                    };
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({"status": "starting", "waiting": waiting}),
                    )
                }
            }
            (Method::GET, "/openapi.json") => reply(
                StatusCode::OK,
                "application/json",
                OPENAPI_JSON.as_bytes().to_vec(),
            ),
            (Method::POST, "/admin/reload") => match self.state.reload().await {
                Ok(r) => json(
                    StatusCode::OK,
                    serde_json::json!({"status": "ok", "summary": format!("generation {}: {}", r.generation, r.summary)}),
                ),
                Err(error) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({"status": "refused", "error": error.to_string()}),
                ),
            },
            (_, "/metrics" | "/healthz" | "/readyz" | "/admin/reload" | "/openapi.json") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"status": "method_not_allowed"}),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"status": "not_found"}),
            ),
        }
    }
}
