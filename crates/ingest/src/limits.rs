//! The bounds on what clients may hold: connections per device, a minimum body rate, and one
//! byte budget for every request body held in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Open connections per device, each capped at the same number.
pub struct DeviceSlots {
    /// Open connections by device id; an entry leaves when its count drops to zero, so the map
    /// never holds more entries than there are connections.
    open: Mutex<HashMap<String, usize>>,
    /// Most connections one device may hold.
    max: usize,
}

/// One device's connection; gives its slot back when dropped.
pub struct DeviceSlot {
    slots: Arc<DeviceSlots>,
    device: String,
}

impl DeviceSlots {
    /// At most `max` connections per device.
    pub fn new(max: usize) -> Arc<DeviceSlots> {
        Arc::new(DeviceSlots {
            open: Mutex::new(HashMap::new()),
            max,
        })
    }

    /// A slot for `device`, or `None` when it already holds `max`.
    pub fn try_take(self: &Arc<Self>, device: &str) -> Option<DeviceSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(device.to_string()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(DeviceSlot {
            slots: self.clone(),
            device: device.to_string(),
        })
    }

    /// Connections `device` holds now.
    pub fn held(&self, device: &str) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(device).copied().unwrap_or(0)
    }
}

impl Drop for DeviceSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.device) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.device);
            }
        }
    }
}

/// The minimum-rate rule for one request body: after `grace`, the body must have averaged at
/// least `min_bytes_per_sec` since it started. Bytes sent early earn time later, so a brief
/// stall on a good link is fine; a trickle is not, however often its bytes arrive.
#[derive(Debug, Clone)]
pub struct RateGuard {
    start: Instant,
    grace: Duration,
    min_bytes_per_sec: u64,
    received: u64,
}

impl RateGuard {
    /// A body starting at `start`.
    pub fn new(start: Instant, grace: Duration, min_bytes_per_sec: u64) -> RateGuard {
        RateGuard {
            start,
            grace,
            min_bytes_per_sec: min_bytes_per_sec.max(1),
            received: 0,
        }
    }

    /// Counts `n` more bytes received.
    pub fn received(&mut self, n: u64) {
        self.received = self.received.saturating_add(n);
    }

    /// The instant at which the body falls below the rate unless more bytes arrive.
    pub fn deadline(&self) -> Instant {
        let earned = Duration::from_secs(self.received / self.min_bytes_per_sec)
            + Duration::from_nanos(
                (self.received % self.min_bytes_per_sec) * 1_000_000_000 / self.min_bytes_per_sec,
            );
        self.start
            .checked_add(self.grace)
            .and_then(|t| t.checked_add(earned))
            // Beyond what Instant can represent: as good as never.
            .unwrap_or_else(|| self.start + Duration::from_secs(100 * 365 * 86_400))
    }
}

/// Bytes of request bodies all requests together may hold in memory.
#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
}

/// Bytes taken from a [`Budget`]; they return when this is dropped.
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    bytes: Arc<Semaphore>,
}

impl Budget {
    /// A budget of `total` bytes (at most `Semaphore::MAX_PERMITS`).
    pub fn new(total: u64) -> Budget {
        let total = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Budget {
            bytes: Arc::new(Semaphore::new(total)),
        }
    }

    /// Nothing held yet.
    pub fn empty(&self) -> Held {
        Held {
            permit: None,
            bytes: self.bytes.clone(),
        }
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

impl Held {
    /// Takes `n` more bytes; `false` (and nothing taken) when the budget has not that many free.
    /// Never waits: a request that cannot be served now is answered 503 rather than queued,
    /// so a waiting request holds nothing.
    pub fn grow(&mut self, n: u64) -> bool {
        if n == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(n) else {
            return false;
        };
        match self.bytes.clone().try_acquire_many_owned(n) {
            Ok(p) => {
                match self.permit.as_mut() {
                    Some(held) => held.merge(p),
                    None => self.permit = Some(p),
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.permit.as_ref().map_or(0, |p| p.num_permits() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_gets_at_most_its_share_and_gets_it_back() {
        let slots = DeviceSlots::new(2);
        let a1 = slots.try_take("a").unwrap();
        let _a2 = slots.try_take("a").unwrap();
        assert!(slots.try_take("a").is_none(), "a third connection for a");
        let _b = slots.try_take("b").expect("b is not affected by a");
        drop(a1);
        assert_eq!(slots.held("a"), 1);
        assert!(slots.try_take("a").is_some());
        drop(_a2);
        drop(_b);
        // Entries leave with their last connection: the map cannot grow without bound.
        assert!(slots.open.lock().unwrap().len() <= 1);
    }

    #[test]
    fn the_rate_rule_cuts_a_trickle_but_not_a_pause_after_a_burst() {
        let t0 = Instant::now();
        let mut g = RateGuard::new(t0, Duration::from_secs(10), 1000);
        assert_eq!(g.deadline(), t0 + Duration::from_secs(10), "grace only");
        // One byte every 15 s earns 1 ms each: the deadline stays where the grace ends.
        for _ in 0..4 {
            g.received(1);
        }
        assert_eq!(
            g.deadline(),
            t0 + Duration::from_secs(10) + Duration::from_millis(4)
        );
        // A 5 000-byte burst earns 5 s of quiet.
        g.received(4996);
        assert_eq!(g.deadline(), t0 + Duration::from_secs(15));
        let huge = RateGuard {
            received: u64::MAX,
            ..RateGuard::new(t0, Duration::from_secs(3600), 1)
        };
        assert!(huge.deadline() > t0 + Duration::from_secs(3600));
    }

    #[test]
    fn the_budget_is_shared_and_returned() {
        let b = Budget::new(100);
        let mut one = b.empty();
        assert!(one.grow(60));
        let mut two = b.empty();
        assert!(!two.grow(41), "over the budget");
        assert_eq!(two.bytes(), 0, "a refused grow takes nothing");
        assert!(two.grow(40));
        assert!(one.grow(0));
        assert!(!one.grow(1));
        drop(one);
        assert_eq!(b.available(), 60);
        assert!(
            !b.empty().grow(u64::MAX),
            "no overflow into a small request"
        );
        drop(two);
        assert_eq!(b.available(), 100);
    }
}
