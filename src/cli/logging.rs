//! Logs: stderr on a terminal (`-v`, `-q`); with no terminal (run by xl,
//! libvirt, udev or systemd) to journald when it runs, else to syslog.
//! stdout is never used: it carries only the result.
//!
//! journald gets each event's and its spans' fields as journal fields
//! (`SPEC=`, `DOMAIN=`, ...: `journalctl -t iscsimple DOMAIN=vm1`) and a
//! MESSAGE that repeats them as `key=value`, so that a plain
//! `journalctl -t iscsimple` shows which disk and VM a line is about. syslog
//! gets the same text.
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// journald's native protocol socket.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

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

/// Fields of a span or an event, in order, values as text.
#[derive(Debug, Default)]
struct Fields {
    message: Option<String>,
    pairs: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = Some(value);
        } else if let Some(p) = self.pairs.iter_mut().find(|(k, _)| k == field.name()) {
            p.1 = value;
        } else {
            self.pairs.push((field.name().to_string(), value));
        }
    }
}

/// Sends events to journald with their fields.
pub(crate) struct Journald {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Journald {
    /// A layer writing to the journald socket at `path`, if it can be reached.
    pub(crate) fn connect(path: &Path) -> Option<Journald> {
        let socket = UnixDatagram::unbound().ok()?;
        // A datagram to an absent or dead journald fails here, not later.
        socket.connect(path).ok()?;
        Some(Journald {
            socket,
            path: path.to_path_buf(),
        })
    }
}

/// `KEY=value\n`, or the length-prefixed form for values with a newline.
fn put(buf: &mut Vec<u8>, key: &str, value: &str) {
    buf.extend_from_slice(key.as_bytes());
    if value.contains('\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// A journal field name: upper case letters, digits and `_`, not starting with `_` or a digit.
fn journal_key(name: &str) -> String {
    let k: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if k.starts_with(|c: char| c == '_' || c.is_ascii_digit()) {
        format!("F{k}")
    } else {
        k
    }
}

impl<S> Layer<S> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut f = Fields::default();
        attrs.record(&mut f);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(f);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(f) = span.extensions_mut().get_mut::<Fields>() {
                values.record(f);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Span fields first (outermost first), then the event's; a later
        // value of the same key wins.
        let mut all = Fields::default();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(f) = span.extensions().get::<Fields>() {
                    for (k, v) in &f.pairs {
                        all.pairs.retain(|(x, _)| x != k);
                        all.pairs.push((k.clone(), v.clone()));
                    }
                }
            }
        }
        let mut ev = Fields::default();
        event.record(&mut ev);
        for (k, v) in ev.pairs {
            all.pairs.retain(|(x, _)| *x != k);
            all.pairs.push((k, v));
        }
        let mut text = ev.message.unwrap_or_default();
        for (k, v) in &all.pairs {
            let _ = write!(text, " {k}={v}");
        }
        let priority = match *event.metadata().level() {
            Level::ERROR => "3",
            Level::WARN => "4",
            Level::INFO => "6",
            _ => "7",
        };
        let mut buf = Vec::with_capacity(256);
        put(&mut buf, "PRIORITY", priority);
        put(&mut buf, "SYSLOG_IDENTIFIER", "iscsimple");
        put(&mut buf, "SYSLOG_FACILITY", "3");
        put(&mut buf, "MESSAGE", text.trim_start());
        for (k, v) in &all.pairs {
            put(&mut buf, &journal_key(k), v);
        }
        // Nothing to do with an error here: logging must not fail the call.
        if self.socket.send(&buf).is_err() {
            let _ = self.socket.send_to(&buf, &self.path);
        }
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
    if std::io::stderr().is_terminal() {
        let filter = EnvFilter::try_from_env("ISCSIMPLE_LOG")
            .unwrap_or_else(|_| EnvFilter::new(format!("iscsimple={level}")));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
        return;
    }
    let filter = EnvFilter::try_from_env("ISCSIMPLE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("iscsimple=info"));
    if let Some(j) = Journald::connect(Path::new(JOURNAL_SOCKET)) {
        let _ = tracing_subscriber::registry()
            .with(j.with_filter(filter))
            .try_init();
        return;
    }
    // SAFETY: a static NUL-terminated ident; openlog keeps the pointer.
    unsafe { libc::openlog(c"iscsimple".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(MakeSyslog)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_gets_span_and_event_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("socket");
        let server = UnixDatagram::bind(&path).expect("bind");
        let layer = Journald::connect(&path).expect("connect");
        let sub = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("libvirt", domain = "vm1", spec = tracing::field::Empty);
            let _g = span.enter();
            span.record("spec", "lun0@iqn.2000-01.a:b+x");
            tracing::warn!(device = "/dev/md/x", "attached\nsecond line");
        });
        let mut buf = vec![0u8; 4096];
        let n = server.recv(&mut buf).expect("recv");
        let got = &buf[..n];
        let text = String::from_utf8_lossy(got);
        for want in [
            "PRIORITY=4\n",
            "SYSLOG_IDENTIFIER=iscsimple\n",
            "DOMAIN=vm1\n",
            "SPEC=lun0@iqn.2000-01.a:b+x\n",
            "DEVICE=/dev/md/x\n",
        ] {
            assert!(text.contains(want), "{want:?} in {text:?}");
        }
        // MESSAGE has a newline: the length-prefixed form, with the fields as text
        let msg = "attached\nsecond line domain=vm1 spec=lun0@iqn.2000-01.a:b+x device=/dev/md/x";
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&(msg.len() as u64).to_le_bytes());
        want.extend_from_slice(msg.as_bytes());
        assert!(got.windows(want.len()).any(|w| w == want), "{text:?}");
    }

    #[test]
    fn journal_keys() {
        assert_eq!(journal_key("spec"), "SPEC");
        assert_eq!(journal_key("error.kind"), "ERROR_KIND");
        assert_eq!(journal_key("_x"), "F_X");
    }
}
