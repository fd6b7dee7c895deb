//! Statements: one per participant and role for a calendar month. An API user's lists
//! what it called (per provider × route × class × tariff version: calls, free calls,
//! transaction lines, prices, amount) and what it owes; a provider's lists what it served
//! (per API user), its failures and what it is owed. Each line's amount is rounded once
//! to tiyn (half away from zero) and totals are sums of the printed lines, so a statement
//! adds up as printed and both sides of a call see the same amount.
//!
//! Immutable once issued: [`Statement::digest`] is the SHA-256 of its canonical JSON (the
//! struct's fields in declaration order, lines sorted, money as strings with two
//! decimals, no maps), so the issuer can show that a statement is the one it issued;
//! corrections are separate [`Adjustment`]s.

use std::fmt::Write as _;

use consent_cache::Bin;
use jiff::civil::Date;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::class::CallClass;
use crate::money::{round, CURRENCY};
use crate::BillingError;

/// Which side of the calls a statement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The caller: what it owes.
    ApiUser,
    /// The bank that served the calls: what it is owed.
    Provider,
}

impl Role {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::ApiUser => "api_user",
            Role::Provider => "provider",
        }
    }
}

/// One participant's statement for one month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// `2026-03/api_user/100140000001`: unique per month, role and participant.
    pub id: String,
    /// The participant's BIN.
    pub participant: Bin,
    /// Its role.
    pub role: Role,
    /// `YYYY-MM`.
    pub month: String,
    /// The month's first local day.
    pub from: Date,
    /// The month's last local day.
    pub to: Date,
    /// The time zone of the days.
    pub time_zone: String,
    /// Always `KZT`.
    pub currency: String,
    /// The lines, by counterparty, route, class and tariff version.
    pub lines: Vec<StatementLine>,
    /// Monthly caps that took something off.
    pub caps: Vec<CapLine>,
    /// The sums.
    pub totals: Totals,
}

/// Calls of one counterparty × route × class under one tariff version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementLine {
    /// The provider called (API user's statement) or the API user served (provider's);
    /// `None` when not identified.
    pub counterparty: Option<Bin>,
    /// The route (`GET /v1/…` template, or `-`).
    pub route: String,
    /// The call class.
    pub class: CallClass,
    /// The first day of the tariff version that priced these calls.
    pub tariff_from: Date,
    /// Calls.
    pub calls: u64,
    /// Of those, free under the per-customer daily threshold.
    pub free_calls: u64,
    /// Transaction lines returned.
    pub lines: u64,
    /// Price per call.
    pub unit_price: Decimal,
    /// Price per 100 transaction lines (0 unless priced).
    pub per_100_lines: Decimal,
    /// (calls − free) × unit price + lines × per-100 price ÷ 100, rounded to tiyn.
    pub amount: Decimal,
}

impl StatementLine {
    /// The line's cells, from the counterparty to the amount, with `route` as given.
    fn cells(&self, route: &str) -> [String; 10] {
        [
            bin_or_dash(self.counterparty),
            route.to_string(),
            self.class.as_str().into(),
            self.tariff_from.to_string(),
            self.calls.to_string(),
            self.free_calls.to_string(),
            self.lines.to_string(),
            self.unit_price.to_string(),
            self.per_100_lines.to_string(),
            self.amount.to_string(),
        ]
    }
}

/// A monthly cap that applied to one API user × provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapLine {
    /// The provider (API user's statement) or API user (provider's).
    pub counterparty: Bin,
    /// The cap.
    pub cap: Decimal,
    /// The sum of the pair's lines before the cap.
    pub charged: Decimal,
    /// What the cap took off (`charged − cap`).
    pub reduction: Decimal,
}

/// A statement's sums.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    /// Calls.
    pub calls: u64,
    /// Free calls under the threshold.
    pub free_calls: u64,
    /// Chargeable calls.
    pub chargeable: u64,
    /// Calls failed by the provider.
    pub provider_failed: u64,
    /// Calls refused by the hub.
    pub refused: u64,
    /// Transaction lines.
    pub lines: u64,
    /// Sum of the lines' amounts.
    pub gross: Decimal,
    /// Sum of the caps' reductions.
    pub cap_reduction: Decimal,
    /// `gross − cap_reduction`: owed by an API user, or to a provider.
    pub amount: Decimal,
}

