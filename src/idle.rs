//! When a shim nobody needs any more ends itself.
//!
//! containerd normally ends a shim with Shutdown after the last Delete. When containerd lost
//! its state (its state directory wiped, a reinstall, a crash at the wrong moment: containerd
//! issues #12344 and #13692), nobody will ever call again, and the shim would stay forever.
//! It exits by itself only when every one of these holds, so it never takes a live container or
//! an undelivered exit with it.

use std::time::Duration;

/// What the shim knows about itself at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// Processes with a pid whose exit is not known.
    pub live_processes: usize,
    /// Exits seen but not yet told (held for their turn).
    pub untold_exits: usize,
    /// Events queued and not yet delivered to containerd.
    pub queued_events: usize,
    /// Containers whose bundle directory still exists.
    pub bundles_present: usize,
    /// Creates in flight or rolling back.
    pub in_flight: usize,
    /// Time since containerd last called (or since the shim started).
    pub since_last_call: Duration,
}

const DEFAULT_LIMIT: Duration = Duration::from_secs(600);

/// How long without a call before an otherwise idle shim exits: RUSTSHIM_IDLE_EXIT_SECS in
/// containerd's environment (0: never), default 10 minutes.
pub fn limit() -> Option<Duration> {
    match std::env::var("RUSTSHIM_IDLE_EXIT_SECS").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(s)),
        None => Some(DEFAULT_LIMIT),
    }
}

/// How often an idle shim checks: often enough to exit soon after the limit, rarely enough
/// that a shim waiting for its limit costs next to nothing. A shim with a live process never
/// runs the check at all.
pub fn check_every(limit: Duration) -> Duration {
    (limit / 2).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Ok: exit now. Err: why not.
pub fn verdict(f: &Facts, limit: Duration) -> Result<(), &'static str> {
    if f.live_processes > 0 {
        return Err("a container process lives");
    }
    if f.untold_exits > 0 || f.queued_events > 0 {
        return Err("an exit or event is not delivered yet");
    }
    if f.in_flight > 0 {
        return Err("a create is in flight");
    }
    if f.bundles_present > 0 {
        return Err("a bundle still exists");
    }
    if f.since_last_call < limit {
        return Err("containerd called recently");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_only_when_nothing_is_left() {
        let limit = Duration::from_secs(600);
        let idle = Facts { since_last_call: limit, ..Default::default() };
        assert_eq!(verdict(&idle, limit), Ok(()));
        let not = |f: Facts| verdict(&f, limit).unwrap_err();
        assert_eq!(not(Facts { live_processes: 1, ..idle.clone() }), "a container process lives");
        assert!(not(Facts { untold_exits: 1, ..idle.clone() }).contains("exit"));
        assert!(not(Facts { queued_events: 1, ..idle.clone() }).contains("event"));
        assert!(not(Facts { in_flight: 1, ..idle.clone() }).contains("create"));
        assert!(not(Facts { bundles_present: 1, ..idle.clone() }).contains("bundle"));
        assert!(not(Facts { since_last_call: limit - Duration::from_secs(1), ..idle.clone() }).contains("recently"));
        // a live process wins over everything, even a very long silence
        assert!(verdict(&Facts { live_processes: 1, since_last_call: limit * 100, ..idle }, limit).is_err());
    }

    #[test]
    fn checks_are_rare() {
        assert_eq!(check_every(Duration::from_secs(600)), Duration::from_secs(60));
        assert_eq!(check_every(Duration::from_secs(2)), Duration::from_secs(1));
    }
}
