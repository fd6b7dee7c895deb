//! Per-request state: what every answer has (timing, interaction id, route, body count)
//! and the request's [`Outcome`], a typed value: still pending, admitted with what the
//! upstream phases need, or refused with its code and what the hub had identified.

use pingora::prelude::*;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use consent_cache::{Bin, Consent};
use policy::code::Code;
use policy::limits::{Limited, RateInfo};
use policy::route::RouteId;
use policy::token::VerifiedToken;

use super::accounts::ListFilter;
use super::rescue::is_upstream_failure;
use crate::audit::AuditRecord;
use crate::live::{Sampling, Tap};
use crate::network::Network;
use crate::upstream::Upstream;
use feed_wire::rollup::Outcome as RollupOutcome;
use feed_wire::ProviderApi;

/// Per-request state.
pub(crate) struct Ctx {
    /// When `request_filter` started (latency).
    pub(super) start: Instant,
    /// When the request arrived (the journal's time).
    pub(super) arrived: SystemTime,
    /// The interaction id (echoed or made), sent both ways and journalled.
    pub(super) iid: [u8; 36],
    /// The matched route, once row 1 passed.
    pub(super) route: Option<RouteId>,
    /// Request body bytes proxied so far.
    pub(super) body_bytes: usize,
    /// What the hub decided.
    pub(super) outcome: Outcome,
    /// The account list being filtered, for a consent restricted to some accounts.
    pub(super) list: Option<Box<ListFilter>>,
    /// The tap on the provider's successful answer (transactions, or sampled).
    pub(super) tap: Option<Box<Tap>>,
}

/// What the hub decided about a request.
pub(crate) enum Outcome {
    /// Nothing yet (or never: an error before `request_filter` decided).
    Pending,
    /// Allowed through rows 1–16: proxied to the provider.
    Admitted(Admitted),
    /// Answered by the hub with a problem.
    Refused(Refused),
}

/// An admitted request: what the upstream phases, the journal and the metrics need.
pub(crate) struct Admitted {
    /// The directory and upstream pools the decision used; the request is routed with
    /// them whatever the trust feed publishes meanwhile.
    pub(super) net: Arc<Network>,
    /// The calling participant.
    pub(super) api_user: Bin,
    /// The provider routed to.
    pub(super) provider: Bin,
    /// Its index in `net.upstreams`.
    pub(super) provider_index: usize,
    /// The verified token (`None` on open data).
    pub(super) token: Option<Arc<VerifiedToken>>,
    /// The consent (`None` on open data).
    pub(super) consent: Option<Consent>,
    /// What the rate limits advertise (set by row 16, before the request is admitted).
    pub(super) rate: Option<RateInfo>,
    /// The provider API called (the schema its answers are held to).
    pub(super) api: ProviderApi,
    /// The live checks' settings when the request arrived.
    pub(super) sampling: Sampling,
    /// The provider-side path and query (before a base URL's prefix).
    pub(super) upstream_path: String,
    /// The request body limit in force when the request arrived.
    pub(super) max_body_bytes: usize,
    /// The body was read and dropped before going upstream (its framing must not travel).
    pub(super) body_discarded: bool,
    /// The call to the provider.
    pub(super) call: UpstreamCall,
    /// Proxying failed after admission (rows 17–19, a body over the limit): the code
    /// the hub answered instead of the provider.
    pub(super) failed: Option<Code>,
    /// A consent route's place in the audit journal, held until its record takes it.
    pub(super) journal: Option<crate::audit::Slot>,
}

/// The call of an admitted request to its provider.
#[derive(Debug, Default)]
pub(crate) struct UpstreamCall {
    /// The base URL chosen (index into the provider's targets).
    pub(super) target: Option<usize>,
    /// When the peer was chosen.
    pub(super) start: Option<Instant>,
    /// The provider's status (0 when it did not answer).
    pub(super) status: u16,
    /// Time to the provider's response header, in microseconds (0 when it did not answer).
    pub(super) micros: u64,
    /// The bank's time: to the last byte of its answer, or to the failure that ended the
    /// call, in microseconds (`None` until then).
    pub(super) bank_us: Option<u64>,
}

