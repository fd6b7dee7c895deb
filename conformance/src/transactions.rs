//! The transactions probe: a first page (small `limit`), then a `from`/`to` query inside
//! the dates that page showed, walked to its end by `links.next` with a smaller `limit`.
//! Pagination: the walk ends within [`MAX_PAGES`], serves no transaction twice, no page
//! larger than asked, and as many transactions as `meta.total` announced. Date range:
//! every transaction of the walk is booked within `from`..=`to`.
//!
//! The range lies strictly inside the first page's dates where it can (the newest day
//! and the oldest are left out), so a provider ignoring either bound serves a transaction
//! outside it. Transaction ids and dates are kept in memory for the checks only.

use std::collections::HashSet;

use http::uri::PathAndQuery;
use serde_json::Value;
use time::macros::format_description;
use time::Date;

use crate::probe::Prober;
use crate::report::{Outcome, Purpose, Rule};
use crate::run::{Carry, Run};
use crate::target::Api;

/// `limit` of the first page: enough dates to choose a range from.
pub const FIRST_LIMIT: usize = 10;
/// `limit` of the walk: small, so a short range still takes several pages.
pub const WALK_LIMIT: usize = 3;
/// The most pages the walk follows: a provider whose cursors go on longer fails.
pub const MAX_PAGES: usize = 50;

/// One transaction page, read from its JSON.
struct Page {
    /// `(transaction_id, booking_date)` of each item.
    items: Vec<(String, Date)>,
    total: Option<u64>,
    next: Option<String>,
}

fn parse_date(s: &str) -> Option<Date> {
    Date::parse(s, format_description!("[year]-[month]-[day]")).ok()
}

