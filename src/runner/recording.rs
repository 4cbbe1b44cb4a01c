//! A [`Runner`] for unit tests: records every command and replays canned
//! results, so rollback paths can be tested without a kernel. It proves
//! logic only; kernel behaviour is proven in the lab.
use std::collections::VecDeque;
use std::sync::Mutex;

use super::{Arg, Cmd, Output, Program, RunError, Runner};

type Rule = (String, Result<Output, (i32, String)>);
type Hook = Box<dyn Fn(&str) + Send + Sync>;

/// Records commands; answers from rules matched by command-line prefix.
#[derive(Default)]
pub struct RecordingRunner {
    calls: Mutex<Vec<String>>,
    argvs: Mutex<Vec<Vec<String>>>,
    rules: Mutex<VecDeque<Rule>>,
    before: Mutex<Option<std::sync::Arc<Hook>>>,
}

impl std::fmt::Debug for RecordingRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingRunner")
            .field("calls", &self.calls)
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl RecordingRunner {
    /// A runner where every command succeeds with empty output.
    pub fn new() -> RecordingRunner {
        RecordingRunner::default()
    }

    /// Call `hook` with each command line (as displayed) before it is
    /// answered: a test can look at the host then, or block the command
    /// (an mdadm stuck in the kernel).
    pub fn before(&self, hook: impl Fn(&str) + Send + Sync + 'static) {
        *self.before.lock().expect("lock") = Some(std::sync::Arc::new(Box::new(hook)));
    }

    /// The next command starting with `prefix` prints `stdout` and succeeds.
    pub fn ok(&self, prefix: &str, stdout: &str) {
        let out = Output {
            code: 0,
            stdout: stdout.to_string(),
            stderr: String::new(),
        };
        self.rules
            .lock()
            .expect("lock")
            .push_back((prefix.to_string(), Ok(out)));
    }

    /// The next command starting with `prefix` fails with `code` and `stderr`.
    pub fn fail(&self, prefix: &str, code: i32, stderr: &str) {
        self.rules
            .lock()
            .expect("lock")
            .push_back((prefix.to_string(), Err((code, stderr.to_string()))));
    }

    /// Every command run so far, as displayed (secrets redacted).
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }

    /// Every command's real argument vector, program first, secret
    /// arguments included: what `/proc/PID/cmdline` would show any user.
    pub fn argvs(&self) -> Vec<Vec<String>> {
        self.argvs.lock().expect("lock").clone()
    }
}

impl Runner for RecordingRunner {
    fn verify(&self, _programs: &[Program]) -> Result<(), RunError> {
        Ok(())
    }

    fn spawn_self_detached(&self, args: &[String]) -> Result<u32, RunError> {
        self.calls
            .lock()
            .expect("lock")
            .push(format!("iscsimple {}", args.join(" ")));
        Ok(0)
    }

    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        let shown = cmd.display();
        self.calls.lock().expect("lock").push(shown.clone());
        let argv = std::iter::once(cmd.program.name().to_string())
            .chain(cmd.args.iter().map(|a| match a {
                Arg::Plain(s) | Arg::Secret(s) => s.clone(),
            }))
            .collect();
        self.argvs.lock().expect("lock").push(argv);
        let hook = self.before.lock().expect("lock").clone();
        if let Some(hook) = hook {
            hook(&shown);
        }
        let mut rules = self.rules.lock().expect("lock");
        let Some(i) = rules
            .iter()
            .position(|(p, _)| shown.starts_with(p.as_str()))
        else {
            return Ok(Output::default());
        };
        let (_, result) = rules.remove(i).expect("index from position");
        result.map_err(|(code, stderr)| RunError::Failed {
            command: shown,
            code: Some(code),
            signal: None,
            stderr,
            stdout: String::new(),
        })
    }
}
