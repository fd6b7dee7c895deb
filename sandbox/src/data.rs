//! Deterministic, realistic synthetic data of one sandbox bank: customers keyed by
//! IIN, their KZ-IBAN accounts, balances and transactions, and the bank's open data
//! (exchange rates, branches, ATMs, products). The same `(bank, seed, customers)`
//! always gives the same data, byte for byte, on every platform.
//!
//! # JSON shapes served by the sandbox bank
//!
//! Every body is `application/json`, UTF-8. Amounts, rates and balances are decimal
//! **strings** with exactly two decimals (`"12500.00"`, `"-3.10"`); dates are
//! `YYYY-MM-DD`; timestamps RFC 3339 with the Almaty offset (`+05:00`).
//!
//! A **collection** (`GET /v1/accounts`, `…/transactions`, `/v1/open-data/{dataset}`):
//!
//! ```json
//! {"data": [ … ],
//!  "links": {"self": "/v1/accounts/acc-…/transactions?limit=50",
//!            "next": "/v1/accounts/acc-…/transactions?limit=50&cursor=…"},
//!  "meta": {"total": 3000, "next_cursor": "…"}}
//! ```
//!
//! `links.next` and `meta.next_cursor` are present only when more items remain;
//! `meta.total` counts every item matching the request's filters, not the page.
//! Links are relative to the bank's base URL (the hub rewrites or drops them).
//!
//! A **single object** (`GET /v1/accounts/{id}`, `…/balances`):
//! `{"data": { … }, "links": {"self": "/v1/accounts/acc-…"}}`.
//!
//! An **error**: `{"error": "<code>", "message": "<text for developers>"}`.
//!
//! Objects:
//!
//! - account: `{"account_id": "acc-3f9c…", "iban": "KZ…", "currency": "KZT",
//!   "type": "current"|"savings"|"card", "name": "Visa Gold", "opened": "2019-03-14",
//!   "status": "enabled"|"blocked"}`
//! - balances: `{"account_id", "currency", "booked": "…", "available": "…",
//!   "credit_limit": "…" (cards with a limit only), "as_of": "2025-06-30T18:00:00+05:00"}`
//! - transaction: `{"transaction_id": "tx-…", "booking_date", "value_date",
//!   "amount": "1250.00" (always positive), "currency", "credit_debit": "credit"|"debit",
//!   "status": "booked", "counterparty", "description", "mcc": "5411" (card operations only)}`
//! - exchange rate: `{"currency": "USD", "base": "KZT", "units": 1, "buy", "sell",
//!   "official", "date"}` (KZT for `units` of the currency)
//! - branch: `{"branch_id", "name", "city", "address", "latitude", "longitude",
//!   "phone", "hours": {"weekdays", "saturday", "sunday"}, "services": [..]}`
//!   (`saturday`/`sunday` are `null` when closed)
//! - ATM: `{"atm_id", "city", "address", "latitude", "longitude", "hours",
//!   "cash_in": bool, "currencies": ["KZT", …]}`
//! - product: `{"product_id", "kind": "deposit"|"card"|"loan", "name", "currency",
//!   "annual_rate": "14.50" | null, "term_months": 12 | null, "min_amount": … | null,
//!   "max_amount": … | null, "description"}`

mod ident;
pub(crate) mod json;
mod rng;
mod tables;

pub use ident::{iin_check_digit, is_valid_iin, is_valid_kz_iban, kz_iban};

use consent_cache::Bin;
use rng::{mix64, Rng};
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use std::collections::{HashMap, HashSet};
use std::fmt;
use time::macros::date;
use time::{Date, Duration};

/// The day the synthetic world stands still: every balance is "as of" this day and
/// every transaction is booked on or before it (a fixed date keeps data reproducible).
pub const AS_OF: Date = date!(2025 - 06 - 30);

/// [`AS_OF`] at the end of the Almaty business day, the `as_of` of every balance.
pub const AS_OF_TIMESTAMP: &str = "2025-06-30T18:00:00+05:00";

/// A currency of an account or transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Currency {
    /// Kazakhstani tenge.
    Kzt,
    /// US dollar.
    Usd,
    /// Euro.
    Eur,
    /// Russian rouble.
    Rub,
}