impl UpstreamCall {
    /// The call ended (last byte received, or failed): the bank's time stops here, once.
    pub(super) fn ended(&mut self) {
        if self.bank_us.is_none() {
            self.bank_us = self.start.map(|t0| t0.elapsed().as_micros() as u64);
        }
    }

    /// The bank's time as journalled: to the last byte or failure, else to the answer's
    /// head (an answer whose end was not seen), else 0 (never called).
    fn bank_us(&self) -> u64 {
        self.bank_us.unwrap_or(self.micros)
    }
}

/// A request the hub answered itself: its code, and what the rows passed before the
/// refusal had identified (for the journal and metrics).
#[derive(Debug)]
pub(crate) struct Refused {
    /// The contract code answered.
    pub(super) code: Code,
    /// The participant, if its certificate is registered.
    pub(super) api_user: Option<Bin>,
    /// A registered provider named by the path (never a raw path value).
    pub(super) provider: Option<Bin>,
    /// The token, if it had passed verification.
    pub(super) token: Option<Arc<VerifiedToken>>,
    /// The limit that refused a `429`.
    pub(super) limited: Option<Limited>,
    /// Which rule failed, for the problem's `detail` (none: said by `limited`, or the
    /// code's own).
    pub(super) detail: Option<Cow<'static, str>>,
}

impl Refused {
    /// A refusal before anyone was identified.
    pub(super) fn anonymous(code: Code) -> Refused {
        Refused {
            code,
            api_user: None,
            provider: None,
            token: None,
            limited: None,
            detail: None,
        }
    }

    /// A refusal before anyone was identified, by the rule `detail` says.
    pub(super) fn because(code: Code, detail: &'static str) -> Refused {
        Refused {
            detail: Some(Cow::Borrowed(detail)),
            ..Refused::anonymous(code)
        }
    }
}

impl Admitted {
    /// Refuses an admitted request (its body could not be read within the limits),
    /// keeping who was identified.
    pub(super) fn refuse(self, code: Code) -> Refused {
        Refused {
            code,
            api_user: Some(self.api_user),
            provider: Some(self.provider),
            token: self.token,
            limited: None,
            detail: None,
        }
    }

    /// The provider's upstream pool.
    pub(super) fn upstream(&self) -> Result<&Upstream> {
        upstream_of(&self.net, self.provider_index)
    }

    /// Records the outcome of the call to the chosen base URL (passive health checking);
    /// after a failure, returns whether another base URL of the provider is in rotation.
    pub(super) fn report_upstream(&self, ok: bool) -> bool {
        let Some(idx) = self.call.target else {
            return false;
        };
        self.net
            .upstreams
            .get(self.provider_index)
            .is_some_and(|up| {
                up.report(idx, ok);
                up.has_alternative(idx)
            })
    }
}

/// Provider `index`'s upstream pool in `net`.
pub(super) fn upstream_of(net: &Network, index: usize) -> Result<&Upstream> {
    net.upstreams
        .get(index)
        .map(|up| &**up)
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream"))
}

impl Outcome {
    /// The admitted request, for the upstream phases (which pingora only runs for one).
    pub(super) fn admitted(&self) -> Result<&Admitted> {
        match self {
            Outcome::Admitted(a) => Ok(a),
            _ => Error::e_explain(ErrorType::InternalError, "request not admitted"),
        }
    }

    /// The admitted request, mutably.
    pub(super) fn admitted_mut(&mut self) -> Result<&mut Admitted> {
        match self {
            Outcome::Admitted(a) => Ok(a),
            _ => Error::e_explain(ErrorType::InternalError, "request not admitted"),
        }
    }
}

