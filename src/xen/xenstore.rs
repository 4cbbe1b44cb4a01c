//! A small xenstore client speaking xenstored's wire protocol over its unix
//! socket (`XENSTORED_PATH`, else `/var/run/xenstored/socket`) or the
//! `/dev/xen/xenbus` device.
//!
//! Every message is a 16-byte header (type, request id, transaction id,
//! payload length; native-endian u32) followed by the payload. Replies come
//! in request order; watch events (type 15) may arrive in between and are
//! queued. Errors come back as type 16 with an errno name (`ENOENT`).
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Message types used here (xen/include/public/io/xs_wire.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    /// List children.
    Directory = 1,
    /// Read a value.
    Read = 2,
    /// Watch a subtree.
    Watch = 4,
    /// Stop watching.
    Unwatch = 5,
    /// Begin a transaction.
    TransactionStart = 6,
    /// Commit or abort a transaction.
    TransactionEnd = 7,
    /// Write a value.
    Write = 11,
    /// Remove a node and its children.
    Rm = 13,
    /// An event for a watch (from the server).
    WatchEvent = 15,
    /// An error reply (from the server).
    Error = 16,
}

impl Op {
    fn from_u32(v: u32) -> Option<Op> {
        Some(match v {
            1 => Op::Directory,
            2 => Op::Read,
            4 => Op::Watch,
            5 => Op::Unwatch,
            6 => Op::TransactionStart,
            7 => Op::TransactionEnd,
            11 => Op::Write,
            13 => Op::Rm,
            15 => Op::WatchEvent,
            16 => Op::Error,
            _ => return None,
        })
    }
}

/// The largest payload xenstored accepts (XENSTORE_PAYLOAD_MAX).
pub const PAYLOAD_MAX: usize = 4096;

/// Why a xenstore call failed.
#[derive(Debug, thiserror::Error)]
pub enum XsError {
    /// The socket or device could not be opened or used.
    #[error("xenstore {}: {source}", path.display())]
    Io {
        /// Socket or device path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// xenstored answered with an error.
    #[error("xenstore {op:?} {path}: {errno}")]
    Server {
        /// The request.
        op: Op,
        /// The path it was about.
        path: String,
        /// The errno name xenstored sent (`ENOENT`, `EACCES`, `EAGAIN`, ...).
        errno: String,
    },
    /// The reply did not follow the protocol.
    #[error("xenstore protocol error: {0}")]
    Protocol(String),
    /// A request is larger than xenstored accepts.
    #[error("xenstore request for {0} is larger than {PAYLOAD_MAX} bytes")]
    TooLarge(String),
}

impl XsError {
    /// The server's errno name, if it sent one.
    pub fn errno(&self) -> Option<&str> {
        match self {
            XsError::Server { errno, .. } => Some(errno),
            _ => None,
        }
    }
}

/// A transaction id; [`Tx::NONE`] outside transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tx(pub u32);

impl Tx {
    /// No transaction.
    pub const NONE: Tx = Tx(0);
}

/// Anything the protocol can run over.
pub trait Stream: Read + Write + Send + std::fmt::Debug {
    /// Set a read timeout (None = block).
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()>;
}

impl Stream for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
}

impl Stream for std::fs::File {
    fn set_read_timeout(&self, _t: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }
}

/// A connection to xenstored.
#[derive(Debug)]
pub struct Xenstore {
    stream: Box<dyn Stream>,
    path: PathBuf,
    next_req: u32,
    events: VecDeque<(String, String)>,
}

impl Xenstore {
    /// Connect the way xl's tools do: `XENSTORED_PATH`, the socket, then the device.
    pub fn open() -> Result<Xenstore, XsError> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("XENSTORED_PATH") {
            candidates.push(p.into());
        }
        candidates.push("/var/run/xenstored/socket".into());
        candidates.push("/dev/xen/xenbus".into());
        let mut last = None;
        for p in candidates {
            match Self::open_path(&p) {
                Ok(x) => return Ok(x),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one candidate"))
    }

    /// Connect to the socket or device at `path`.
    pub fn open_path(path: &Path) -> Result<Xenstore, XsError> {
        let io = |source| XsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        use std::os::unix::fs::FileTypeExt;
        let stream: Box<dyn Stream> = if meta.file_type().is_socket() {
            Box::new(UnixStream::connect(path).map_err(io)?)
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(io)?,
            )
        };
        Ok(Xenstore::from_stream(stream, path))
    }

    /// Use an already open stream (tests use one end of a socket pair).
    pub fn from_stream(stream: Box<dyn Stream>, path: &Path) -> Xenstore {
        Xenstore {
            stream,
            path: path.to_path_buf(),
            next_req: 1,
            events: VecDeque::new(),
        }
    }