impl Totals {
    /// The sums, checked: an overflow is an error, never a panic or a wrapped count.
    fn of(lines: &[StatementLine], caps: &[CapLine]) -> Result<Totals, BillingError> {
        let count = |pick: &dyn Fn(&StatementLine) -> Option<u64>| {
            lines
                .iter()
                .filter_map(pick)
                .fold(0u64, u64::saturating_add)
        };
        let calls_of = |c: CallClass| count(&|l| (l.class == c).then_some(l.calls));
        let gross = checked_sum(lines.iter().map(|l| l.amount), "a statement's gross")?;
        let cap_reduction = checked_sum(caps.iter().map(|c| c.reduction), "a statement's caps")?;
        let amount = gross
            .checked_sub(cap_reduction)
            .ok_or(BillingError::Overflow {
                what: "a statement's amount",
            })?;
        Ok(Totals {
            calls: count(&|l| Some(l.calls)),
            free_calls: count(&|l| Some(l.free_calls)),
            chargeable: calls_of(CallClass::Chargeable),
            provider_failed: calls_of(CallClass::ProviderFailed),
            refused: calls_of(CallClass::Refused),
            lines: count(&|l| Some(l.lines)),
            gross: round(gross),
            cap_reduction: round(cap_reduction),
            amount: round(amount),
        })
    }
}

/// The sum of `amounts`, or an overflow error naming `what`.
fn checked_sum(
    mut amounts: impl Iterator<Item = Decimal>,
    what: &'static str,
) -> Result<Decimal, BillingError> {
    amounts
        .try_fold(Decimal::ZERO, |sum, a| sum.checked_add(a))
        .ok_or(BillingError::Overflow { what })
}

impl Statement {
    /// A statement of `lines` and `caps`, with its id and totals (an error when the
    /// totals overflow).
    pub fn new(
        participant: Bin,
        role: Role,
        (year, month): (i16, i8),
        (from, to): (Date, Date),
        time_zone: &str,
        lines: Vec<StatementLine>,
        caps: Vec<CapLine>,
    ) -> Result<Statement, BillingError> {
        let month = format!("{year:04}-{month:02}");
        Ok(Statement {
            id: format!("{month}/{}/{participant}", role.as_str()),
            participant,
            role,
            month,
            from,
            to,
            time_zone: time_zone.to_string(),
            currency: CURRENCY.to_string(),
            totals: Totals::of(&lines, &caps)?,
            lines,
            caps,
        })
    }

