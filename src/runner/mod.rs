//! The one door to external programs.
//!
//! Every spawn in iscsimple goes through a [`Runner`]. Programs are looked up
//! once in fixed directories ([`SEARCH_DIRS`]), never through `$PATH`: xl,
//! udev and libvirt run their hooks with minimal or hostile environments.
//! Each call has a timeout, keeps the child's stderr for the error, runs in a
//! `tracing` span, and redacts secret arguments. Secrets should not be
//! arguments at all (every user can read `/proc/*/cmdline`); [`Arg::Secret`]
//! exists so that a value that must be shown in a log is shown as `<redacted>`.
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

mod real;
pub mod recording;

pub use real::RealRunner;

/// Directories searched for programs, in order.
pub const SEARCH_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The external programs iscsimple uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Program {
    /// open-iscsi's administration tool.
    Iscsiadm,
    /// md administration.
    Mdadm,
    /// udev control (settle), optional at run time.
    Udevadm,
    /// LVM: `lvm config`, `lvm pvs` (read-only, by `doctor`), and
    /// `lvm lvextend` (by `grow --extend-local`).
    Lvm,
    /// libvirt's shell, `virsh blockresize` (by `grow --libvirt-domain`).
    Virsh,
    /// multipath-tools' `multipath` (a target on several portals).
    Multipath,
    /// multipath-tools' daemon client `multipathd` (show, resize).
    Multipathd,
}

impl Program {
    /// Every program, for [`Runner::verify`].
    pub const ALL: [Program; 7] = [
        Program::Iscsiadm,
        Program::Mdadm,
        Program::Udevadm,
        Program::Lvm,
        Program::Virsh,
        Program::Multipath,
        Program::Multipathd,
    ];

    /// File name of the program.
    pub fn name(self) -> &'static str {
        match self {
            Program::Iscsiadm => "iscsiadm",
            Program::Mdadm => "mdadm",
            Program::Udevadm => "udevadm",
            Program::Lvm => "lvm",
            Program::Virsh => "virsh",
            Program::Multipath => "multipath",
            Program::Multipathd => "multipathd",
        }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One argument; secrets print as `<redacted>` in logs and errors.
#[derive(Clone, PartialEq, Eq)]
pub enum Arg {
    /// An ordinary argument.
    Plain(String),
    /// A value that must never be logged.
    Secret(String),
}

impl fmt::Debug for Arg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arg::Plain(s) => write!(f, "{s:?}"),
            Arg::Secret(_) => f.write_str("<redacted>"),
        }
    }
}

/// A command to run: program, arguments, timeout.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// The program.
    pub program: Program,
    /// Its arguments.
    pub args: Vec<Arg>,
    /// How long it may run before it is killed.
    pub timeout: Duration,
    /// Environment beyond the runner's clean one (LC_ALL, PATH).
    pub env: Vec<(&'static str, &'static str)>,
}

impl Cmd {
    /// `program` with no arguments and a 30 s timeout.
    pub fn new(program: Program) -> Cmd {
        Cmd {
            program,
            args: Vec::new(),
            timeout: Duration::from_secs(30),
            env: Vec::new(),
        }
    }

    /// Set an environment variable for it.
    pub fn env(mut self, key: &'static str, value: &'static str) -> Cmd {
        self.env.push((key, value));
        self
    }

    /// Add a plain argument.
    pub fn arg(mut self, a: impl Into<String>) -> Cmd {
        self.args.push(Arg::Plain(a.into()));
        self
    }

