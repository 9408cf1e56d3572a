//! One service process: spawned with its output appended to a log file, its PID recorded in a
//! pidfile (so a later run can reap it if this test process is SIGKILLed), stopped by PID with
//! SIGTERM then SIGKILL, and always stopped on drop, including during a panic's unwinding.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::{Error, IoContext, Result};

#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log: PathBuf,
    pidfile: PathBuf,
    child: Option<Child>,
}

impl ServiceProcess {
    /// Starts `program args` with stdout and stderr appended to `DIR/NAME.log`.
    pub fn spawn(name: &str, program: &Path, args: Vec<OsString>, dir: &Path) -> Result<Self> {
        Self::spawn_with_env(name, program, args, Vec::new(), dir)
    }

    /// [`ServiceProcess::spawn`] with extra environment variables (kept for restarts).
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: Vec<OsString>,
        env: Vec<(OsString, OsString)>,
        dir: &Path,
    ) -> Result<Self> {
        let mut process = Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            env,
            log: dir.join(format!("{name}.log")),
            pidfile: dir.join(format!("{name}.pid")),
            child: None,
        };
        process.start()?;
        Ok(process)
    }

    fn start(&mut self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .ctx(|| format!("open {}", self.log.display()))?;
        let err = log.try_clone().ctx(|| format!("clone {}", self.log.display()))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .ctx(|| format!("spawn {} ({})", self.name, self.program.display()))?;
        // "pid program" lets the orphan sweep check the PID still belongs to our program.
        std::fs::write(&self.pidfile, format!("{} {}\n", child.id(), self.program.display()))
            .ctx(|| format!("write {}", self.pidfile.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The PID while the process runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// Errors with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(self.exited("stopped"));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                Err(self.exited(&status.to_string()))
            }
            Err(e) => Err(Error::Io { what: format!("wait for {}", self.name), source: e }),
        }
    }

    fn exited(&self, status: &str) -> Error {
        Error::Exited {
            service: self.name.clone(),
            status: status.to_owned(),
            log: self.log.clone(),
            log_tail: self.log_tail(30),
        }
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        let Some(pid) = self.pid() else { return Ok(()) };
        kill(Pid::from_raw(pid), signal).map_err(|source| Error::Signal { pid, source })
    }

    /// SIGSTOP: the process stops with its sockets open and answers nothing (a stalled disk, a
    /// paused VM, a long GC), which its peers only notice by their own timeouts.
    pub fn freeze(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// SIGCONT: back from [`ServiceProcess::freeze`].
    pub fn thaw(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let pid = Pid::from_raw(child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    let _ = std::fs::remove_file(&self.pidfile);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&self.pidfile);
    }

    /// `kill -9`: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&self.pidfile);
        }
    }

    /// Starts the same command again (after `stop` or `kill`), appending to the same log.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop(Duration::from_secs(10));
        }
        self.start()
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    last_lines(&String::from_utf8_lossy(&buf), lines)
}

/// The last `lines` lines of `text`, in order.
pub fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
