//! Logs: stderr on a terminal; syslog (which journald also collects) when
//! run by xl, libvirt or udev with no terminal. stdout is never used: it
//! carries only the result.
use std::io::{IsTerminal, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// A writer that sends each formatted event to syslog(3).
struct Syslog(Vec<u8>);

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0)
            .trim_end()
            .replace('\0', " ");
        if let Ok(c) = std::ffi::CString::new(text) {
            // SAFETY: a constant format string and a NUL-terminated argument.
            unsafe {
                libc::syslog(
                    libc::LOG_DAEMON | libc::LOG_INFO,
                    c"%s".as_ptr(),
                    c.as_ptr(),
                )
            };
        }
    }
}

struct MakeSyslog;

impl<'a> MakeWriter<'a> for MakeSyslog {
    type Writer = Syslog;
    fn make_writer(&'a self) -> Syslog {
        Syslog(Vec::new())
    }
}

/// Set up logging; `verbose`/`quiet` adjust the level on a terminal.
pub(crate) fn init(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("ISCSIMPLE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("iscsimple={level}")));
    if std::io::stderr().is_terminal() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
    } else {
        // SAFETY: a static NUL-terminated ident; openlog keeps the pointer.
        unsafe { libc::openlog(c"iscsimple".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
        let filter = EnvFilter::try_from_env("ISCSIMPLE_LOG")
            .unwrap_or_else(|_| EnvFilter::new("iscsimple=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(MakeSyslog)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .try_init();
    }
}
