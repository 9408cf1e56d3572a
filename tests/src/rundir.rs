//! Per-run scratch directories: `$LAGSCALE_RUN_DIR` (default `$TMPDIR/lagscale-run`) holds one
//! directory per harness user, named after the owning test process. Services keep their data,
//! logs and pidfiles there. A directory is removed when its [`RunDir`] drops; directories left
//! by a process that died without unwinding (SIGKILL, abort) are swept, and their services
//! killed by PID, the next time any harness starts.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{IoContext, Result};

static SWEEP: Once = Once::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

fn root() -> PathBuf {
    std::env::var_os("LAGSCALE_RUN_DIR").map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("lagscale-run"))
}

#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    /// A fresh directory for `label` (e.g. the test's name).
    pub fn new(label: &str) -> Result<Self> {
        let root = root();
        SWEEP.call_once(|| sweep_orphans(&root));
        let label: String =
            label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let path = root.join(format!("{}-{}-{label}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&path).ctx(|| format!("create {}", path.display()))?;
        let keep = std::env::var_os("LAGSCALE_KEEP_RUN_DIR").is_some_and(|v| v == "1");
        Ok(Self { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created if needed.
    pub fn sub(&self, name: &str) -> Result<PathBuf> {
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

/// Kills services recorded in pidfiles of run directories whose owner process is gone.
pub fn sweep_orphans(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if alive(owner) {
            continue;
        }
        for pidfile in walk_pidfiles(&entry.path()) {
            let Ok(text) = std::fs::read_to_string(&pidfile) else { continue };
            let mut parts = text.split_whitespace();
            let (Some(pid), Some(program)) = (parts.next().and_then(|p| p.parse::<i32>().ok()), parts.next()) else {
                continue;
            };
            // Only kill a PID that still runs the recorded program (PIDs get reused).
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            if exe.as_deref() == Some(Path::new(program)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

fn walk_pidfiles(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "pid") {
                found.push(p);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn sweep_kills_services_of_a_dead_owner_and_spares_live_ones() {
        let root = tempfile::tempdir().expect("tempdir");
        // A PID that certainly belonged to a process that is gone now.
        let mut gone = Command::new("true").spawn().expect("spawn true");
        let dead_owner = gone.id();
        gone.wait().expect("wait");

        let sleep = PathBuf::from("/usr/bin/sleep");
        let mut orphan = Command::new(&sleep).arg("300").spawn().expect("spawn orphan");
        let mut spared = Command::new(&sleep).arg("300").spawn().expect("spawn spared");

        let dead_dir = root.path().join(format!("{dead_owner}-0-dead/kafka"));
        std::fs::create_dir_all(&dead_dir).expect("mkdir");
        std::fs::write(dead_dir.join("kafka.pid"), format!("{} {}\n", orphan.id(), sleep.display())).expect("pidfile");
        let live_dir = root.path().join(format!("{}-0-live", std::process::id()));
        std::fs::create_dir_all(&live_dir).expect("mkdir");
        std::fs::write(live_dir.join("svc.pid"), format!("{} {}\n", spared.id(), sleep.display())).expect("pidfile");

        sweep_orphans(root.path());

        let status = orphan.wait().expect("orphan reaped");
        assert!(!status.success(), "orphan was killed: {status}");
        assert!(!root.path().join(format!("{dead_owner}-0-dead")).exists());
        assert!(live_dir.exists());
        assert!(matches!(spared.try_wait(), Ok(None)), "the live owner's service still runs");
        let _ = spared.kill();
        let _ = spared.wait();
    }
}
