//! The Pingora `ProxyHttp` implementation: the request pipeline, one phase at a time. Each
//! phase is a thin adapter: the decision is `evaluate`'s (over `policy`), header policy is
//! `headers`', every answer the hub gives itself is written by `problem`, proxy errors
//! become contract codes in `rescue`, and per-request state is `ctx`'s typed outcome.

mod accounts;
mod ctx;
mod evaluate;
mod headers;
mod problem;
mod rescue;
#[cfg(test)]
mod tests;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use consent_cache::Bin;
use policy::code::Code;
use policy::route::RouteId;

use crate::audit::AuditRecord;
use crate::state::State;
pub(crate) use ctx::Ctx;
use ctx::{upstream_of, Outcome};
use evaluate::admission;
use headers::{iid_str, interaction_id, X_FAPI_INTERACTION_ID};
use problem::{problem, write_problem};
use rescue::{client_gone, failure_code, malformed_code};

/// The journal's and the metrics' code of a request whose client went away unanswered
/// (not a contract code: nothing was answered).
const CLIENT_GONE: &str = "client_gone";

/// The proxy.
pub(crate) struct Hub {
    state: Arc<State>,
}

impl Hub {
    /// Wraps the shared state.
    pub(crate) fn new(state: Arc<State>) -> Hub {
        Hub { state }
    }

    /// Counts a finished request (`hub_requests_total`, latencies) from its journal record.
    fn count(&self, record: &AuditRecord, elapsed: Duration) {
        let m = &self.state.metrics;
        let provider_digits = record.provider.map(Bin::digits);
        let provider = provider_digits
            .as_ref()
            .and_then(|d| std::str::from_utf8(d).ok())
            .unwrap_or("-");
        m.requests
            .with_label_values(&[record.route, record.code, provider])
            .inc();
        m.latency
            .with_label_values(&[record.route])
            .observe(elapsed.as_secs_f64());
        if record.upstream_latency_us > 0 {
            m.upstream_latency
                .with_label_values(&[provider])
                .observe(record.upstream_latency_us as f64 / 1e6);
        }
    }
}

#[async_trait]
impl ProxyHttp for Hub {
    type CTX = Ctx;