impl Currency {
    /// The ISO 4217 code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Currency::Kzt => "KZT",
            Currency::Usd => "USD",
            Currency::Eur => "EUR",
            Currency::Rub => "RUB",
        }
    }

    /// KZT tiyn per one unit of the currency (the rough mid rate of the sandbox).
    const fn kzt_tiyn_per_unit(self) -> i64 {
        match self {
            Currency::Kzt => 100,
            Currency::Usd => 51_250,
            Currency::Eur => 59_480,
            Currency::Rub => 645,
        }
    }

    /// Converts an amount in KZT tiyn to minor units of `self`, at least 1.
    fn minor_from_kzt_tiyn(self, tiyn: i64) -> i64 {
        (tiyn * 100 / self.kzt_tiyn_per_unit()).max(1)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An amount in minor units (tiyn, cents, kopecks), written with two decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Money(pub i64);

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The kind of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountKind {
    /// A current (settlement) account.
    Current,
    /// A savings deposit.
    Savings,
    /// A card account.
    Card,
}

impl AccountKind {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccountKind::Current => "current",
            AccountKind::Savings => "savings",
            AccountKind::Card => "card",
        }
    }
}

/// Whether an account can be operated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountStatus {
    /// Open and usable.
    Enabled,
    /// Blocked by the bank (still visible to the customer).
    Blocked,
}

impl AccountStatus {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Enabled => "enabled",
            AccountStatus::Blocked => "blocked",
        }
    }
}

/// The direction of a transaction from the account holder's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CreditDebit {
    /// Money in.
    Credit,
    /// Money out.
    Debit,
}

impl CreditDebit {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            CreditDebit::Credit => "credit",
            CreditDebit::Debit => "debit",
        }
    }
}

/// The balances of an account as of [`AS_OF_TIMESTAMP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// Booked (ledger) balance: the opening balance plus every booked transaction.
    pub booked: Money,
    /// What the holder can spend now: booked minus card holds plus any credit limit.
    pub available: Money,
    /// The credit limit of a card account, if it has one.
    pub credit_limit: Option<Money>,
}

/// An opaque, bank-unique transaction id, written `tx-<16 hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxId(pub u64);

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tx-{:016x}", self.0)
    }
}

/// One booked transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// Opaque id, unique in the bank.
    pub id: TxId,
    /// The day it was booked (the date filters of the API apply to this).
    pub booking_date: Date,
    /// The value date (on or before the booking date).
    pub value_date: Date,
    /// Always positive; the direction is [`Transaction::credit_debit`].
    pub amount: Money,
    /// The account's currency.
    pub currency: Currency,
    /// Money in or out.
    pub credit_debit: CreditDebit,
    /// Merchant, payee, employer or person on the other side.
    pub counterparty: &'static str,
    /// What the bank statement says (Russian, Kazakh or English).
    pub description: &'static str,
    /// Merchant category code of card operations.
    pub mcc: Option<u16>,
}

impl Serialize for Transaction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Transaction", 10)?;
        st.serialize_field("transaction_id", &Disp(self.id))?;
        st.serialize_field("booking_date", &Disp(self.booking_date))?;
        st.serialize_field("value_date", &Disp(self.value_date))?;
        st.serialize_field("amount", &self.amount)?;
        st.serialize_field("currency", &self.currency)?;
        st.serialize_field("credit_debit", self.credit_debit.as_str())?;
        st.serialize_field("status", "booked")?;
        st.serialize_field("counterparty", self.counterparty)?;
        st.serialize_field("description", self.description)?;
        match self.mcc {
            Some(mcc) => st.serialize_field("mcc", &Disp(format_args!("{mcc:04}")))?,
            None => st.skip_field("mcc")?,
        }
        st.end()
    }
}

/// Serialises any `Display` value as a JSON string without an intermediate `String`.
struct Disp<T>(T);

impl<T: fmt::Display> Serialize for Disp<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// One account of a customer, with its balances and its booked transactions.
///
/// Serialises (without balances and transactions) as the account object of the
/// module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Opaque stable id (`acc-<16 hex>`), what the API paths carry; not the IBAN.
    pub id: String,
    /// The KZ IBAN (ISO 13616, 20 characters).
    pub iban: String,
    /// Currency of the account.
    pub currency: Currency,
    /// Current, savings or card.
    pub kind: AccountKind,
    /// The product name shown to the customer.
    pub name: &'static str,
    /// Opening date.
    pub opened: Date,
    /// Enabled or blocked.
    pub status: AccountStatus,
    /// Balances as of [`AS_OF_TIMESTAMP`].
    pub balance: Balance,
    /// Booked transactions, newest booking date first.
    pub transactions: Vec<Transaction>,
}

impl Account {
    /// The transactions booked in `from..=to` (either bound optional), newest first.
    /// The slice is contiguous because the list is sorted by booking date.
    pub fn transactions_between(&self, from: Option<Date>, to: Option<Date>) -> &[Transaction] {
        let txs = &self.transactions[..];
        let start = match to {
            Some(to) => txs.partition_point(|t| t.booking_date > to),
            None => 0,
        };
        let end = match from {
            Some(from) => txs.partition_point(|t| t.booking_date >= from),
            None => txs.len(),
        };
        txs.get(start..end.max(start)).unwrap_or(&[])
    }
}