    /// The canonical JSON (what the digest covers).
    pub fn canonical_json(&self) -> Vec<u8> {
        // Plain structs, strings and integers: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// SHA-256 of the canonical JSON, lowercase hex.
    pub fn digest(&self) -> String {
        sha256_hex(&self.canonical_json())
    }

    /// One CSV row per line, then the caps and the total (RFC 4180, with a header).
    pub fn to_csv(&self) -> String {
        const HEADER: [&str; 12] = [
            "statement",
            "kind",
            "counterparty",
            "route",
            "class",
            "tariff_from",
            "calls",
            "free_calls",
            "lines",
            "unit_price",
            "per_100_lines",
            "amount",
        ];
        let row = |kind: &str, cells: [String; 10]| {
            let mut r = vec![self.id.clone(), kind.to_string()];
            r.extend(cells);
            r
        };
        let mut rows = vec![HEADER.map(str::to_string).to_vec()];
        rows.extend(self.lines.iter().map(|l| row("line", l.cells(&l.route))));
        for c in &self.caps {
            let mut cells: [String; 10] = Default::default();
            cells[0] = c.counterparty.to_string();
            cells[8] = c.cap.to_string();
            cells[9] = (-c.reduction).to_string();
            rows.push(row("cap", cells));
        }
        let t = &self.totals;
        let mut cells: [String; 10] = Default::default();
        cells[4] = t.calls.to_string();
        cells[5] = t.free_calls.to_string();
        cells[6] = t.lines.to_string();
        cells[9] = t.amount.to_string();
        rows.push(row("total", cells));
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in rows {
            // Writing into a Vec does not fail.
            let _ = w.write_record(&r);
        }
        let bytes = w.into_inner().unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    /// A plain-text statement to read and print: a header, an aligned table of the lines,
    /// the caps and the totals.
    pub fn to_text(&self) -> String {
        let (who, other, due) = match self.role {
            Role::ApiUser => ("API user", "provider", "Amount due"),
            Role::Provider => ("Provider", "API user", "Amount owed to the provider"),
        };
        let mut out = String::new();
        let _ = writeln!(out, "Open API exchange hub - usage statement {}", self.id);
        let _ = writeln!(out, "{who}: {}", self.participant);
        let _ = writeln!(
            out,
            "Period: {} to {} ({})",
            self.from, self.to, self.time_zone
        );
        let _ = writeln!(out, "Currency: {}", self.currency);
        let _ = writeln!(out);
        let header = [
            other, "route", "class", "tariff", "calls", "free", "lines", "price", "per 100",
            "amount",
        ]
        .map(str::to_string);
        let mut rows = vec![header];
        rows.extend(self.lines.iter().map(|l| l.cells(short_route(&l.route))));
        table(&mut out, &rows);
        for c in &self.caps {
            let _ = writeln!(
                out,
                "Monthly cap with {}: {} charged, capped at {}: -{}",
                c.counterparty, c.charged, c.cap, c.reduction
            );
        }
        let t = &self.totals;
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Calls: {} (chargeable {}, free under threshold {}, refused {}, provider failed {}); transaction lines: {}",
            t.calls, t.chargeable, t.free_calls, t.refused, t.provider_failed, t.lines
        );
        let _ = writeln!(out, "Gross: {} {}", t.gross, self.currency);
        let _ = writeln!(out, "Cap reductions: {} {}", t.cap_reduction, self.currency);
        let _ = writeln!(out, "{due}: {} {}", t.amount, self.currency);
        let _ = writeln!(out, "Digest (SHA-256): {}", self.digest());
        out
    }
}

/// Writes `rows` as columns: text left-aligned, numbers (the last six) right-aligned.
fn table(out: &mut String, rows: &[[String; 10]]) {
    let mut width = [0usize; 10];
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in rows {
        let mut line = String::new();
        for (i, (cell, w)) in r.iter().zip(width).enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            if i < 4 {
                let _ = write!(line, "{sep}{cell:<w$}");
            } else {
                let _ = write!(line, "{sep}{cell:>w$}");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// The route without its method and common prefix, to keep the printed table narrow.
fn short_route(route: &str) -> &str {
    route.strip_prefix("GET /v1/").unwrap_or(route)
}

fn bin_or_dash(b: Option<Bin>) -> String {
    b.map_or_else(|| "-".to_string(), |b| b.to_string())
}

/// SHA-256 of `bytes`, in lower-case hex: a statement's digest, and what else is bound to
/// exact bytes beside statements (an adjustment request's fingerprint).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A correction of an issued statement: a signed amount with its reason and author,
/// bound to the statement by its id and digest (the statement itself never changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjustment {
    /// The statement's id.
    pub statement: String,
    /// The statement's digest when the adjustment was made.
    pub digest: String,
    /// Added to the statement's amount (negative: a credit).
    pub amount: Decimal,
    /// Why.
    pub reason: String,
    /// Who made it (an operator's name or certificate subject).
    pub by: String,
}

impl Adjustment {
    /// An adjustment of `statement`; refused when the amount is zero or has more than
    /// two decimals, or the reason or author is empty.
    pub fn new(
        statement: &Statement,
        amount: Decimal,
        reason: &str,
        by: &str,
    ) -> Result<Adjustment, BillingError> {
        if amount.is_zero() {
            return Err(BillingError::Adjustment("the amount is zero"));
        }
        if amount.normalize().scale() > crate::money::DECIMALS {
            return Err(BillingError::Adjustment("at most two decimals (tiyn)"));
        }
        if reason.trim().is_empty() || by.trim().is_empty() {
            return Err(BillingError::Adjustment(
                "a reason and an author are required",
            ));
        }
        Ok(Adjustment {
            statement: statement.id.clone(),
            digest: statement.digest(),
            amount: round(amount),
            reason: reason.trim().to_string(),
            by: by.trim().to_string(),
        })
    }
}