impl Page {
    /// `None` unless every item has an id and a booking date.
    fn parse(v: &Value) -> Option<Page> {
        let items = v
            .get("data")?
            .as_array()?
            .iter()
            .map(|t| {
                let id = t.get("transaction_id")?.as_str()?.to_owned();
                let date = parse_date(t.get("booking_date")?.as_str()?)?;
                Some((id, date))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Page {
            items,
            total: v.pointer("/meta/total").and_then(Value::as_u64),
            next: v
                .pointer("/links/next")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// The range to ask for, from the first page's dates: inside them where it can be.
fn choose_range(dates: &[Date]) -> Option<(Date, Date)> {
    let mut ds: Vec<Date> = dates.to_vec();
    ds.sort_unstable_by(|a, b| b.cmp(a));
    ds.dedup();
    let k = ds.len();
    let to_i = 1.min(k.checked_sub(1)?);
    let from_i = k.saturating_sub(2).max(to_i);
    Some((*ds.get(from_i)?, *ds.get(to_i)?))
}

/// The next page's path from `links.next`: a query-only reference (what the contract
/// documents) or a path to the same route; anything else is refused.
fn next_path(route: &str, link: &str) -> Option<String> {
    let path = if link.starts_with('?') {
        format!("{route}{link}")
    } else if link.split('?').next().is_some_and(|p| p.ends_with(route)) && link.starts_with('/') {
        let query = link.split_once('?').map_or("", |(_, q)| q);
        format!("{route}?{query}")
    } else {
        return None;
    };
    path.parse::<PathAndQuery>().ok().map(|_| path)
}

/// Probes `…/transactions` for the probe account.
pub(crate) async fn probe(p: &Prober, run: &mut Run<'_>) {
    let Some(account) = p.probe_account(run).await else {
        return;
    };
    let route = format!("/v1/accounts/{account}/transactions");
    let first = run
        .call(
            Purpose::Probe,
            &format!("{route}?limit={FIRST_LIMIT}"),
            Carry::Consent,
        )
        .await;
    let page = first
        .as_ref()
        .and_then(|r| r.ok_json())
        .and_then(Page::parse);
    let dates: Option<Vec<Date>> = page.map(|pg| pg.items.into_iter().map(|(_, d)| d).collect());
    match dates.as_deref().map(choose_range) {
        None => {
            let why = "no first transaction page to start from";
            run.set(Rule::Pagination, Outcome::Skip, why);
            run.set(Rule::DateRange, Outcome::Skip, why);
        }
        Some(None) => {
            let why = "the test account has no transactions";
            run.set(Rule::Pagination, Outcome::Skip, why);
            run.set(Rule::DateRange, Outcome::Skip, why);
        }
        Some(Some((from, to))) => walk(run, &route, from, to).await,
    }
    p.refusal(run, Api::Transactions).await;
}

/// What the walk saw.
#[derive(Default)]
struct Walk {
    pages: usize,
    served: usize,
    outside: usize,
    total: Option<u64>,
    complete: bool,
    broken: Option<String>,
}

/// Follows a `from`/`to` query to its last page and sets the pagination and date rules.
async fn walk(run: &mut Run<'_>, route: &str, from: Date, to: Date) {
    let mut w = Walk::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut next = Some(format!("{route}?from={from}&to={to}&limit={WALK_LIMIT}"));
    while let Some(path) = next.take() {
        if w.pages == MAX_PAGES {
            w.broken = Some(format!("no last page after {MAX_PAGES} pages"));
            break;
        }
        w.pages += 1;
        let purpose = match w.pages {
            1 => Purpose::DateRange,
            _ => Purpose::NextPage,
        };
        let reply = run.call(purpose, &path, Carry::Consent).await;
        let Some(page) = reply
            .as_ref()
            .and_then(|r| r.ok_json())
            .and_then(Page::parse)
        else {
            w.broken = Some(format!("page {} is not a transaction page", w.pages));
            break;
        };
        if let Err(why) = w.take(&page, &mut seen, from, to) {
            w.broken = Some(why);
            break;
        }
        match &page.next {
            None => w.complete = true,
            Some(link) => match next_path(route, link) {
                Some(p) => next = Some(p),
                None => {
                    let why = format!(
                        "links.next of page {} is not a reference to this route",
                        w.pages
                    );
                    w.broken = Some(why);
                }
            },
        }
    }
    w.judge(run);
}

impl Walk {
    /// Takes a page in: its size, repeats and dates.
    fn take(
        &mut self,
        page: &Page,
        seen: &mut HashSet<String>,
        from: Date,
        to: Date,
    ) -> Result<(), String> {
        if self.pages == 1 {
            self.total = page.total;
        }
        if page.items.len() > WALK_LIMIT {
            return Err(format!(
                "page {} held {} transactions for limit {WALK_LIMIT}",
                self.pages,
                page.items.len()
            ));
        }
        for (id, date) in &page.items {
            if !seen.insert(id.clone()) {
                return Err(format!(
                    "a transaction came twice (again on page {})",
                    self.pages
                ));
            }
            if *date < from || *date > to {
                self.outside += 1;
            }
        }
        self.served += page.items.len();
        Ok(())
    }

    fn judge(self, run: &mut Run<'_>) {
        let pagination = match (&self.broken, self.complete, self.total) {
            (Some(why), _, _) => (Outcome::Fail, why.clone()),
            (None, true, Some(total)) if total != self.served as u64 => (
                Outcome::Fail,
                format!(
                    "the pages served {} transactions, meta.total said {total}",
                    self.served
                ),
            ),
            _ => (
                Outcome::Pass,
                format!(
                    "{} pages of at most {WALK_LIMIT}, {} transactions, none twice",
                    self.pages, self.served
                ),
            ),
        };
        run.set(Rule::Pagination, pagination.0, pagination.1);
        let range = if self.served == 0 && self.pages <= 1 && self.broken.is_some() {
            (
                Outcome::Skip,
                "no transaction page for the range".to_owned(),
            )
        } else if self.outside == 0 {
            (
                Outcome::Pass,
                format!("{} transactions, all within from/to", self.served),
            )
        } else {
            (
                Outcome::Fail,
                format!(
                    "{} of {} transactions booked outside from/to",
                    self.outside, self.served
                ),
            )
        };
        run.set(Rule::DateRange, range.0, range.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Date {
        parse_date(s).expect("date")
    }

    #[test]
    fn the_range_leaves_out_the_newest_and_oldest_days_when_it_can() {
        let days = |v: &[&str]| v.iter().map(|s| d(s)).collect::<Vec<_>>();
        assert_eq!(choose_range(&[]), None);
        let one = days(&["2025-03-01", "2025-03-01"]);
        assert_eq!(choose_range(&one), Some((d("2025-03-01"), d("2025-03-01"))));
        let two = days(&["2025-03-02", "2025-03-01"]);
        assert_eq!(choose_range(&two), Some((d("2025-03-01"), d("2025-03-01"))));
        let four = days(&["2025-03-04", "2025-03-01", "2025-03-03", "2025-03-02"]);
        assert_eq!(
            choose_range(&four),
            Some((d("2025-03-02"), d("2025-03-03")))
        );
    }

    #[test]
    fn next_links_must_stay_on_the_route() {
        let route = "/v1/accounts/a1/transactions";
        assert_eq!(
            next_path(route, "?limit=3&cursor=abc").as_deref(),
            Some("/v1/accounts/a1/transactions?limit=3&cursor=abc")
        );
        assert_eq!(
            next_path(route, "/v1/accounts/a1/transactions?cursor=x").as_deref(),
            Some("/v1/accounts/a1/transactions?cursor=x")
        );
        assert_eq!(next_path(route, "https://evil.example/x?cursor=1"), None);
        assert_eq!(next_path(route, "/v1/accounts/a2/balances?cursor=1"), None);
        assert_eq!(next_path(route, "?cursor=a b"), None);
    }
}