impl Serialize for Account {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Account", 7)?;
        st.serialize_field("account_id", &self.id)?;
        st.serialize_field("iban", &self.iban)?;
        st.serialize_field("currency", &self.currency)?;
        st.serialize_field("type", self.kind.as_str())?;
        st.serialize_field("name", self.name)?;
        st.serialize_field("opened", &Disp(self.opened))?;
        st.serialize_field("status", self.status.as_str())?;
        st.end()
    }
}

/// A customer of the bank (a natural person) with 1–4 accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// The 12-digit IIN; this is the customer id consents name (`x-hub-customer`).
    pub iin: String,
    /// Full name, Latin transliteration.
    pub name: String,
    /// Date of birth (the first six digits of the IIN).
    pub born: Date,
    /// The customer's accounts, the first always a KZT card account.
    pub accounts: Vec<Account>,
}

impl Customer {
    /// The customer's account with the most transactions.
    pub fn busiest_account(&self) -> Option<&Account> {
        // max_by_key keeps the last maximum; reverse so the first one wins.
        self.accounts
            .iter()
            .rev()
            .max_by_key(|a| a.transactions.len())
    }
}

/// A KZT exchange rate of the bank (open data).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExchangeRate {
    /// The foreign currency's ISO code.
    pub currency: &'static str,
    /// Always `KZT`.
    pub base: &'static str,
    /// Units of `currency` the amounts are for.
    pub units: u32,
    /// The bank buys `units` of the currency for this many KZT.
    pub buy: Money,
    /// The bank sells `units` of the currency for this many KZT.
    pub sell: Money,
    /// The National Bank's official rate.
    pub official: Money,
    /// Date of the quote.
    #[serde(serialize_with = "ser_display")]
    pub date: Date,
}

/// Opening hours of a branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hours {
    /// Monday to Friday, `HH:MM-HH:MM`.
    pub weekdays: &'static str,
    /// Saturday, `None` when closed.
    pub saturday: Option<&'static str>,
    /// Sunday, `None` when closed.
    pub sunday: Option<&'static str>,
}

/// A branch of the bank (open data).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Branch {
    /// Stable id.
    pub branch_id: String,
    /// Display name.
    pub name: String,
    /// Almaty, Astana or Shymkent.
    pub city: &'static str,
    /// Street address.
    pub address: String,
    /// WGS 84 latitude.
    pub latitude: f64,
    /// WGS 84 longitude.
    pub longitude: f64,
    /// Phone number, `+7 (code) …`.
    pub phone: String,
    /// Opening hours.
    pub hours: Hours,
    /// Services offered.
    pub services: Vec<&'static str>,
}

/// An ATM of the bank (open data).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Atm {
    /// Stable id.
    pub atm_id: String,
    /// Almaty, Astana or Shymkent.
    pub city: &'static str,
    /// Street address.
    pub address: String,
    /// WGS 84 latitude.
    pub latitude: f64,
    /// WGS 84 longitude.
    pub longitude: f64,
    /// `24/7` or `HH:MM-HH:MM`.
    pub hours: &'static str,
    /// Whether it accepts cash deposits.
    pub cash_in: bool,
    /// Currencies it dispenses.
    pub currencies: Vec<Currency>,
}

/// The kind of a retail product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProductKind {
    /// A term or savings deposit.
    Deposit,
    /// A debit or credit card.
    Card,
    /// A loan.
    Loan,
}

/// A retail product of the bank (open data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Product {
    /// Stable id.
    pub product_id: String,
    /// Deposit, card or loan.
    pub kind: ProductKind,
    /// Marketing name.
    pub name: &'static str,
    /// Currency of the product.
    pub currency: Currency,
    /// Annual rate in percent with two decimals (`Money(1450)` is `"14.50"`); `None`
    /// for debit cards.
    pub annual_rate: Option<Money>,
    /// Term in months, where the product has one.
    pub term_months: Option<u16>,
    /// Smallest amount (deposit, loan) in `currency`.
    pub min_amount: Option<Money>,
    /// Largest amount (loan, credit limit) in `currency`.
    pub max_amount: Option<Money>,
    /// One-line description.
    pub description: &'static str,
}

fn ser_display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// All the data of one sandbox bank, generated once and then read-only.
#[derive(Debug, Clone)]
pub struct BankData {
    bank: Bin,
    seed: u64,
    bank_code: u16,
    customers: Vec<Customer>,
    by_iin: HashMap<String, usize>,
    by_account: HashMap<String, (usize, usize)>,
    exchange_rates: Vec<ExchangeRate>,
    branches: Vec<Branch>,
    atms: Vec<Atm>,
    products: Vec<Product>,
}

