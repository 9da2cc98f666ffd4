//! [`Trigger`]: wakes the poller thread (D-Bus `CheckForUpdate()`, a consent answer) or stops it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Wake {
    poll: bool,
    stop: bool,
}

/// Wakes the poller: [`Trigger::fire`] makes it poll at once. Cheap to clone.
#[derive(Clone, Default)]
pub struct Trigger(Arc<(Mutex<Wake>, Condvar)>);

impl Trigger {
    /// Polls the server now (returns at once; the poll happens on the poller's thread).
    pub fn fire(&self) {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).poll = true;
        self.0.1.notify_all();
    }

    /// The trigger as a plain callback, for APIs that take one (D-Bus `CheckForUpdate()`).
    pub fn callback(&self) -> Arc<dyn Fn() + Send + Sync> {
        let t = self.clone();
        Arc::new(move || t.fire())
    }

    pub(super) fn stop(&self) {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        self.0.1.notify_all();
    }

    /// Waits up to `timeout`; returns (poll requested, stop requested) and clears the poll request.
    pub(super) fn wait(&self, timeout: Duration) -> (bool, bool) {
        let guard = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) =
            self.0.1.wait_timeout_while(guard, timeout, |w| !w.poll && !w.stop).unwrap_or_else(|e| e.into_inner());
        let r = (guard.poll, guard.stop);
        guard.poll = false;
        r
    }
}

impl std::fmt::Debug for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trigger")
    }
}