    /// Add plain arguments.
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args
            .extend(args.into_iter().map(|a| Arg::Plain(a.into())));
        self
    }

    /// Set the timeout.
    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    /// Set the timeout to `t`, or to what is left before `deadline` if
    /// that is less (a caller's time budget).
    pub fn timeout_within(self, t: Duration, deadline: Option<std::time::Instant>) -> Cmd {
        let left = deadline.map_or(t, |d| {
            t.min(d.saturating_duration_since(crate::clock::now()))
        });
        self.timeout(left)
    }

    /// The command line as it may be logged (secrets redacted).
    pub fn display(&self) -> String {
        let mut s = self.program.name().to_string();
        for a in &self.args {
            s.push(' ');
            match a {
                Arg::Plain(p) if p.is_empty() || p.contains(char::is_whitespace) => {
                    s.push_str(&format!("{p:?}"))
                }
                Arg::Plain(p) => s.push_str(p),
                Arg::Secret(_) => s.push_str("<redacted>"),
            }
        }
        s
    }

    /// Plain arguments as strings (for matching in tests).
    pub fn plain_args(&self) -> Vec<&str> {
        self.args
            .iter()
            .map(|a| match a {
                Arg::Plain(p) => p.as_str(),
                Arg::Secret(_) => "<redacted>",
            })
            .collect()
    }
}

/// What a finished command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Exit code (0 for success).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program is in none of the search directories.
    #[error("{program} not found in {}", SEARCH_DIRS.join(", "))]
    Missing {
        /// The program.
        program: Program,
    },
    /// The program could not be started.
    #[error("cannot run {path}: {source}", path = .path.display())]
    Spawn {
        /// Its path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It exited with a non-zero code or was killed by a signal.
    #[error("`{command}` {}: {}", status_text(*code, *signal), stderr_text(stderr))]
    Failed {
        /// The command line (redacted).
        command: String,
        /// Exit code, when it exited.
        code: Option<i32>,
        /// Signal, when one killed it.
        signal: Option<i32>,
        /// Its standard error, trimmed.
        stderr: String,
        /// Its standard output, trimmed (some tools report errors there).
        stdout: String,
    },
    /// It ran longer than its timeout and was killed.
    #[error("`{command}` timed out after {}s and was killed", .after.as_secs_f32())]
    Timeout {
        /// The command line (redacted).
        command: String,
        /// The timeout.
        after: Duration,
    },
}

impl RunError {
    /// The exit code, when the program exited with one.
    pub fn code(&self) -> Option<i32> {
        match self {
            RunError::Failed { code, .. } => *code,
            _ => None,
        }
    }
}

fn status_text(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exited with {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "failed".to_string(),
    }
}

fn stderr_text(stderr: &str) -> String {
    // One line: the child's last non-empty stderr line carries the reason.
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::trim);
    match last {
        Some(l) => l.to_string(),
        None => "<stderr is empty>".to_string(),
    }
}

/// Runs commands. The real implementation spawns; the recording one replays.
pub trait Runner: Send + Sync + fmt::Debug {
    /// Run `cmd` to completion. A non-zero exit is an error.
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError>;

    /// Check that every program in `programs` can be found.
    fn verify(&self, programs: &[Program]) -> Result<(), RunError>;

    /// Start this very binary with `args`, detached: own process group, no
    /// stdio, not waited for. For watchers that must outlive a hotplug
    /// script that xl kills by pid.
    fn spawn_self_detached(&self, args: &[String]) -> Result<u32, RunError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_redacts_secrets_and_quotes_spaces() {
        let mut c = Cmd::new(Program::Iscsiadm).args(["-m", "node", "a b"]);
        c.args.push(Arg::Secret("hunter2hunter2".into()));
        assert_eq!(c.display(), "iscsiadm -m node \"a b\" <redacted>");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn failed_error_is_one_line_with_last_stderr_line() {
        let e = RunError::Failed {
            command: "mdadm --stop /dev/md/x".into(),
            code: Some(1),
            signal: None,
            stderr: "mdadm: noise\nmdadm: Cannot get exclusive access\n\n".into(),
            stdout: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "`mdadm --stop /dev/md/x` exited with 1: mdadm: Cannot get exclusive access"
        );
        assert_eq!(e.code(), Some(1));
    }
}