/// The 3-digit bank code of the bank's IBANs, derived from its BIN (`100..=999`).
pub fn bank_code(bank: Bin) -> u16 {
    100 + (bank.get() % 900) as u16
}

/// Every `N`th customer (the 0th, 10th, 20th, …) has a busy first account.
pub const BUSY_CUSTOMER_EVERY: usize = 10;
/// Transactions on the first account of a busy customer.
pub const BUSY_ACCOUNT_TRANSACTIONS: usize = 3_000;

impl BankData {
    /// Generates the bank's data. Identical inputs give identical data; customer `i`
    /// does not depend on how many customers follow it, so a smaller `customers`
    /// gives a prefix of a larger one.
    pub fn generate(bank: Bin, seed: u64, customers: usize) -> Self {
        let root = Rng::new(mix64(seed) ^ mix64(bank.get().wrapping_add(0x5bd1_e995)));
        let id_key = root.fork(1).next_u64();
        let tx_key = root.fork(2).next_u64();
        let code = bank_code(bank);
        let mut iins = HashSet::with_capacity(customers);
        let mut ibans = HashSet::with_capacity(customers * 3);
        let mut list = Vec::with_capacity(customers);
        for ci in 0..customers {
            let mut r = root.fork(1_000_000 + ci as u64);
            let (iin, born, female) = loop {
                let candidate = gen_iin(&mut r);
                if iins.insert(candidate.0.clone()) {
                    break candidate;
                }
            };
            let name = gen_name(&mut r, female);
            let n_accounts = 1 + r.weighted(&[35, 35, 20, 10]);
            let mut accounts = Vec::with_capacity(n_accounts);
            for ai in 0..n_accounts {
                let acc_code = ((ci as u64) << 3) | ai as u64;
                let mut ar = r.fork(ai as u64);
                let busy = ai == 0 && ci % BUSY_CUSTOMER_EVERY == 0;
                let account = gen_account(
                    &mut ar,
                    AccountSeed {
                        id: mix64(id_key ^ acc_code),
                        tx_base: acc_code << 16,
                        tx_key,
                        first: ai == 0,
                        busy,
                        bank_code: code,
                        born,
                    },
                    &mut ibans,
                );
                accounts.push(account);
            }
            list.push(Customer {
                iin,
                name,
                born,
                accounts,
            });
        }
        let by_iin = list
            .iter()
            .enumerate()
            .map(|(i, c)| (c.iin.clone(), i))
            .collect();
        let by_account = list
            .iter()
            .enumerate()
            .flat_map(|(ci, c)| {
                c.accounts
                    .iter()
                    .enumerate()
                    .map(move |(ai, a)| (a.id.clone(), (ci, ai)))
            })
            .collect();
        BankData {
            bank,
            seed,
            bank_code: code,
            customers: list,
            by_iin,
            by_account,
            exchange_rates: gen_rates(&mut root.fork(3)),
            branches: gen_branches(&mut root.fork(4)),
            atms: gen_atms(&mut root.fork(5)),
            products: gen_products(&mut root.fork(6)),
        }
    }

    /// The bank's BIN.
    pub fn bank(&self) -> Bin {
        self.bank
    }

    /// The seed the data was generated from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The 3-digit bank code in the bank's IBANs.
    pub fn bank_code(&self) -> u16 {
        self.bank_code
    }

    /// All customers, in generation order.
    pub fn customers(&self) -> impl ExactSizeIterator<Item = &Customer> + '_ {
        self.customers.iter()
    }

    /// The customer with this IIN.
    pub fn customer(&self, iin: &str) -> Option<&Customer> {
        self.by_iin.get(iin).and_then(|&i| self.customers.get(i))
    }

    /// The account with this id, whoever owns it.
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.account_with_owner(id).map(|(_, a)| a)
    }

    /// The account with this id and its owner.
    pub fn account_with_owner(&self, id: &str) -> Option<(&Customer, &Account)> {
        let &(ci, ai) = self.by_account.get(id)?;
        let c = self.customers.get(ci)?;
        Some((c, c.accounts.get(ai)?))
    }

    /// The account with the most transactions and its owner (the first such in
    /// generation order): with at least one customer, the busy first account of
    /// customer 0, which has [`BUSY_ACCOUNT_TRANSACTIONS`] transactions.
    pub fn busiest_account(&self) -> Option<(&Customer, &Account)> {
        let mut best: Option<(&Customer, &Account)> = None;
        for c in &self.customers {
            if let Some(a) = c.busiest_account() {
                if best.is_none_or(|(_, b)| a.transactions.len() > b.transactions.len()) {
                    best = Some((c, a));
                }
            }
        }
        best
    }

    /// Customers that have a busy account ([`BUSY_ACCOUNT_TRANSACTIONS`] transactions).
    pub fn busy_customers(&self) -> impl Iterator<Item = &Customer> + '_ {
        self.customers.iter().step_by(BUSY_CUSTOMER_EVERY)
    }

    /// The bank's KZT exchange rates.
    pub fn exchange_rates(&self) -> &[ExchangeRate] {
        &self.exchange_rates
    }

    /// The bank's branches.
    pub fn branches(&self) -> &[Branch] {
        &self.branches
    }

    /// The bank's ATMs.
    pub fn atms(&self) -> &[Atm] {
        &self.atms
    }

    /// The bank's retail products.
    pub fn products(&self) -> &[Product] {
        &self.products
    }
}

