//! Session affinity (`sessionAffinity: ClientIP`), the part the host tests
//! cover: whether a client's recorded backend still takes its next flow.
use crate::{AffinityEntry, Backend};

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (Kubernetes'
/// default, 3 hours).
pub const DEFAULT_TIMEOUT_S: u32 = 10_800;
/// The largest timeout the API server accepts (one day).
pub const MAX_TIMEOUT_S: u32 = 86_400;

/// Does `entry` send a new flow at `now_ns` to its backend? Only if the
/// client's last new flow is at most `timeout_s` old (kube-proxy counts from
/// the last new connection, not the last packet) and the slot the entry
/// names, read from the frontend's active set (`at_slot`, None when the
/// slot is beyond the set or missing), still holds that backend: a backend
/// that left ends its clients' affinity even before the agent removes their
/// entries.
#[inline(always)]
pub fn holds(
    entry: &AffinityEntry,
    at_slot: Option<&Backend>,
    now_ns: u64,
    timeout_s: u32,
) -> bool {
    let Some(backend) = at_slot else {
        return false;
    };
    backend.addr == entry.backend_addr
        && backend.port == entry.backend_port
        && now_ns.saturating_sub(entry.last_used_ns) <= u64::from(timeout_s) * 1_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn backend(last: u8) -> Backend {
        Backend {
            addr: [10, 244, 1, last],
            port: 8080,
            pad: [0; 2],
        }
    }

    fn entry(last: u8, last_used_ns: u64) -> AffinityEntry {
        AffinityEntry {
            last_used_ns,
            backend_addr: [10, 244, 1, last],
            backend_port: 8080,
            slot: 0,
        }
    }

    #[test]
    fn a_client_back_within_the_timeout_keeps_its_backend() {
        let e = entry(7, 100 * SECOND);
        assert!(holds(&e, Some(&backend(7)), 100 * SECOND, 10));
        assert!(holds(&e, Some(&backend(7)), 110 * SECOND, 10));
    }

    #[test]
    fn a_client_back_after_the_timeout_draws_again() {
        let e = entry(7, 100 * SECOND);
        assert!(!holds(&e, Some(&backend(7)), 110 * SECOND + 1, 10));
    }

    #[test]
    fn a_backend_no_longer_at_its_slot_ends_the_affinity() {
        let e = entry(7, 100 * SECOND);
        assert!(!holds(&e, Some(&backend(8)), 100 * SECOND, 10));
        let moved_port = Backend {
            port: 9090,
            ..backend(7)
        };
        assert!(!holds(&e, Some(&moved_port), 100 * SECOND, 10));
        assert!(!holds(&e, None, 100 * SECOND, 10));
    }

    #[test]
    fn a_clock_read_before_the_entry_was_written_still_holds() {
        // Another CPU may write the entry after this one read the clock.
        let e = entry(7, 100 * SECOND);
        assert!(holds(&e, Some(&backend(7)), 100 * SECOND - 5, 10));
    }
}
