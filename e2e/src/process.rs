//! Child processes that cannot outlive their owner.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustix::process::{Pid, Signal};

/// How long a process gets to exit after SIGTERM before the group is killed.
const GRACE: Duration = Duration::from_secs(5);

/// A running component with stdout and stderr appended to a log file.
///
/// The child leads its own process group, so dropping the `Process` stops the child
/// and everything it started; it also receives SIGKILL if the test process itself dies.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command`, logging to `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // async-signal-safe system call (prctl).
        unsafe {
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_path_buf(),
        })
    }

    /// The process ID (also the process group ID).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Fails with [`Exited`], carrying the end of the log, if the process has exited:
    /// readiness loops call this so a crash is reported at once rather than as a time-out.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            return Err(Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log_tail: tail(&self.log, 30),
            }
            .into());
        }
        Ok(())
    }

    /// Kills the process group at once (SIGKILL), as a crash or the OOM killer would, and
    /// reaps the child.
    pub fn kill(&mut self) {
        if let Some(pgid) = Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        }
        let _ = self.child.wait();
    }

    /// Stops the process group: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let Some(pgid) = Pid::from_raw(self.child.id() as i32) else {
            return;
        };
        if self.child.try_wait().ok().flatten().is_some() {
            // The leader is gone; its group may still have members.
            let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
            return;
        }
        let _ = rustix::process::kill_process_group(pgid, Signal::TERM);
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A component exited while it was expected to run. [`crate::wait::until`] stops
/// waiting at once when a probe fails with this error.
#[derive(Debug, thiserror::Error)]
#[error("{name} exited ({status}); last log lines:\n{log_tail}")]
pub struct Exited {
    name: String,
    status: String,
    log_tail: String,
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`), in KiB; `None` once the
/// process is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        // Signal 0 checks existence; a zombie would still count, so only use this for
        // processes whose parent (the shell) reaps them or that we reaped.
        std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    }

    #[test]
    fn drop_stops_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let mut command = Command::new("sh");
        // The parent-death signal is not inherited across fork, so only the group kill
        // reaches the backgrounded grandchild.
        command.arg("-c").arg(format!(
            "sleep 300 & echo $! > {}; wait",
            pid_file.display()
        ));
        let process = Process::spawn("sh", command, &dir.path().join("sh.log")).unwrap();
        let child = process.id() as i32;
        let grandchild = loop {
            if let Ok(pid) = std::fs::read_to_string(&pid_file).map(|s| s.trim().parse::<i32>())
                && let Ok(pid) = pid
            {
                break pid;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(alive(grandchild));
        drop(process);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(child), "the child is stopped");
        assert!(
            !alive(grandchild),
            "the grandchild in the same group is stopped too"
        );
    }

    #[test]
    fn a_crashed_process_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.arg("-c").arg("echo 'fatal: bad flag'; exit 3");
        let mut process =
            Process::spawn("crasher", command, &dir.path().join("crasher.log")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let err = loop {
            match process.ensure_running() {
                Err(e) => break e.to_string(),
                Ok(()) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(()) => panic!("the process never exited"),
            }
        };
        assert!(err.contains("crasher exited"), "{err}");
        assert!(err.contains("fatal: bad flag"), "{err}");
    }

    #[tokio::test]
    async fn waiting_on_a_crashed_process_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.arg("-c").arg("exit 1");
        let mut process =
            Process::spawn("crasher", command, &dir.path().join("crasher.log")).unwrap();
        let started = Instant::now();
        let result: anyhow::Result<()> = crate::wait::until(
            "never",
            Duration::from_secs(60),
            Duration::from_millis(10),
            || {
                let running = process.ensure_running();
                async move {
                    running?;
                    Ok(None)
                }
            },
        )
        .await;
        assert!(result.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gave up after {:?}",
            started.elapsed()
        );
    }
}