/// An IIN with its birth date and whether the person is female. The IIN's seventh
/// digit encodes century and sex: 3/4 for the 1900s, 5/6 for the 2000s (odd male).
fn gen_iin(r: &mut Rng) -> (String, Date, bool) {
    let female = r.chance(500);
    // Born 1955-01-01 ..= 2005-12-31.
    let lo = date!(1955 - 01 - 01).to_julian_day();
    let hi = date!(2005 - 12 - 31).to_julian_day();
    let born = Date::from_julian_day(r.range(i64::from(lo), i64::from(hi)) as i32).unwrap_or(AS_OF);
    let year = born.year();
    let century_sex: u8 = match (year >= 2000, female) {
        (false, false) => 3,
        (false, true) => 4,
        (true, false) => 5,
        (true, true) => 6,
    };
    let yy = (year % 100) as u8;
    let mm = u8::from(born.month());
    let dd = born.day();
    loop {
        let serial = r.below(10_000) as u16;
        let d = [
            yy / 10,
            yy % 10,
            mm / 10,
            mm % 10,
            dd / 10,
            dd % 10,
            century_sex,
            (serial / 1000) as u8,
            (serial / 100 % 10) as u8,
            (serial / 10 % 10) as u8,
            (serial % 10) as u8,
        ];
        if let Some(check) = iin_check_digit(&d) {
            let mut s = String::with_capacity(12);
            for digit in d.iter().chain(std::iter::once(&check)) {
                s.push(char::from(b'0' + digit));
            }
            return (s, born, female);
        }
    }
}

fn gen_name(r: &mut Rng, female: bool) -> String {
    let given = if female {
        r.pick(tables::FEMALE_NAMES)
    } else {
        r.pick(tables::MALE_NAMES)
    };
    if r.chance(120) {
        let root = r.pick(tables::ULY_ROOTS);
        let suffix = if female { "kyzy" } else { "uly" };
        return format!("{given} {root}{suffix}");
    }
    let surname = r.pick(tables::SURNAMES);
    let gendered = female && (surname.ends_with("ov") || surname.ends_with("ev"));
    if gendered {
        format!("{given} {surname}a")
    } else {
        format!("{given} {surname}")
    }
}

/// Everything about one account that is not drawn from its random stream.
struct AccountSeed {
    id: u64,
    tx_base: u64,
    tx_key: u64,
    first: bool,
    busy: bool,
    bank_code: u16,
    born: Date,
}

