//! The shared store's key names: the same in every gateway (no per-process hashing), with
//! no customer data in them (participants' BINs, a hash of the consent id and route), and
//! designed for Redis Cluster: every key of a consent-route request carries the API user's
//! hash tag `{u:BIN}`, so one script sees them all in one slot. The per-IP key of open data
//! has its own tag, so an open-data request spans two slots (served by a single primary,
//! the deployment this hub supports; docs/limits.md).

use std::fmt::Write as _;
use std::net::IpAddr;

use consent_cache::Bin;

use crate::route::RouteId;

/// 128 bits of SHA-256 over a consent id and a route: the consent × route key, the same
/// in every process.
pub fn consent_route_hash(consent_id: &str, route: RouteId) -> u128 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(consent_id.as_bytes());
    ctx.update(&[0]);
    ctx.update(route.template().as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(first)
}

/// Builds key names under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyNames {
    prefix: String,
}

fn bin_str(b: Bin) -> String {
    String::from_utf8_lossy(&b.digits()).into_owned()
}

impl KeyNames {
    /// Keys under `prefix` (`[limits.store] key_prefix`).
    pub fn new(prefix: &str) -> KeyNames {
        KeyNames {
            prefix: prefix.to_string(),
        }
    }

    fn user_tag(&self, user: Bin) -> String {
        format!("{}:{{u:{}}}", self.prefix, bin_str(user))
    }

    /// Per API user.
    pub fn user(&self, user: Bin) -> String {
        let mut k = self.user_tag(user);
        k.push_str(":user");
        k
    }

    /// Per API user × provider.
    pub fn user_provider(&self, user: Bin, provider: Bin) -> String {
        let mut k = self.user_tag(user);
        let _ = write!(k, ":up:{}", bin_str(provider));
        k
    }

    /// Per consent × route ([`consent_route_hash`]).
    pub fn consent_route(&self, user: Bin, consent_route: u128) -> String {
        let mut k = self.user_tag(user);
        let _ = write!(k, ":cr:{consent_route:032x}");
        k
    }

    /// The monthly count of a consent × route in month `yyyymm`.
    pub fn monthly(&self, user: Bin, yyyymm: u32, consent_route: u128) -> String {
        let mut k = self.user_tag(user);
        let _ = write!(k, ":m:{yyyymm}:{consent_route:032x}");
        k
    }

    /// Per client IP (IPv6: its /64) on open data.
    pub fn ip(&self, ip: IpAddr) -> String {
        match ip.to_canonical() {
            IpAddr::V4(v4) => format!("{}:{{ip:{:08x}}}:ip", self.prefix, u32::from(v4)),
            IpAddr::V6(v6) => {
                let prefix64 = (u128::from(v6) >> 64) as u64;
                format!("{}:{{ip6:{prefix64:016x}}}:ip", self.prefix)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn every_key_of_a_consent_route_request_shares_the_users_slot() {
        let k = KeyNames::new("hub");
        let u = Bin::parse("100000000001").unwrap();
        let p = Bin::parse("200000000001").unwrap();
        let h = consent_route_hash("c-1", RouteId::Balances);
        let keys = [
            k.user(u),
            k.user_provider(u, p),
            k.consent_route(u, h),
            k.monthly(u, 202612, h),
        ];
        assert!(keys.iter().all(|key| slot_tag(key) == "u:100000000001"));
        assert_eq!(keys[0], "hub:{u:100000000001}:user");
        assert_eq!(keys[1], "hub:{u:100000000001}:up:200000000001");
        assert!(keys[3].starts_with("hub:{u:100000000001}:m:202612:"));
        assert!(!keys.iter().any(|key| key.contains("c-1")));
    }

    #[test]
    fn consent_route_hashes_are_stable_and_distinct() {
        let a = consent_route_hash("c-1", RouteId::Balances);
        assert_eq!(a, consent_route_hash("c-1", RouteId::Balances));
        assert_ne!(a, consent_route_hash("c-1", RouteId::Accounts));
        assert_ne!(a, consent_route_hash("c-2", RouteId::Balances));
        // The separator keeps ("ab", route) and ("a", "b…") apart.
        assert_ne!(
            consent_route_hash("a", RouteId::Accounts),
            consent_route_hash("a/", RouteId::Accounts)
        );
    }

    #[test]
    fn ip_keys_group_ipv6_by_its_64_and_map_ipv4_mapped_addresses() {
        let k = KeyNames::new("hub");
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(k.ip(v4), k.ip(mapped));
        assert_eq!(k.ip(v4), "hub:{ip:c0000201}:ip");
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(k.ip(a), k.ip(b));
        assert_ne!(k.ip(a), k.ip(c));
    }
}
