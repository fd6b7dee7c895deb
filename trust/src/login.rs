//! Logins in progress: what the callback of the identity provider must match. A started
//! login is stored under the hash of its `state`, bound to the browser that started it
//! (the hash of a random value kept in a `__Host-` cookie, so a code obtained in one
//! browser cannot be redeemed in another), and taken out exactly once.

use subtle::ConstantTimeEq;

use crate::db::{Sql, StoreError, Tx};
use crate::otp;

/// The cookie binding a login to the browser that started it.
pub const BROWSER_COOKIE: &str = "__Host-trust_login";

/// What a started login keeps until its callback.
#[derive(Debug)]
pub struct Pending {
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier.
    pub pkce_verifier: String,
}

fn state_hash(state: &str) -> [u8; 32] {
    otp::hash(b"login-state", state)
}

fn browser_hash(binding: &str) -> [u8; 32] {
    otp::hash(b"login-browser", binding)
}

/// Stores a started login until `expires_at`.
pub fn store(
    tx: &mut Tx<'_>,
    state: &str,
    browser: &str,
    pending: &Pending,
    expires_at: i64,
) -> Result<(), StoreError> {
    let now = tx.now();
    tx.execute(
        "INSERT INTO customer_logins(state_hash, browser_hash, nonce, pkce_verifier,
             created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            state_hash(state).to_vec().into(),
            browser_hash(browser).to_vec().into(),
            pending.nonce.as_str().into(),
            pending.pkce_verifier.as_str().into(),
            now.into(),
            expires_at.into(),
        ],
    )?;
    Ok(())
}

/// Takes the login `state` names out (whatever happens next, it cannot be used again);
/// `None` when it is unknown, used, expired, or was started in another browser.
pub fn take(tx: &mut Tx<'_>, state: &str, browser: &str) -> Result<Option<Pending>, StoreError> {
    let key = state_hash(state).to_vec();
    // Taken by deleting it: of two callbacks with the same state (on two replicas too),
    // only the one whose DELETE removed the row goes on.
    let row = tx.query_opt(
        "DELETE FROM customer_logins WHERE state_hash = $1
         RETURNING browser_hash, nonce, pkce_verifier, expires_at",
        &[key.into()],
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    let (bound, nonce, pkce_verifier, expires_at) =
        (row.bytes(0)?, row.text(1)?, row.text(2)?, row.int(3)?);
    let same_browser = bool::from(bound.as_slice().ct_eq(&browser_hash(browser)));
    if !same_browser || tx.now() >= expires_at {
        return Ok(None);
    }
    Ok(Some(Pending {
        nonce,
        pkce_verifier,
    }))
}

/// Deletes logins that were never finished.
pub fn purge(tx: &mut Tx<'_>) -> Result<usize, StoreError> {
    let now = tx.now();
    let n = tx.execute(
        "DELETE FROM customer_logins WHERE expires_at <= $1",
        &[now.into()],
    )?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Logins in progress (for tests and metrics).
pub fn count(sql: &mut dyn Sql) -> Result<u64, StoreError> {
    crate::db::count(sql, "SELECT COUNT(*) FROM customer_logins", &[])
}

/// The browser binding from a `Cookie` header, if present and sane.
pub fn browser_from_cookies(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == BROWSER_COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// The `Set-Cookie` value that binds a login to this browser for `max_age` seconds:
/// `__Host-` (HTTPS only, this host only, path `/`), not readable by scripts, sent on the
/// provider's top-level redirect back (`SameSite=Lax`).
pub fn browser_cookie(binding: &str, max_age: i64) -> String {
    format!("{BROWSER_COOKIE}={binding}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_binding_is_read_from_its_cookie_only() {
        assert_eq!(
            browser_from_cookies("a=1; __Host-trust_login=abc; b=2"),
            Some("abc")
        );
        assert_eq!(browser_from_cookies("trust_login=abc"), None);
        assert_eq!(browser_from_cookies("__Host-trust_login="), None);
        let cookie = browser_cookie("abc", 600);
        assert!(cookie.starts_with("__Host-trust_login=abc; Path=/; Secure; HttpOnly"));
    }

    #[test]
    fn a_login_is_taken_once_and_only_by_its_browser() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("t.db")).unwrap();
        let pending = || Pending {
            nonce: "n".into(),
            pkce_verifier: "v".into(),
        };
        db.write(100, |tx| store(tx, "s1", "b1", &pending(), 700))
            .unwrap();
        db.write(100, |tx| store(tx, "s2", "b2", &pending(), 700))
            .unwrap();
        db.write(100, |tx| store(tx, "s3", "b3", &pending(), 200))
            .unwrap();
        let took = |state: &'static str, browser: &'static str, now: i64| {
            db.write(now, |tx| take(tx, state, browser))
                .unwrap()
                .is_some()
        };
        assert!(took("s1", "b1", 150));
        assert!(
            !took("s1", "b1", 150),
            "a second callback with the same state"
        );
        assert!(!took("s2", "b1", 150), "another browser");
        assert!(!took("s2", "b2", 150), "taken out by the failed attempt");
        assert!(!took("s3", "b3", 250), "expired");
    }
}
