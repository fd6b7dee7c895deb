//! The scenarios of the side-by-side runner and the systems they compare: what each
//! loads, which consents and tokens its virtual users hold, and what it measures.

use std::fmt;

use serde::Serialize;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// The hub, full policy.
    Hub,
    /// HAProxy 2.6 doing the equivalent policy job.
    Haproxy,
    /// nginx as a plain TLS reverse proxy, no policy.
    Nginx,
    /// The sandbox bank directly (the floor: no proxy).
    Bank,
}

impl System {
    /// Every system, in report order.
    pub const ALL: [System; 4] = [System::Hub, System::Haproxy, System::Nginx, System::Bank];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::Hub => "hub",
            System::Haproxy => "haproxy",
            System::Nginx => "nginx",
            System::Bank => "bank",
        }
    }

    /// Whether the system checks tokens and consents.
    pub fn has_policy(self) -> bool {
        matches!(self, System::Hub | System::Haproxy)
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// 1,000 consents, each virtual user reuses its token: the common case.
    HotTokens,
    /// A new token on every request: the JWT verification floor.
    ColdTokens,
    /// 1,000,000 consents loaded; virtual users spread over the whole store.
    BigCache,
    /// Open data: no token, no consent, per-IP limits.
    OpenData,
    /// One provider answers in 2 s; the other provider's latency must not move.
    SlowBank,
    /// Consents revoked during load; requests served after the revocation took
    /// effect must be zero.
    Revocation,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 6] = [
        Scenario::HotTokens,
        Scenario::ColdTokens,
        Scenario::BigCache,
        Scenario::OpenData,
        Scenario::SlowBank,
        Scenario::Revocation,
    ];

    /// Name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::HotTokens => "hot-tokens",
            Scenario::ColdTokens => "cold-tokens",
            Scenario::BigCache => "big-cache",
            Scenario::OpenData => "open-data",
            Scenario::SlowBank => "slow-bank",
            Scenario::Revocation => "revocation",
        }
    }

    /// What it measures, for the report.
    pub fn what(self) -> &'static str {
        match self {
            Scenario::HotTokens => "1,000 consents, one virtual user per consent, each reusing its token: `GET /v1/providers/{p}/accounts` through the full policy (the common case; the hub's verified-token cache is hot).",
            Scenario::ColdTokens => "Every request carries a token never seen before (pre-minted, single use): the cost of ES256 verification on every request. Only the systems that verify tokens run it (nginx and the bank do no token work: see hot-tokens).",
            Scenario::BigCache => "1,000,000 consents loaded (binary snapshot for the hub, map files for HAProxy); the virtual users' consents are spread evenly over the whole id space, tokens reused.",
            Scenario::OpenData => "`GET /v1/open-data/{p}/exchange-rates`: mTLS and participant checks, no token, no consent, per-IP rate limit.",
            Scenario::SlowBank => "Provider 990340000011 answers every request after 2 s (sandbox `Behaviour::Delay`); a small open-loop stream goes to it while the measured stream goes to provider 990340000022, whose latency must not move. Both are reported.",
            Scenario::Revocation => "During load, 10% of the consents are revoked at 1/4 of the window and another 10% at 1/2 (hub: the consent snapshot is rewritten atomically and the hub's file watcher reloads it; HAProxy: `set map` on its admin socket). Counted: requests sent after the revocation took effect that were still served (must be 0).",
        }
    }

    /// The systems that run it.
    pub fn systems(self) -> &'static [System] {
        match self {
            Scenario::ColdTokens | Scenario::Revocation => &[System::Hub, System::Haproxy],
            _ => &System::ALL,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
