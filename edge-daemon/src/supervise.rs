//! The service manager's side (systemd, `Type=notify`; `sd_notify(3)`): the daemon says when it
//! is ready (every interface open, the store open, HTTP listening), when it reloads and when it
//! stops, and feeds the watchdog only while every capture thread and the pipeline thread turn
//! their loops. A thread that hangs (a deadlock, a read that never returns) stops the pings,
//! and systemd restarts the service after `WatchdogSec`. An interface that went away does not
//! stop them: its thread turns while it waits for the interface (reported as `up` 0 in the
//! metrics), and restarting would not bring the link back.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use crate::metrics::Shared;
use sd_notify::NotifyState;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot tell the service manager {states:?}: {e}");
    }
}

/// Startup is done.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (followed by [`ready`] when it is done, applied or refused).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// Shutdown begins.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The loops the watchdog watches, and their turns when last looked at.
#[derive(Debug, Default)]
pub struct Progress {
    last: Vec<(String, u64)>,
}

impl Progress {
    /// The loops among `now` (name, turns) that have not turned since the last call; a loop
    /// seen for the first time has turned.
    pub fn stalled(&mut self, now: Vec<(String, u64)>) -> Vec<String> {
        let stalled = now
            .iter()
            .filter(|(name, turns)| self.last.iter().any(|(n, t)| n == name && t == turns))
            .map(|(name, _)| name.clone())
            .collect();
        self.last = now;
        stalled
    }
}

/// Every loop's turns: the pipeline's and each capture thread's.
fn turns(shared: &Shared) -> Vec<(String, u64)> {
    let mut v = vec![("pipeline".to_string(), shared.pipeline_turns.load(Ordering::Relaxed))];
    if let Ok(ifaces) = shared.interfaces.read() {
        for c in ifaces.iter() {
            v.push((format!("capture {}", c.name), c.turns.load(Ordering::Relaxed)));
        }
    }
    v
}

/// Feed the watchdog at half its timeout while every loop turns (`WATCHDOG_USEC` set by the
/// service manager); returns at once when it asked for none.
pub async fn watchdog(shared: Arc<Shared>) {
    let Some(timeout) = sd_notify::watchdog_enabled() else { return };
    let every = (timeout / 2).max(Duration::from_millis(50));
    tracing::info!("watchdog: pinging every {every:?} while capture and the pipeline turn");
    let mut progress = Progress::default();
    progress.stalled(turns(&shared));
    loop {
        tokio::time::sleep(every).await;
        let stalled = progress.stalled(turns(&shared));
        if stalled.is_empty() {
            notify(&[NotifyState::Watchdog]);
        } else {
            tracing::error!(
                "watchdog: not pinged, {} made no progress in {every:?}",
                stalled.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    #[test]
    fn test_a_loop_that_did_not_turn_is_named_until_it_turns_again() {
        let mut p = Progress::default();
        assert!(p.stalled(at(&[("pipeline", 5), ("capture eth0", 9)])).is_empty());
        assert_eq!(p.stalled(at(&[("pipeline", 6), ("capture eth0", 9)])), ["capture eth0"]);
        assert_eq!(p.stalled(at(&[("pipeline", 6), ("capture eth0", 9)])).len(), 2);
        // A new interface has turned; one gone is forgotten.
        assert!(p.stalled(at(&[("pipeline", 7), ("capture eth1", 0)])).is_empty());
    }
}