    fn io(&self, source: std::io::Error) -> XsError {
        XsError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Send one request and return the payload of its reply.
    fn request(&mut self, op: Op, tx: Tx, payload: &[u8], what: &str) -> Result<Vec<u8>, XsError> {
        if payload.len() > PAYLOAD_MAX {
            return Err(XsError::TooLarge(what.to_string()));
        }
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1).max(1);
        let mut msg = Vec::with_capacity(16 + payload.len());
        for v in [
            op as u32,
            req,
            tx.0,
            u32::try_from(payload.len()).expect("bounded by PAYLOAD_MAX"),
        ] {
            msg.extend_from_slice(&v.to_ne_bytes());
        }
        msg.extend_from_slice(payload);
        self.stream.write_all(&msg).map_err(|e| self.io(e))?;
        loop {
            let (rop, rreq, body) = self.read_message(None)?;
            match Op::from_u32(rop) {
                Some(Op::WatchEvent) => self.queue_event(&body),
                Some(Op::Error) => {
                    let errno = String::from_utf8_lossy(&body)
                        .trim_end_matches('\0')
                        .to_string();
                    return Err(XsError::Server {
                        op,
                        path: what.to_string(),
                        errno,
                    });
                }
                _ if rreq != req => {
                    return Err(XsError::Protocol(format!(
                        "reply to request {rreq}, expected {req}"
                    )));
                }
                Some(r) if r == op => return Ok(body),
                _ => {
                    return Err(XsError::Protocol(format!(
                        "reply type {rop} to a {op:?} request"
                    )))
                }
            }
        }
    }

