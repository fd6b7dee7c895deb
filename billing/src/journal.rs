//! Usage recomputed from the gateways' audit journals (JSON lines, written by the
//! gateway's `audit::writer`): every request record counted in the minute the gateway's
//! rollups counted it (its `rollup_minute` when the request outlasted its minute's
//! closing, else the minute of its `time`), on the local day of that minute in the
//! tariff's time zone; successful calls also per consent, for the free thresholds.
//!
//! A line that is not JSON (the cut-short last record of a process that died mid-write)
//! is skipped and reported; a JSON request record with an invalid field is an error.
//! Gap markers (`records_dropped`) are counted: those records were never counted by the
//! rollups either.

use std::collections::BTreeMap;
use std::io::BufRead;

use consent_cache::Bin;
use feed_wire::rollup::Outcome;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::routes::canonical_route;
use crate::{CustomerDay, UsageRow};

/// Successful calls of one consent on one route on one local day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentDay {
    /// The local day.
    pub day: Date,
    /// The API user holding the consent.
    pub api_user: Bin,
    /// The provider.
    pub provider: Bin,
    /// The consent id.
    pub consent: String,
    /// The route (canonical spelling).
    pub route: String,
    /// Successful calls.
    pub calls: u64,
}

impl ConsentDay {
    /// The same calls as one customer's (the caller knows whose consent it is).
    pub fn for_customer(&self, customer: String) -> CustomerDay {
        CustomerDay {
            day: self.day,
            api_user: self.api_user,
            provider: self.provider,
            customer,
            route: self.route.clone(),
            calls: self.calls,
        }
    }
}

/// A journal that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading failed.
    #[error("reading the journal: {0}")]
    Io(#[from] std::io::Error),
    /// A request record with a missing or invalid field.
    #[error("journal line {line}: {message}")]
    Record {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// What the journals hold for a period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalUsage {
    /// Calls per day × API user × provider × route × outcome.
    pub usage: Vec<UsageRow>,
    /// Successful calls per day × consent × route.
    pub consents: Vec<ConsentDay>,
    /// Request records counted (in the period).
    pub records: u64,
    /// Lines that were not JSON: (journal number, 1-based line).
    pub unreadable: Vec<(usize, usize)>,
    /// Records the gateways could not journal (gap markers' counts), in any period.
    pub dropped: u64,
}

/// The journal line's fields this reads; others are ignored.
#[derive(Deserialize)]
struct Record {
    time: Option<String>,
    interaction_id: Option<String>,
    api_user: Option<Bin>,
    provider: Option<Bin>,
    consent_id: Option<String>,
    route: Option<String>,
    outcome: Option<Outcome>,
    /// Transaction lines; absent in journals written before it was added.
    #[serde(default)]
    lines: u64,
    rollup_minute: Option<i64>,
    event: Option<String>,
    count: Option<u64>,
}

type UsageKey = (Date, Option<Bin>, Option<Bin>, String, Outcome);
type ConsentKey = (Date, Bin, Bin, String, String);

/// Reads journals one after the other into one period's usage.
pub struct Journals {
    from: Date,
    to: Date,
    tz: TimeZone,
    usage: BTreeMap<UsageKey, (u64, u64)>,
    consents: BTreeMap<ConsentKey, u64>,
    out: JournalUsage,
    read: usize,
}

impl Journals {
    /// Usage of the local days `from..=to` in `tz`.
    pub fn new(from: Date, to: Date, tz: TimeZone) -> Journals {
        Journals {
            from,
            to,
            tz,
            usage: BTreeMap::new(),
            consents: BTreeMap::new(),
            out: JournalUsage::default(),
            read: 0,
        }
    }

    /// Adds one journal.
    pub fn read(&mut self, reader: impl BufRead) -> Result<(), JournalError> {
        self.read += 1;
        for (i, line) in reader.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(&line) {
                Ok(r) => self.add(i + 1, r)?,
                Err(e) if e.is_syntax() || e.is_eof() => {
                    self.out.unreadable.push((self.read, i + 1))
                }
                Err(e) => {
                    return Err(JournalError::Record {
                        line: i + 1,
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, line: usize, r: Record) -> Result<(), JournalError> {
        if r.event.as_deref() == Some("records_dropped") {
            self.out.dropped += r.count.unwrap_or(0);
            return Ok(());
        }
        if r.interaction_id.is_none() {
            return Ok(()); // not a request's record
        }
        let bad = |message: &str| JournalError::Record {
            line,
            message: message.to_string(),
        };
        let outcome = r
            .outcome
            .ok_or_else(|| bad("a request record without its outcome"))?;
        let route = r
            .route
            .ok_or_else(|| bad("a request record without its route"))?;
        let day = self.day(r.time.as_deref(), r.rollup_minute).map_err(bad)?;
        if !(self.from..=self.to).contains(&day) {
            return Ok(());
        }
        let route = canonical_route(&route).map_or(route, str::to_string);
        self.out.records += 1;
        let e = self
            .usage
            .entry((day, r.api_user, r.provider, route.clone(), outcome))
            .or_default();
        e.0 += 1;
        e.1 += r.lines;
        if let (Outcome::Success, Some(u), Some(p), Some(c)) =
            (outcome, r.api_user, r.provider, r.consent_id)
        {
            *self.consents.entry((day, u, p, c, route)).or_default() += 1;
        }
        Ok(())
    }

    /// The local day of the minute the rollups counted the record in.
    fn day(&self, time: Option<&str>, rollup_minute: Option<i64>) -> Result<Date, &'static str> {
        let minute = match rollup_minute {
            Some(m) => m,
            None => {
                let t: Timestamp = time
                    .ok_or("a request record without its time")?
                    .parse()
                    .map_err(|_| "a time that is not RFC 3339")?;
                t.as_second().div_euclid(60) * 60
            }
        };
        let ts = Timestamp::from_second(minute).map_err(|_| "a minute out of range")?;
        Ok(self.tz.to_datetime(ts).date())
    }

    /// The period's usage, rows in key order.
    pub fn finish(mut self) -> JournalUsage {
        self.out.usage = self
            .usage
            .into_iter()
            .map(
                |((day, api_user, provider, route, outcome), (calls, lines))| UsageRow {
                    day,
                    api_user,
                    provider,
                    route,
                    outcome,
                    calls,
                    lines,
                },
            )
            .collect();
        self.out.consents = self
            .consents
            .into_iter()
            .map(
                |((day, api_user, provider, consent, route), calls)| ConsentDay {
                    day,
                    api_user,
                    provider,
                    consent,
                    route,
                    calls,
                },
            )
            .collect();
        self.out
    }
}

/// The usage of local days `from..=to` (in `tz`) in one journal.
pub fn usage_from_journal(
    reader: impl BufRead,
    from: Date,
    to: Date,
    tz: &TimeZone,
) -> Result<(Vec<UsageRow>, Vec<ConsentDay>), JournalError> {
    let mut j = Journals::new(from, to, tz.clone());
    j.read(reader)?;
    let out = j.finish();
    Ok((out.usage, out.consents))
}
