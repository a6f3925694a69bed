//! Child processes of a test, stopped when the guard goes: a failed
//! assertion must not leave servers running into the next test or run.

use std::process::Child;
use std::time::{Duration, Instant};

/// A child process, SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.0.as_mut()
    }

    /// SIGKILL and reap now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if the process is still there after `grace`.
    /// A signal, not a `kill` process: nothing is forked, so nothing can
    /// hang in exec on files a test holds on a mount whose daemon is down.
    pub fn terminate(&mut self, grace: Duration) {
        let Some(mut c) = self.0.take() else { return };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Gives the child up without stopping it.
    pub fn into_inner(mut self) -> Option<Child> {
        self.0.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn alive(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    }

    #[test]
    fn a_dropped_guard_kills_its_child_and_terminate_stops_one_politely() {
        let guard = ChildGuard::new(Command::new("sleep").arg("60").spawn().unwrap());
        let pid = guard.id().unwrap();
        assert!(alive(pid));
        drop(guard);
        assert!(!alive(pid), "the child outlived its guard");

        let mut polite = ChildGuard::new(Command::new("sleep").arg("60").spawn().unwrap());
        let pid = polite.id().unwrap();
        let started = Instant::now();
        polite.terminate(Duration::from_secs(10));
        assert!(!alive(pid));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM was not enough"
        );
    }
}