    /// No downstream modules: pingora's default adds a (disabled) response compression
    /// module, which still costs a context and filter calls on every request. The hub
    /// passes the bank's answer through as it is.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx::new()
    }

    /// Decides (rows 1–16) and stores the outcome; a refusal is answered here.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.start = Instant::now();
        ctx.arrived = SystemTime::now();
        let given = session
            .req_header()
            .headers
            .get(X_FAPI_INTERACTION_ID.name());
        ctx.iid = interaction_id(given);
        // In-flight requests keep the snapshot they started with, whatever reloads do.
        let snap = self.state.snapshot();
        ctx.outcome = admission(session, &snap, &self.state.metrics, &mut ctx.route).await;
        let Outcome::Refused(refused) = &ctx.outcome else {
            return Ok(false);
        };
        let detail = refused.detail.as_deref();
        write_problem(
            session,
            refused.code,
            &ctx.iid,
            refused.limited.as_ref(),
            detail,
        )
        .await?;
        Ok(true)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (Some(b), Outcome::Admitted(a)) = (body.as_ref(), &ctx.outcome) {
            ctx.body_bytes += b.len();
            if ctx.body_bytes > a.max_body_bytes {
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over the limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let a = ctx.outcome.admitted_mut()?;
        let up = upstream_of(&a.net, a.provider_index)?;
        let idx = up.pick();
        a.call.target = Some(idx);
        a.call.start = Some(Instant::now());
        Ok(up.peer(idx, up.timeout))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        let m = &self.state.metrics;
        if reused {
            m.upstream_reused.inc();
        } else {
            m.upstream_new.inc();
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Another base URL may serve: a connect failure sent nothing, so retrying is safe.
        if let Outcome::Admitted(a) = &ctx.outcome {
            if a.report_upstream(false) {
                e.set_retry(true);
            }
        }
        e
    }

    /// Rebuilds the request for the chosen base URL from the allow-listed client headers,
    /// then adds the hub's own.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let a = ctx.outcome.admitted()?;
        let up = a.upstream()?;
        let target = up
            .targets
            .get(a.call.target.unwrap_or(0))
            .or_else(|| up.targets.last())
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no base URL"))?;
        let client = session.req_header();
        headers::rebuild_upstream(upstream, client, target, &a.upstream_path, a.body_discarded)?;
        headers::forward_identity(upstream, &ctx.iid, a)
    }

    /// Records the provider's answer and passes only allow-listed headers on; the account
    /// list of a consent restricted to some accounts is set up to be filtered.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let a = ctx.outcome.admitted_mut()?;
        a.call.status = upstream.status.as_u16();
        if let Some(t0) = a.call.start {
            a.call.micros = t0.elapsed().as_micros() as u64;
        }
        a.report_upstream(true);
        if upstream.status.is_success() {
            // Allocates only for a tapped answer (transactions, or sampled).
            ctx.tap = a.sampling.tap(a.api, || headers::is_encoded(upstream));
        }
        headers::filter_downstream(upstream, &ctx.iid, a.consent.is_some(), a.rate.as_ref())?;
        ctx.list = accounts::list_filter(session, upstream, ctx.route, a.consent.as_ref())?;
        Ok(())
    }

    /// Notes when the provider's answer ended: the bank's time runs to its last byte. A
    /// tapped answer's chunks are kept by reference as they pass (the answer is not
    /// altered, delayed or buffered).
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(tap) = ctx.tap.as_mut() {
            tap.take(body.as_ref(), end_of_stream);
        }
        if end_of_stream {
            if let Outcome::Admitted(a) = &mut ctx.outcome {
                a.call.ended();
            }
        }
        Ok(None)
    }

    /// Filters a restricted consent's account list (contract §3); every other answer
    /// streams through untouched.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if let Some(list) = ctx.list.as_mut() {
            list.take(body, end_of_stream)?;
        }
        Ok(None)
    }

    /// Answers a failure to proxy with the rescue table's code, if the client is still there.
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if client_gone(e) {
            self.state.metrics.client_gone.inc();
        }
        let code = failure_code(e);
        if let Some(code) = code {
            ctx.fail(code);
            if let Ok((head, body)) = problem(code, &ctx.iid, ctx.limited(), None) {
                let _ = session
                    .as_downstream_mut()
                    .write_error_response(head, body)
                    .await;
            }
        }
        FailToProxy {
            error_code: code.map_or(0, Code::status),
            can_reuse_downstream: false,
        }
    }

    /// A client that went away mid-request is logged at debug, not as pingora's ERROR
    /// line ("Fail to proxy: Downstream ReadError …"): load balancers and load generators
    /// drop keep-alive connections routinely, and ERROR is for what an operator must look
    /// at. Such requests are counted (`hub_client_gone_total`, in `fail_to_proxy`) and
    /// keep their audit record.
    fn suppress_error_log(&self, _session: &Session, ctx: &Ctx, e: &Error) -> bool {
        if client_gone(e) {
            tracing::debug!(
                route = ctx.route.map_or("-", RouteId::template),
                interaction_id = iid_str(&ctx.iid),
                error = %e,
                "client went away mid-request"
            );
            return true;
        }
        false
    }

    /// Answers, counts and journals a request pingora could not read (no other phase runs).
    fn malformed_request_response(&self, e: &Error) -> Option<(ResponseHeader, Bytes)> {
        let code = malformed_code(e);
        let iid = interaction_id(None);
        let answer = problem(code, &iid, None, None).ok()?;
        self.state
            .metrics
            .requests
            .with_label_values(&["-", code.as_str(), "-"])
            .inc();
        self.state.audit(AuditRecord {
            time: SystemTime::now(),
            interaction_id: iid,
            api_user: None,
            provider: None,
            token: None,
            route: "-",
            code: code.as_str(),
            status: code.status(),
            upstream_status: 0,
            latency_us: 0,
            upstream_latency_us: 0,
            outcome: feed_wire::rollup::Outcome::Refused,
            bank_us: 0,
            tap: None,
        });
        Some(answer)
    }

    /// What pingora's own error log says about a request: the route template and the
    /// interaction id, never the path (it carries account ids) or headers.
    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        format!(
            "{} {} interaction_id={}",
            session.req_header().method,
            ctx.route.map_or("-", RouteId::template),
            iid_str(&ctx.iid)
        )
    }

    /// Journals and counts every request that reached the phases, whatever its answer;
    /// an admitted consent route's record takes the place it reserved in the journal. A
    /// client that went away before any answer is marked `client_gone` (status 0).
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let written = session
            .as_downstream()
            .response_written()
            .map(|r| r.status.as_u16());
        let elapsed = ctx.start.elapsed();
        let slot = match &mut ctx.outcome {
            Outcome::Admitted(a) => a.journal.take(),
            Outcome::Pending | Outcome::Refused(_) => None,
        };
        let mut record = ctx.audit_record(written, elapsed);
        if written.is_none() && e.is_some_and(client_gone) {
            record.code = CLIENT_GONE;
            record.status = 0;
        }
        self.count(&record, elapsed);
        self.state.audit_reserved(record, slot);
    }
}