fn gen_account(r: &mut Rng, s: AccountSeed, ibans: &mut HashSet<String>) -> Account {
    use AccountKind::{Card, Current, Savings};
    use Currency::{Eur, Kzt, Rub, Usd};
    let (kind, currency, name) = if s.first {
        let name = *r.pick(&[
            "Visa Classic",
            "Visa Gold",
            "Mastercard Standard",
            "Mastercard Gold",
        ]);
        (Card, Kzt, name)
    } else {
        const CHOICES: &[(AccountKind, Currency, &str)] = &[
            (Current, Kzt, "Текущий счёт"),
            (Savings, Kzt, "Депозит «Жинақ»"),
            (Card, Kzt, "Visa Platinum"),
            (Current, Usd, "Current account USD"),
            (Savings, Usd, "Savings USD"),
            (Current, Eur, "Current account EUR"),
            (Current, Rub, "Текущий счёт RUB"),
        ];
        let i = r.weighted(&[30, 25, 12, 14, 7, 7, 5]);
        let (k, c, n) = CHOICES[i.min(CHOICES.len() - 1)];
        (k, c, n)
    };
    let iban = loop {
        let tail = format!("{}{:010}", currency.as_str(), r.below(10_000_000_000));
        if let Some(iban) = kz_iban(s.bank_code, &tail) {
            if ibans.insert(iban.clone()) {
                break iban;
            }
        }
    };
    // Opened after the 18th birthday, from 2012, and at least 60 days before AS_OF.
    let adult = s.born.replace_year(s.born.year() + 18).unwrap_or(s.born);
    let earliest = adult.max(date!(2012 - 01 - 01));
    let latest = AS_OF - Duration::days(60);
    let opened = if earliest >= latest {
        latest
    } else {
        let span = (latest - earliest).whole_days();
        earliest + Duration::days(r.range(0, span))
    };
    let status = if !s.first && r.chance(40) {
        AccountStatus::Blocked
    } else {
        AccountStatus::Enabled
    };
    let count = if s.busy {
        BUSY_ACCOUNT_TRANSACTIONS
    } else if kind == Savings {
        r.range(4, 24) as usize
    } else {
        r.range(10, 60) as usize
    };
    let window = if s.busy { 365 } else { 180 };
    let from = opened.max(AS_OF - Duration::days(window));
    let mut transactions = gen_transactions(r, kind, currency, count, from);
    transactions.sort_by_key(|t| std::cmp::Reverse(t.booking_date));
    for (i, t) in transactions.iter_mut().enumerate() {
        t.id = TxId(mix64(s.tx_key ^ (s.tx_base | i as u64)));
    }
    let balance = gen_balance(r, kind, currency, &transactions);
    Account {
        id: format!("acc-{:016x}", s.id),
        iban,
        currency,
        kind,
        name,
        opened,
        status,
        balance,
        transactions,
    }
}

/// Booked on or after `from`, on or before [`AS_OF`]; ids are set by the caller.
fn gen_transactions(
    r: &mut Rng,
    kind: AccountKind,
    currency: Currency,
    count: usize,
    from: Date,
) -> Vec<Transaction> {
    let span = (AS_OF - from).whole_days().max(0);
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let booking_date = from + Duration::days(r.range(0, span));
        let (cd, counterparty, description, mcc, tenge, lag) = if kind == AccountKind::Savings {
            match r.weighted(&[60, 20, 20]) {
                0 => (
                    CreditDebit::Credit,
                    "Собственный счёт",
                    "Пополнение депозита",
                    None,
                    r.range(10, 500) * 1_000,
                    0,
                ),
                1 => (
                    CreditDebit::Credit,
                    "Вознаграждение по депозиту",
                    "Капитализация вознаграждения",
                    None,
                    r.range(500, 25_000),
                    0,
                ),
                _ => (
                    CreditDebit::Debit,
                    "Собственный счёт",
                    "Частичное изъятие",
                    None,
                    r.range(5, 200) * 1_000,
                    0,
                ),
            }
        } else {
            match r.weighted(&[62, 9, 10, 8, 5, 6]) {
                0 => {
                    let &(m, mcc, lo, hi) = r.pick(tables::MERCHANTS);
                    let text = *r.pick(tables::PURCHASE_TEXT);
                    let lag = r.range(0, 2);
                    (CreditDebit::Debit, m, text, Some(mcc), r.range(lo, hi), lag)
                }
                1 => {
                    let &(b, mcc, text) = r.pick(tables::BILLERS);
                    (
                        CreditDebit::Debit,
                        b,
                        text,
                        Some(mcc),
                        r.range(1_500, 25_000),
                        0,
                    )
                }
                2 => (
                    CreditDebit::Debit,
                    *r.pick(tables::P2P),
                    "Перевод по номеру телефона",
                    Some(4829),
                    r.range(1, 150) * 1_000,
                    0,
                ),
                3 => (
                    CreditDebit::Credit,
                    *r.pick(tables::P2P),
                    "Входящий перевод",
                    None,
                    r.range(1, 120) * 1_000,
                    0,
                ),
                4 => (
                    CreditDebit::Credit,
                    *r.pick(tables::EMPLOYERS),
                    "Заработная плата",
                    None,
                    r.range(180, 1_400) * 1_000,
                    0,
                ),
                _ => (
                    CreditDebit::Debit,
                    "ATM",
                    "Снятие наличных",
                    Some(6011),
                    r.range(1, 20) * 5_000,
                    0,
                ),
            }
        };
        let value_date = (booking_date - Duration::days(lag)).max(from);
        out.push(Transaction {
            id: TxId(0),
            booking_date,
            value_date,
            amount: Money(currency.minor_from_kzt_tiyn(tenge * 100)),
            currency,
            credit_debit: cd,
            counterparty,
            description,
            mcc,
        });
    }
    out
}

