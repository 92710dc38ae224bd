//! The sign-in rate limits (docs/review.md, "Rate limits") as pure functions of the failures
//! recorded and the time: the database keeps the counts, these decide.

use std::collections::HashMap;
use std::net::IpAddr;

/// Failures in a row before a name is locked.
pub const NAME_FREE_FAILURES: u32 = 5;
/// The first lock.
pub const NAME_FIRST_LOCK_SECS: i64 = 30;
/// The longest lock.
pub const NAME_MAX_LOCK_SECS: i64 = 15 * 60;
/// Failures of one address within [`ADDRESS_WINDOW_SECS`] before it is refused.
pub const ADDRESS_MAX_FAILURES: usize = 20;
/// The address window.
pub const ADDRESS_WINDOW_SECS: i64 = 10 * 60;

/// How long a name with `failures` failures in a row, the last at `last_failure` (unix
/// seconds), stays locked after `now`: `None` when it may try. Five failures lock it for 30 s,
/// each further one doubles that, up to 15 minutes.
pub fn name_retry_after(failures: u32, last_failure: i64, now: i64) -> Option<i64> {
    if failures < NAME_FREE_FAILURES {
        return None;
    }
    let doublings = (failures - NAME_FREE_FAILURES).min(16);
    let lock = (NAME_FIRST_LOCK_SECS << doublings).min(NAME_MAX_LOCK_SECS);
    let until = last_failure.saturating_add(lock);
    (until > now).then_some(until - now)
}

/// How long an address whose failures were at `times` (unix seconds, any order) stays refused
/// after `now`: 20 failures within 10 minutes refuse it until the oldest of those 20 is 10
/// minutes old.
pub fn address_retry_after(times: &[i64], now: i64) -> Option<i64> {
    let mut recent: Vec<i64> = times
        .iter()
        .copied()
        .filter(|t| *t > now - ADDRESS_WINDOW_SECS && *t <= now)
        .collect();
    if recent.len() < ADDRESS_MAX_FAILURES {
        return None;
    }
    recent.sort_unstable();
    // The count falls below the limit when this one leaves the window.
    let pivot = recent[recent.len() - ADDRESS_MAX_FAILURES];
    Some((pivot + ADDRESS_WINDOW_SECS - now).max(1))
}

/// The address a client's failures count against: an IPv4 address, or an IPv6 client's /64
/// network (one host is commonly given a whole /64, so counting single IPv6 addresses would
/// give it 2^64 addresses to spread its attempts over). An IPv4-mapped IPv6 address is its
/// IPv4 address.
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let net = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{net}/64")
            }
        },
    }
}

/// Most locks remembered by [`Refusals`] at once.
pub const MAX_REMEMBERED_LOCKS: usize = 10_000;

/// Which refusals go into the audit log: the first of each lock. A locked name or address
/// hammered on is refused unchecked each time; writing (and fsyncing) an entry to a log that
/// can never shrink for each of those would let anyone without an account fill the server's
/// disk. The first refusal of a lock says who was locked, why and for how long.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Lock (`name:…` or `address:…`) → the end of the lock already audited (unix seconds).
    until: HashMap<String, i64>,
}

impl Refusals {
    /// Whether the refusal of `lock` at `now`, locked for `retry_after` more seconds, is the
    /// first of its lock (and so to be audited). Bounded: past [`MAX_REMEMBERED_LOCKS`] ended
    /// locks are forgotten, and if every remembered lock is still running, all are (each is
    /// then audited once more, so the entries stay at most twice the locks).
    pub fn first_of_lock(&mut self, lock: &str, now: i64, retry_after: i64) -> bool {
        if self.until.get(lock).is_some_and(|until| *until > now) {
            return false;
        }
        if self.until.len() >= MAX_REMEMBERED_LOCKS {
            self.until.retain(|_, until| *until > now);
            if self.until.len() >= MAX_REMEMBERED_LOCKS {
                self.until.clear();
            }
        }
        self.until
            .insert(lock.to_string(), now.saturating_add(retry_after));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_locked_after_five_failures_doubling_up_to_fifteen_minutes() {
        let t = 1_000_000;
        for f in 0..5 {
            assert_eq!(name_retry_after(f, t, t), None, "{f} failures");
        }
        assert_eq!(name_retry_after(5, t, t), Some(30));
        assert_eq!(name_retry_after(5, t, t + 29), Some(1));
        assert_eq!(name_retry_after(5, t, t + 30), None, "the lock ends");
        assert_eq!(name_retry_after(6, t, t), Some(60));
        assert_eq!(name_retry_after(7, t, t), Some(120));
        assert_eq!(name_retry_after(10, t, t), Some(900), "capped");
        assert_eq!(name_retry_after(u32::MAX, t, t), Some(900), "no overflow");
    }

    #[test]
    fn an_address_is_refused_for_the_rest_of_the_window_after_twenty_failures() {
        let now = 10_000;
        let nineteen: Vec<i64> = (0..19).map(|i| now - 100 + i).collect();
        assert_eq!(address_retry_after(&nineteen, now), None);
        let mut twenty = nineteen.clone();
        twenty.push(now);
        // The oldest of the twenty is 100 s old: 500 s of the window are left.
        assert_eq!(address_retry_after(&twenty, now), Some(500));
        assert_eq!(address_retry_after(&twenty, now + 500), None);
        // Old failures do not count.
        let old: Vec<i64> = (0..50).map(|i| now - 700 - i).collect();
        assert_eq!(address_retry_after(&old, now), None);
    }

    #[test]
    fn an_ipv6_client_counts_as_its_slash_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("10.1.2.3"), "10.1.2.3");
        assert_eq!(key("::ffff:10.1.2.3"), "10.1.2.3");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff::9"), key("2001:db8:1:2::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn only_the_first_refusal_of_a_lock_is_audited() {
        let mut r = Refusals::default();
        assert!(r.first_of_lock("name:bob", 100, 30));
        assert!(!r.first_of_lock("name:bob", 101, 29));
        assert!(!r.first_of_lock("name:bob", 129, 1));
        assert!(
            r.first_of_lock("address:10.0.0.1", 101, 500),
            "another lock"
        );
        assert!(r.first_of_lock("name:bob", 130, 60), "the next lock");
        // Bounded: when full of running locks, it starts again rather than grow.
        for i in 0..MAX_REMEMBERED_LOCKS + 10 {
            assert!(r.first_of_lock(&format!("name:n{i}"), 200, 900));
        }
        assert!(r.until.len() <= MAX_REMEMBERED_LOCKS);
    }
}