    /// Read one whole message (read_exact copes with partial reads).
    fn read_message(&mut self, timeout: Option<Duration>) -> Result<(u32, u32, Vec<u8>), XsError> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(|e| self.io(e))?;
        let mut hdr = [0u8; 16];
        self.stream.read_exact(&mut hdr).map_err(|e| self.io(e))?;
        let field =
            |i: usize| u32::from_ne_bytes(hdr[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        let len = usize::try_from(field(3)).unwrap_or(usize::MAX);
        if len > PAYLOAD_MAX {
            return Err(XsError::Protocol(format!("payload of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).map_err(|e| self.io(e))?;
        Ok((field(0), field(1), body))
    }

    fn queue_event(&mut self, body: &[u8]) {
        let mut parts = body
            .split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let path = parts.next().unwrap_or_default();
        let token = parts.next().unwrap_or_default();
        self.events.push_back((path, token));
    }

    fn path_arg(path: &str) -> Vec<u8> {
        let mut v = path.as_bytes().to_vec();
        v.push(0);
        v
    }

    /// Read `path`; None when it does not exist.
    pub fn read(&mut self, tx: Tx, path: &str) -> Result<Option<String>, XsError> {
        match self.request(Op::Read, tx, &Self::path_arg(path), path) {
            Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            Err(e) if e.errno() == Some("ENOENT") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Write `value` to `path` (parents are created).
    pub fn write(&mut self, tx: Tx, path: &str, value: &str) -> Result<(), XsError> {
        let mut p = Self::path_arg(path);
        p.extend_from_slice(value.as_bytes());
        self.request(Op::Write, tx, &p, path).map(|_| ())
    }

    /// Remove `path` and its children; absent is fine.
    pub fn rm(&mut self, tx: Tx, path: &str) -> Result<(), XsError> {
        match self.request(Op::Rm, tx, &Self::path_arg(path), path) {
            Err(e) if e.errno() == Some("ENOENT") => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Children of `path`; empty when it does not exist.
    pub fn directory(&mut self, tx: Tx, path: &str) -> Result<Vec<String>, XsError> {
        match self.request(Op::Directory, tx, &Self::path_arg(path), path) {
            Ok(v) => Ok(v
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()),
            Err(e) if e.errno() == Some("ENOENT") => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Start a transaction.
    pub fn transaction_start(&mut self) -> Result<Tx, XsError> {
        let v = self.request(Op::TransactionStart, Tx::NONE, b"\0", "transaction")?;
        let s = String::from_utf8_lossy(&v)
            .trim_end_matches('\0')
            .to_string();
        s.parse()
            .map(Tx)
            .map_err(|_| XsError::Protocol(format!("transaction id {s:?}")))
    }

    /// End a transaction: commit (true) or abort. Ok(false) when xenstored
    /// answers EAGAIN (a conflicting change): the caller retries.
    pub fn transaction_end(&mut self, tx: Tx, commit: bool) -> Result<bool, XsError> {
        match self.request(
            Op::TransactionEnd,
            tx,
            if commit { b"T\0" } else { b"F\0" },
            "transaction",
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some("EAGAIN") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Run `f` in a transaction, retrying on conflicts (at most 10 times).
    pub fn transaction<T>(
        &mut self,
        mut f: impl FnMut(&mut Xenstore, Tx) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        for _ in 0..10 {
            let tx = self.transaction_start()?;
            match f(self, tx) {
                Ok(v) => {
                    if self.transaction_end(tx, true)? {
                        return Ok(v);
                    }
                }
                Err(e) => {
                    let _ = self.transaction_end(tx, false);
                    return Err(e);
                }
            }
        }
        Err(XsError::Protocol(
            "transaction kept conflicting (EAGAIN 10 times)".into(),
        ))
    }

    /// Watch `path`; events come back with `token`. xenstored sends one
    /// event at once for the path itself.
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let mut p = Self::path_arg(path);
        p.extend_from_slice(&Self::path_arg(token));
        self.request(Op::Watch, Tx::NONE, &p, path).map(|_| ())
    }

    /// Stop watching.
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        let mut p = Self::path_arg(path);
        p.extend_from_slice(&Self::path_arg(token));
        self.request(Op::Unwatch, Tx::NONE, &p, path).map(|_| ())
    }

    /// The next watch event (path, token), waiting up to `timeout`; None on timeout.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<(String, String)>, XsError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        match self.read_message(Some(timeout.max(Duration::from_millis(1)))) {
            Ok((op, _, body)) if op == Op::WatchEvent as u32 => {
                self.queue_event(&body);
                Ok(self.events.pop_front())
            }
            Ok((op, req, _)) => Err(XsError::Protocol(format!(
                "unexpected message type {op} (request {req}) while waiting for a watch"
            ))),
            Err(XsError::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::thread;

    /// A tiny xenstored: a flat map, watches, transactions, and replies
    /// written a few bytes at a time so the client's partial reads are exercised.
    fn fake_xenstored(mut s: UnixStream) {
        let mut store: BTreeMap<String, String> = BTreeMap::new();
        let mut watches: Vec<(String, String)> = Vec::new();
        let mut conflicts_left = 1;
        let mut next_tx = 7u32;
        let send = |s: &mut UnixStream, op: u32, req: u32, tx: u32, body: &[u8]| {
            let mut m = Vec::new();
            for v in [op, req, tx, u32::try_from(body.len()).unwrap()] {
                m.extend_from_slice(&v.to_ne_bytes());
            }
            m.extend_from_slice(body);
            for chunk in m.chunks(3) {
                if s.write_all(chunk).is_err() {
                    return;
                }
            }
        };
        loop {
            let mut hdr = [0u8; 16];
            if s.read_exact(&mut hdr).is_err() {
                return;
            }
            let f = |i: usize| u32::from_ne_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap());
            let (op, req, tx, len) = (f(0), f(1), f(2), f(3) as usize);
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).unwrap();
            let parts: Vec<String> = body
                .split(|b| *b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            let path = parts.first().cloned().unwrap_or_default();
            let err =
                |s: &mut UnixStream, e: &str| send(s, 16, req, tx, format!("{e}\0").as_bytes());
            match op {
                2 => match store.get(&path) {
                    Some(v) => send(&mut s, 2, req, tx, v.as_bytes()),
                    None => err(&mut s, "ENOENT"),
                },
                11 => {
                    let value = &body[path.len() + 1..];
                    if path.starts_with("/forbidden") {
                        err(&mut s, "EACCES");
                        continue;
                    }
                    store.insert(path.clone(), String::from_utf8_lossy(value).into_owned());
                    send(&mut s, 11, req, tx, b"OK\0");
                    for (w, tok) in watches.clone() {
                        if path.starts_with(&w) {
                            send(&mut s, 15, 0, 0, format!("{path}\0{tok}\0").as_bytes());
                        }
                    }
                }
                13 => {
                    let before = store.len();
                    store.retain(|k, _| !(k == &path || k.starts_with(&format!("{path}/"))));
                    if before == store.len() {
                        err(&mut s, "ENOENT");
                    } else {
                        send(&mut s, 13, req, tx, b"OK\0");
                    }
                }
                1 => {
                    let prefix = format!("{path}/");
                    let mut kids: Vec<String> = store
                        .keys()
                        .filter_map(|k| {
                            k.strip_prefix(&prefix)
                                .map(|r| r.split('/').next().unwrap().to_string())
                        })
                        .collect();
                    kids.dedup();
                    if kids.is_empty() && !store.contains_key(&path) {
                        err(&mut s, "ENOENT");
                    } else {
                        let mut b = Vec::new();
                        for k in kids {
                            b.extend_from_slice(k.as_bytes());
                            b.push(0);
                        }
                        send(&mut s, 1, req, tx, &b);
                    }
                }
                6 => {
                    next_tx += 1;
                    send(&mut s, 6, req, 0, format!("{next_tx}\0").as_bytes());
                }
                7 => {
                    if conflicts_left > 0 && parts[0] == "T" && store.contains_key("/conflict") {
                        conflicts_left -= 1;
                        err(&mut s, "EAGAIN");
                    } else {
                        send(&mut s, 7, req, tx, b"OK\0");
                    }
                }
                4 => {
                    watches.push((path.clone(), parts[1].clone()));
                    send(&mut s, 4, req, tx, b"OK\0");
                    send(
                        &mut s,
                        15,
                        0,
                        0,
                        format!("{path}\0{}\0", parts[1]).as_bytes(),
                    );
                }
                5 => {
                    watches.retain(|(p, t)| !(p == &path && t == &parts[1]));
                    send(&mut s, 5, req, tx, b"OK\0");
                }
                _ => err(&mut s, "EINVAL"),
            }
        }
    }

    fn connect() -> Xenstore {
        let (a, b) = UnixStream::pair().unwrap();
        thread::spawn(move || fake_xenstored(b));
        Xenstore::from_stream(Box::new(a), Path::new("/fake/socket"))
    }

    #[test]
    fn read_write_directory_rm() {
        let mut x = connect();
        assert_eq!(x.read(Tx::NONE, "/a/b").unwrap(), None);
        x.write(Tx::NONE, "/a/b", "1").unwrap();
        x.write(Tx::NONE, "/a/c/d", "").unwrap();
        assert_eq!(x.read(Tx::NONE, "/a/b").unwrap().as_deref(), Some("1"));
        assert_eq!(x.read(Tx::NONE, "/a/c/d").unwrap().as_deref(), Some(""));
        assert_eq!(x.directory(Tx::NONE, "/a").unwrap(), vec!["b", "c"]);
        assert!(x.directory(Tx::NONE, "/nothing").unwrap().is_empty());
        x.rm(Tx::NONE, "/a").unwrap();
        x.rm(Tx::NONE, "/a").unwrap();
        assert_eq!(x.read(Tx::NONE, "/a/b").unwrap(), None);
    }

    #[test]
    fn error_replies_are_typed() {
        let mut x = connect();
        let e = x.write(Tx::NONE, "/forbidden/x", "v").unwrap_err();
        assert_eq!(e.errno(), Some("EACCES"));
        assert_eq!(e.to_string(), "xenstore Write /forbidden/x: EACCES");
        let big = "x".repeat(PAYLOAD_MAX + 1);
        assert!(matches!(
            x.write(Tx::NONE, "/big", &big),
            Err(XsError::TooLarge(_))
        ));
    }

    #[test]
    fn transactions_retry_on_eagain() {
        let mut x = connect();
        x.write(Tx::NONE, "/conflict", "1").unwrap();
        let mut runs = 0;
        x.transaction(|x, tx| {
            runs += 1;
            x.write(tx, "/t/v", "ok")
        })
        .unwrap();
        assert_eq!(runs, 2, "one EAGAIN, then a commit");
        let tx = x.transaction_start().unwrap();
        assert!(tx.0 > 0);
        assert!(x.transaction_end(tx, false).unwrap());
    }

    #[test]
    fn watch_events_are_queued_between_replies() {
        let mut x = connect();
        x.watch("/w", "tok").unwrap();
        // The initial event arrives right after the watch reply.
        assert_eq!(
            x.next_event(Duration::from_secs(2)).unwrap(),
            Some(("/w".into(), "tok".into()))
        );
        // An event sent while we wait for a write reply is kept for later.
        x.write(Tx::NONE, "/w/x", "1").unwrap();
        assert_eq!(x.read(Tx::NONE, "/w/x").unwrap().as_deref(), Some("1"));
        assert_eq!(
            x.next_event(Duration::from_secs(2)).unwrap(),
            Some(("/w/x".into(), "tok".into()))
        );
        assert_eq!(x.next_event(Duration::from_millis(50)).unwrap(), None);
        x.unwatch("/w", "tok").unwrap();
    }

    #[test]
    fn a_closed_socket_is_an_io_error_naming_the_path() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut x = Xenstore::from_stream(Box::new(a), Path::new("/fake/socket"));
        let e = x.read(Tx::NONE, "/x").unwrap_err();
        assert!(e.to_string().starts_with("xenstore /fake/socket: "), "{e}");
    }
}