impl Ctx {
    /// A request just read.
    pub(super) fn new() -> Ctx {
        Ctx {
            start: Instant::now(),
            arrived: SystemTime::now(),
            iid: [b'0'; 36],
            route: None,
            body_bytes: 0,
            outcome: Outcome::Pending,
            list: None,
            tap: None,
        }
    }

    /// The code of the hub's own answer, if it gave one (`None`: the provider's answer
    /// went through, or nothing could be answered).
    pub(super) fn answered(&self) -> Option<Code> {
        match &self.outcome {
            Outcome::Pending => None,
            Outcome::Admitted(a) => a.failed,
            Outcome::Refused(r) => Some(r.code),
        }
    }

    /// The limit that refused the request, for a `429`'s headers.
    pub(super) fn limited(&self) -> Option<&Limited> {
        match &self.outcome {
            Outcome::Refused(r) => r.limited.as_ref(),
            _ => None,
        }
    }

    /// Proxying failed with `code` (which the hub then answers): a provider failure counts
    /// against the base URL called.
    pub(super) fn fail(&mut self, code: Code) {
        match &mut self.outcome {
            Outcome::Admitted(a) => {
                if is_upstream_failure(code) {
                    a.report_upstream(false);
                }
                a.call.ended();
                a.failed = Some(code);
            }
            Outcome::Refused(r) => r.code = code,
            Outcome::Pending => self.outcome = Outcome::Refused(Refused::anonymous(code)),
        }
    }

    /// How the request ended, as the rollups count it: refused by the hub (rows 1–16, or
    /// a failure of the hub's own after admission, or a client gone before the provider
    /// answered), else by the provider's side — its failure (rows 17–19: a timeout, an
    /// unreachable provider, an answer that is not HTTP) or its status class. Row 15's
    /// `provider_unavailable` (unpublished, inactive) is thus `refused`, row 18's (the hub
    /// tried the provider) `unreachable`.
    pub(super) fn rollup_outcome(&self) -> RollupOutcome {
        let Outcome::Admitted(a) = &self.outcome else {
            return RollupOutcome::Refused;
        };
        match a.failed {
            Some(Code::ProviderTimeout) => RollupOutcome::Timeout,
            Some(Code::ProviderUnavailable) => RollupOutcome::Unreachable,
            Some(Code::ProviderBadResponse) => RollupOutcome::BadResponse,
            Some(_) => RollupOutcome::Refused,
            None => match a.call.status {
                100..=399 => RollupOutcome::Success,
                400..=499 => RollupOutcome::ClientError,
                500..=599 => RollupOutcome::ServerError,
                // No answer and no failure: the API user went away first.
                _ => RollupOutcome::Refused,
            },
        }
    }

    /// The journal's record of the request; `written` is the status of the response head
    /// sent, if any. Moves the token out (the request is over).
    pub(super) fn audit_record(&mut self, written: Option<u16>, elapsed: Duration) -> AuditRecord {
        let answered = self.answered();
        let outcome = self.rollup_outcome();
        let (api_user, provider, token, call) = match &mut self.outcome {
            Outcome::Pending => (None, None, None, None),
            Outcome::Admitted(a) => (
                Some(a.api_user),
                Some(a.provider),
                a.token.take(),
                Some(&a.call),
            ),
            Outcome::Refused(r) => (r.api_user, r.provider, r.token.take(), None),
        };
        AuditRecord {
            time: self.arrived,
            interaction_id: self.iid,
            api_user,
            provider,
            token,
            route: self.route.map_or("-", RouteId::template),
            code: answered.map_or("ok", Code::as_str),
            status: answered.map(Code::status).or(written).unwrap_or(0),
            upstream_status: call.map_or(0, |c| c.status),
            latency_us: elapsed.as_micros() as u64,
            upstream_latency_us: call.map_or(0, |c| c.micros),
            outcome,
            bank_us: call.map_or(0, UpstreamCall::bank_us),
            // Only a successful answer seen to its end is counted or checked.
            tap: self
                .tap
                .take()
                .filter(|t| t.ended() && outcome == RollupOutcome::Success),
        }
    }
}