/// Opening balance chosen so the running balance never goes below zero; booked is
/// opening plus every transaction.
fn gen_balance(
    r: &mut Rng,
    kind: AccountKind,
    currency: Currency,
    newest_first: &[Transaction],
) -> Balance {
    let mut running: i64 = 0;
    let mut lowest: i64 = 0;
    for t in newest_first.iter().rev() {
        running += match t.credit_debit {
            CreditDebit::Credit => t.amount.0,
            CreditDebit::Debit => -t.amount.0,
        };
        lowest = lowest.min(running);
    }
    let cushion = currency.minor_from_kzt_tiyn(r.range(5_000, 900_000) * 100);
    let booked = running - lowest + cushion;
    let (available, credit_limit) = match kind {
        AccountKind::Card => {
            let hold = r.below((booked / 20).max(1).unsigned_abs());
            let limit = if r.chance(300) {
                Some(currency.minor_from_kzt_tiyn(r.range(1, 30) * 100_000 * 100))
            } else {
                None
            };
            (booked - hold as i64 + limit.unwrap_or(0), limit.map(Money))
        }
        AccountKind::Current | AccountKind::Savings => (booked, None),
    };
    Balance {
        booked: Money(booked),
        available: Money(available),
        credit_limit,
    }
}

fn gen_rates(r: &mut Rng) -> Vec<ExchangeRate> {
    tables::FX
        .iter()
        .map(|&(currency, mid)| {
            // Up to ±1% around the sandbox mid rate, spread 0.4–1.2% each side.
            let official = mid + mid * r.range(-100, 100) / 10_000;
            let spread = (official * r.range(40, 120) / 10_000).max(1);
            ExchangeRate {
                currency,
                base: "KZT",
                units: 1,
                buy: Money(official - spread),
                sell: Money(official + spread),
                official: Money(official),
                date: AS_OF,
            }
        })
        .collect()
}

/// A point near a city centre (within about 6 km), rounded to 1e-6 degree.
fn near(r: &mut Rng, lat: f64, lon: f64) -> (f64, f64) {
    let dlat = r.range(-50_000, 50_000) as f64;
    let dlon = r.range(-70_000, 70_000) as f64;
    (
        ((lat * 1e6).round() + dlat) / 1e6,
        ((lon * 1e6).round() + dlon) / 1e6,
    )
}

fn pick_city(r: &mut Rng) -> (&'static str, f64, f64, &'static [&'static str]) {
    let i = r.weighted(&[50, 35, 15]);
    tables::CITIES[i.min(tables::CITIES.len() - 1)]
}

fn phone_code(city: &str) -> &'static str {
    match city {
        "Almaty" => "727",
        "Astana" => "7172",
        _ => "7252",
    }
}

fn gen_branches(r: &mut Rng) -> Vec<Branch> {
    const SERVICES: &[&str] = &[
        "accounts",
        "cards",
        "deposits",
        "loans",
        "currency_exchange",
        "safe_deposit_boxes",
        "business_banking",
    ];
    let n = r.range(6, 12) as usize;
    (0..n)
        .map(|i| {
            let (city, lat, lon, streets) = pick_city(r);
            let (latitude, longitude) = near(r, lat, lon);
            let street = r.pick(streets);
            let services = SERVICES
                .iter()
                .enumerate()
                .filter(|&(k, _)| k < 3 || r.chance(550))
                .map(|(_, s)| *s)
                .collect();
            Branch {
                branch_id: format!("br-{:03}", i + 1),
                name: format!("{city} branch No. {}", i + 1),
                city,
                address: format!("{street} {}, {city}", r.range(1, 240)),
                latitude,
                longitude,
                phone: format!(
                    "+7 ({}) {:03}-{:02}-{:02}",
                    phone_code(city),
                    r.range(200, 399),
                    r.range(0, 99),
                    r.range(0, 99)
                ),
                hours: Hours {
                    weekdays: if r.chance(500) {
                        "09:00-18:00"
                    } else {
                        "09:00-19:00"
                    },
                    saturday: r.chance(600).then_some("10:00-15:00"),
                    sunday: r.chance(100).then_some("10:00-14:00"),
                },
                services,
            }
        })
        .collect()
}

fn gen_atms(r: &mut Rng) -> Vec<Atm> {
    let n = r.range(15, 30) as usize;
    (0..n)
        .map(|i| {
            let (city, lat, lon, streets) = pick_city(r);
            let (latitude, longitude) = near(r, lat, lon);
            let street = r.pick(streets);
            let mut currencies = vec![Currency::Kzt];
            if r.chance(400) {
                currencies.push(Currency::Usd);
                if r.chance(500) {
                    currencies.push(Currency::Eur);
                }
            }
            Atm {
                atm_id: format!("atm-{:03}", i + 1),
                city,
                address: format!("{street} {}, {city}", r.range(1, 240)),
                latitude,
                longitude,
                hours: if r.chance(600) { "24/7" } else { "08:00-22:00" },
                cash_in: r.chance(550),
                currencies,
            }
        })
        .collect()
}

