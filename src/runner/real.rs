//! The only place in iscsimple that spawns processes.
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::Instant;

use super::{Arg, Cmd, Output, Program, RunError, Runner, SEARCH_DIRS};

/// Spawns real programs found in [`SEARCH_DIRS`].
#[derive(Debug, Default)]
pub struct RealRunner {
    found: Mutex<HashMap<Program, PathBuf>>,
}

impl RealRunner {
    /// A runner that resolves programs on first use.
    pub fn new() -> RealRunner {
        RealRunner::default()
    }

    fn path_of(&self, program: Program) -> Result<PathBuf, RunError> {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = found.get(&program) {
            return Ok(p.clone());
        }
        let p = SEARCH_DIRS
            .iter()
            .map(|d| Path::new(d).join(program.name()))
            .find(|p| is_executable(p))
            .ok_or(RunError::Missing { program })?;
        found.insert(program, p.clone());
        Ok(p)
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn drain(mut r: impl Read + Send + 'static, tx: mpsc::Sender<()>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(());
        String::from_utf8_lossy(&buf).into_owned()
    })
}

impl Runner for RealRunner {
    fn spawn_self_detached(&self, args: &[String]) -> Result<u32, RunError> {
        use std::os::unix::process::CommandExt;
        let exe = PathBuf::from("/proc/self/exe");
        let path = std::fs::read_link(&exe).unwrap_or(exe);
        let child = Command::new(&path)
            .args(args)
            .env_clear()
            .env("LC_ALL", "C")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|source| RunError::Spawn {
                path: path.clone(),
                source,
            })?;
        tracing::info!(pid = child.id(), args = ?args, "watcher started");
        Ok(child.id())
    }

    fn verify(&self, programs: &[Program]) -> Result<(), RunError> {
        programs
            .iter()
            .try_for_each(|p| self.path_of(*p).map(|_| ()))
    }

    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        let shown = cmd.display();
        let span = tracing::debug_span!("cmd", program = %cmd.program, command = %shown);
        let _enter = span.enter();
        let path = self.path_of(cmd.program)?;
        let args: Vec<&str> = cmd
            .args
            .iter()
            .map(|a| match a {
                Arg::Plain(s) | Arg::Secret(s) => s.as_str(),
            })
            .collect();
        crate::crash::point("run", &shown);
        let start = Instant::now();
        // A clean environment: the caller's (xl, libvirt, udev) may hold anything.
        let mut child = Command::new(&path)
            .args(&args)
            .env_clear()
            .env("LC_ALL", "C")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            // lvm warns on stderr about every descriptor xl or libvirt left open
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .envs(cmd.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RunError::Spawn {
                path: path.clone(),
                source,
            })?;
        // Read both pipes at once: a child that fills one while we wait on the
        // other would block forever.
        let (tx, rx) = mpsc::channel();
        let out = drain(child.stdout.take().expect("stdout was piped"), tx.clone());
        let err = drain(child.stderr.take().expect("stderr was piped"), tx);
        let mut closed = 0;
        let mut timed_out = false;
        while closed < 2 {
            let left = cmd.timeout.saturating_sub(start.elapsed());
            match rx.recv_timeout(left) {
                Ok(()) => closed += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    timed_out = true;
                    let _ = child.kill();
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = child.wait().map_err(|source| RunError::Spawn {
            path: path.clone(),
            source,
        })?;
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        let elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        if timed_out {
            tracing::warn!(elapsed_ms, "command timed out");
            return Err(RunError::Timeout {
                command: shown,
                after: cmd.timeout,
            });
        }
        match status.code() {
            Some(0) => {
                tracing::debug!(elapsed_ms, "command ok");
                Ok(Output {
                    code: 0,
                    stdout,
                    stderr,
                })
            }
            code => {
                tracing::debug!(elapsed_ms, ?code, stderr = %stderr.trim(), "command failed");
                Err(RunError::Failed {
                    command: shown,
                    code,
                    signal: status.signal(),
                    stderr: stderr.trim().to_string(),
                    stdout: stdout.trim().to_string(),
                })
            }
        }
    }
}
