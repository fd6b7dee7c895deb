//! The hub's hot in-memory consent store: compact consent records built for
//! lookups on the request path, loaded from a snapshot and updated by versioned deltas.
//!
//! - [`ConsentStore`]: `get` by consent id returns a [`Consent`] handle (no
//!   allocation); [`ConsentStore::apply`] / [`ConsentStore::apply_batch`] take the
//!   control plane's versioned [`Change`]s; [`ConsentStore::expire_due`] flips
//!   expired consents.
//! - Snapshots: [`ConsentStore::load`] reads `.jsonl` or `.snap` files,
//!   [`ConsentStore::write_snapshot`] and [`write_snapshot`] write `.snap`,
//!   [`convert`] turns one into the other. The formats are described in the
//!   `snapshot` module's sources and the crate README.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod change;
mod consent;
mod record;
mod segment;
mod snapshot;
mod store;
pub mod types;

pub use change::{Applied, ApplyError, BatchError, BatchSummary, Change, ChangeOp};
pub use consent::Consent;
pub use record::{
    ConsentRecord, RecordError, MAX_ACCOUNTS, MAX_ACCOUNT_LEN, MAX_CUSTOMER_LEN, MAX_ID_LEN,
    MAX_PROVIDERS, MAX_PURPOSE_LEN,
};
pub use segment::CapacityError;
pub use snapshot::{convert, write_snapshot, LoadError, Origin, WriteError, FORMAT_VERSION, MAGIC};
pub use store::{ConsentStore, StoreError};
pub use types::{Bin, ConsentStatus, ParseBinError, Permission, Permissions};