fn gen_products(r: &mut Rng) -> Vec<Product> {
    use Currency::{Kzt, Usd};
    use ProductKind::{Card, Deposit, Loan};
    // kind, name, currency, rate range (hundredths of %), term, min, max, description.
    type Row = (
        ProductKind,
        &'static str,
        Currency,
        Option<(i64, i64)>,
        Option<u16>,
        Option<i64>,
        Option<i64>,
        &'static str,
    );
    const ROWS: &[Row] = &[
        (
            Deposit,
            "Депозит «Жинақ»",
            Kzt,
            Some((1_350, 1_550)),
            Some(12),
            Some(10_000 * 100),
            None,
            "Сберегательный депозит без пополнения, капитализация ежемесячно",
        ),
        (
            Deposit,
            "Депозит «Bereke»",
            Kzt,
            Some((1_200, 1_400)),
            Some(6),
            Some(1_000 * 100),
            None,
            "Flexible deposit: top-ups and partial withdrawals allowed",
        ),
        (
            Deposit,
            "Savings USD",
            Usd,
            Some((50, 150)),
            Some(12),
            Some(100 * 100),
            None,
            "US dollar savings deposit",
        ),
        (
            Card,
            "Visa Classic",
            Kzt,
            None,
            None,
            None,
            None,
            "Debit card, cashback up to 5% with partners",
        ),
        (
            Card,
            "Mastercard Gold",
            Kzt,
            None,
            None,
            None,
            None,
            "Premium debit card, airport lounges",
        ),
        (
            Card,
            "Кредитная карта «Qazaq»",
            Kzt,
            Some((3_490, 3_990)),
            None,
            None,
            Some(3_000_000 * 100),
            "Credit card with a 55-day grace period",
        ),
        (
            Loan,
            "Потребительский кредит",
            Kzt,
            Some((2_490, 3_590)),
            Some(60),
            Some(100_000 * 100),
            Some(7_000_000 * 100),
            "Unsecured consumer loan",
        ),
        (
            Loan,
            "Автокредит",
            Kzt,
            Some((1_990, 2_490)),
            Some(84),
            Some(1_000_000 * 100),
            Some(30_000_000 * 100),
            "Car loan, new and used cars",
        ),
        (
            Loan,
            "Ипотека «Баспана»",
            Kzt,
            Some((1_650, 1_900)),
            Some(300),
            Some(5_000_000 * 100),
            Some(120_000_000 * 100),
            "Mortgage for primary housing",
        ),
    ];
    ROWS.iter()
        .enumerate()
        .map(
            |(i, &(kind, name, currency, rate, term, min, max, description))| Product {
                product_id: format!("prd-{:03}", i + 1),
                kind,
                name,
                currency,
                annual_rate: rate.map(|(lo, hi)| Money(r.range(lo / 5, hi / 5) * 5)),
                term_months: term,
                min_amount: min.map(Money),
                max_amount: max.map(Money),
                description,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bin() -> Bin {
        Bin::parse("180340012345").expect("a valid BIN")
    }

    #[test]
    fn money_formats_two_decimals() {
        assert_eq!(Money(0).to_string(), "0.00");
        assert_eq!(Money(5).to_string(), "0.05");
        assert_eq!(Money(123_456).to_string(), "1234.56");
        assert_eq!(Money(-310).to_string(), "-3.10");
    }

    #[test]
    fn between_is_inclusive_and_contiguous() {
        let d = BankData::generate(bin(), 1, 1);
        let a = &d.customers[0].accounts[0];
        let to = AS_OF - Duration::days(10);
        let from = AS_OF - Duration::days(40);
        let s = a.transactions_between(Some(from), Some(to));
        let expected = a
            .transactions
            .iter()
            .filter(|t| t.booking_date >= from && t.booking_date <= to)
            .count();
        assert_eq!(s.len(), expected);
        assert!(s
            .iter()
            .all(|t| t.booking_date >= from && t.booking_date <= to));
        assert!(a.transactions_between(Some(to), Some(from)).is_empty());
        assert_eq!(
            a.transactions_between(None, None).len(),
            a.transactions.len()
        );
    }

    #[test]
    fn prefix_property() {
        let small = BankData::generate(bin(), 9, 5);
        let large = BankData::generate(bin(), 9, 12);
        assert_eq!(small.customers[..], large.customers[..5]);
    }
}
