//! The configuration file, `/etc/iscsimple/iscsimple.toml`.
//!
//! Every key is optional. A missing file at [`DEFAULT_CONFIG_PATH`] means
//! defaults (most hosts need none); a file named explicitly (`--config`,
//! `ISCSIMPLE_CONFIG`) must exist. Unknown keys are errors so that a typo
//! never silently falls back to a default. Every error is one line and
//! names the file and, when it comes from the text, `line:column`.
//!
//! CHAP secrets are held in [`Secret`], which never prints. Password files
//! are read only when a target needs them ([`Config::chap_for`]) and must be
//! regular files owned by the effective user (root in production) with no
//! group/other access.
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::spec::TargetName;

/// Where the configuration is read from when no path is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/iscsimple/iscsimple.toml";
/// Default label table (the seed design kept it next to the Xen block script).
pub const DEFAULT_LABEL_TABLE: &str = "/etc/xen/scripts/block-iscsimple-tab.conf";
/// Default directory for persistent state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/iscsimple";
/// Default directory for runtime state and locks.
pub const DEFAULT_RUN_DIR: &str = "/run/iscsimple";
/// The iSCSI port used when a portal has none.
pub const DEFAULT_ISCSI_PORT: u16 = 3260;
/// Largest accepted timeout in seconds (one day): larger values are typos,
/// and bounded values cannot overflow deadline arithmetic.
pub const MAX_TIMEOUT_SECS: u64 = 86_400;
/// Longest accepted CHAP username or secret, in bytes.
pub const MAX_CHAP_LEN: usize = 255;

/// A problem with the configuration or a CHAP password file.
///
/// Display is always one line and includes the cause; causes are fields,
/// not `source()`, so printing an error chain does not repeat them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file named explicitly (`--config`, `ISCSIMPLE_CONFIG`) does not exist.
    #[error("config {}: not found", path.display())]
    NotFound {
        /// The file looked for.
        path: PathBuf,
    },
    /// The file exists but could not be read (permissions, not UTF-8, ...).
    #[error("config {}: cannot read: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// The TOML parser's message.
        message: String,
    },
    /// A well-typed value that is not acceptable (bad portal, duplicate
    /// CHAP entry, zero timeout, ...).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// What is wrong and what is expected.
        message: String,
    },
    /// Several [`ConfigError::Invalid`] problems; see [`ConfigError::problems`].
    #[error("{}: {} problems; first: {}", path.display(), errors.len(), errors.first().map_or(String::new(), ToString::to_string))]
    Multiple {
        /// The file.
        path: PathBuf,
        /// Each problem, in file order (never nested `Multiple`).
        errors: Vec<ConfigError>,
    },
    /// The file holds an inline CHAP password but others may read it.
    #[error("config {}: holds an inline CHAP password but mode is {mode:04o} (group/other access); run chmod 600 {} or use password_file", path.display(), path.display())]
    InsecureConfig {
        /// The config file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A password file could not be opened or read.
    #[error("password file {}: cannot read: {cause}", path.display())]
    SecretRead {
        /// The password file.
        path: PathBuf,
        /// The I/O error.
        cause: io::Error,
    },
    /// A password file is not a regular file.
    #[error("password file {}: not a regular file", path.display())]
    SecretNotRegular {
        /// The password file.
        path: PathBuf,
    },
    /// A password file is owned by another user than the one running us.
    #[error("password file {}: owned by uid {uid} (expected uid {expected}); run chown {expected} {}", path.display(), path.display())]
    SecretOwner {
        /// The password file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The effective uid (0 in production).
        expected: u32,
    },
    /// A password file gives group or other access.
    #[error("password file {}: mode {mode:04o} gives group/other access (expected 0600 or stricter); run chmod 600 {}", path.display(), path.display())]
    SecretMode {
        /// The password file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The first line of a password file is not an acceptable secret.
    #[error("password file {}: first line {problem}", path.display())]
    SecretContent {
        /// The password file.
        path: PathBuf,
        /// What is wrong ("is empty", ...).
        problem: &'static str,
    },
}

impl ConfigError {
    /// Each single problem: the errors inside `Multiple`, or `self`.
    pub fn problems(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Multiple { errors, .. } => errors.iter().collect(),
            other => vec![other],
        }
    }
}

/// A CHAP secret. Debug and Display print `<redacted>`; use
/// [`Secret::expose`] only where the value is handed to open-iscsi.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The host part of a portal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A dotted-quad address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address (written `[addr]` in the file).
    Ipv6(Ipv6Addr),
    /// A DNS name.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// An iSCSI discovery portal.
///
/// Display gives `host:port` (`[v6]:port`), the form `iscsiadm -p` takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Portal {
    /// Address or name.
    pub host: Host,
    /// TCP port, [`DEFAULT_ISCSI_PORT`] when not written.
    pub port: u16,
}

impl fmt::Display for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `[discovery]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Discovery {
    /// Portals for SendTargets discovery, used only when a target has no
    /// open-iscsi node record yet.
    pub portals: Vec<Portal>,
}

/// `[timeouts]`, each in whole seconds in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// An iSCSI login, all of iscsid's attempts included
    /// ([`crate::iscsi::login_attempts`]).
    pub login: Duration,
    /// Waiting for a LUN's block device to appear.
    pub device: Duration,
    /// Any single external command.
    pub command: Duration,
    /// Waiting for another iscsimple call on the same label or target.
    pub lock: Duration,
    /// iSCSI session recovery (`node.session.timeo.replacement_timeout`):
    /// how long I/O waits for a lost target before it fails, so that md
    /// marks the iSCSI leg faulty and carries on with the local one.
    pub replacement: Duration,
    /// NOP-Out ping interval (`node.conn[0].timeo.noop_out_interval`).
    pub noop_interval: Duration,
    /// NOP-Out reply timeout (`node.conn[0].timeo.noop_out_timeout`): a
    /// silent network is noticed after interval + timeout.
    pub noop_timeout: Duration,
    /// How often `iscsimple watch` looks at sessions when no md event
    /// wakes it (a leg failing wakes it at once).
    pub watch: Duration,
    /// The whole of one Xen hotplug call (`xen add`, `xen remove`): every
    /// wait draws from it, a third of it kept for the rollback of an add.
    /// libxl kills the script after 40 s.
    pub hotplug: Duration,
    /// One mirror's look and heal (`heal`, and each mirror in `watch`):
    /// every wait draws from it, so a LUN that hangs holds up the others
    /// at most this long.
    pub heal: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            login: Duration::from_secs(15),
            device: Duration::from_secs(10),
            command: Duration::from_secs(30),
            lock: Duration::from_secs(30),
            replacement: Duration::from_secs(15),
            noop_interval: Duration::from_secs(5),
            noop_timeout: Duration::from_secs(5),
            watch: Duration::from_secs(2),
            hotplug: Duration::from_secs(30),
            heal: Duration::from_secs(30),
        }
    }
}

/// `[md]`: resync tuning applied per array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MdTuning {
    /// `md/sync_speed_min` in KiB/s; `None` keeps the kernel default.
    pub sync_speed_min: Option<u32>,
    /// `md/sync_speed_max` in KiB/s; `None` keeps the kernel default.
    pub sync_speed_max: Option<u32>,
    /// Keep a write-intent bitmap file under `state_dir` where the platform
    /// supports it, so a heal copies only what changed during an outage.
    pub bitmap: bool,
}

impl Default for MdTuning {
    fn default() -> Self {
        MdTuning {
            sync_speed_min: None,
            sync_speed_max: None,
            bitmap: true,
        }
    }
}

/// Which targets a `[[chap]]` entry applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChapTarget {
    /// `"*"`: every target without an entry of its own.
    Any,
    /// One target (normalised).
    Name(TargetName),
}

impl fmt::Display for ChapTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChapTarget::Any => f.write_str("*"),
            ChapTarget::Name(n) => write!(f, "{n}"),
        }
    }
}

/// Where a CHAP secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the config file.
    Inline(Secret),
    /// The first line of this (absolute) file, read when needed.
    File(PathBuf),
}

/// A username and where its secret comes from, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapUser {
    /// CHAP name.
    pub username: String,
    /// CHAP secret.
    pub password: SecretSource,
}

/// One `[[chap]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapEntry {
    /// The target(s) it applies to.
    pub target: ChapTarget,
    /// What the initiator presents to the target (`username`, `password`).
    pub user: ChapUser,
    /// What the target must present back, for mutual CHAP (`username_in`,
    /// `password_in`).
    pub mutual: Option<ChapUser>,
    /// 1-based line of the entry's `target` key, for messages.
    pub line: usize,
}

/// A CHAP username with its secret, ready for use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// CHAP name.
    pub username: String,
    /// CHAP secret.
    pub password: Secret,
}

/// Resolved CHAP settings for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    /// What the initiator presents (open-iscsi `node.session.auth.username`/`password`).
    pub credentials: Credentials,
    /// What the target must present (`username_in`/`password_in`), if mutual.
    pub mutual: Option<Credentials>,
}

impl ChapEntry {
    /// Reads the secrets (password files are checked for owner and mode).
    pub fn resolve(&self) -> Result<Chap, ConfigError> {
        self.resolve_as(nix::unistd::geteuid().as_raw())
    }

    /// [`ChapEntry::resolve`] with the expected owner of password files
    /// given, so that tests need not run as root.
    fn resolve_as(&self, owner: u32) -> Result<Chap, ConfigError> {
        let credentials = resolve_user(&self.user, owner)?;
        let mutual = self
            .mutual
            .as_ref()
            .map(|u| resolve_user(u, owner))
            .transpose()?;
        Ok(Chap {
            credentials,
            mutual,
        })
    }
}

fn resolve_user(user: &ChapUser, owner: u32) -> Result<Credentials, ConfigError> {
    let password = match &user.password {
        SecretSource::Inline(s) => s.clone(),
        SecretSource::File(path) => read_secret_file(path, owner)?,
    };
    Ok(Credentials {
        username: user.username.clone(),
        password,
    })
}

/// Reads the first line of a password file after checking, on the opened
/// file (no race with a rename), that only `owner` can reach it.
fn read_secret_file(path: &Path, owner: u32) -> Result<Secret, ConfigError> {
    let read_err = |cause| ConfigError::SecretRead {
        path: path.to_owned(),
        cause,
    };
    // O_NONBLOCK: a FIFO put there by mistake must not hang the hotplug
    // script; it has no effect on regular files.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(ConfigError::SecretNotRegular {
            path: path.to_owned(),
        });
    }
    if meta.uid() != owner {
        return Err(ConfigError::SecretOwner {
            path: path.to_owned(),
            uid: meta.uid(),
            expected: owner,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::SecretMode {
            path: path.to_owned(),
            mode,
        });
    }
    // Bounded read: a secret is short, and the file could be huge by mistake.
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    let line = text.split('\n').next().unwrap_or("");
    let line = line.strip_suffix('\r').unwrap_or(line);
    if let Some(problem) = secret_problem(line) {
        return Err(ConfigError::SecretContent {
            path: path.to_owned(),
            problem,
        });
    }
    Ok(Secret(line.to_owned()))
}

/// Why a CHAP secret is unacceptable, if it is.
fn secret_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("is empty")
    } else if s.contains(['\n', '\r']) {
        Some("contains a newline")
    } else if s.len() > MAX_CHAP_LEN {
        Some("is longer than 255 bytes")
    } else {
        None
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from; `None` when the default file is absent.
    pub path: Option<PathBuf>,
    /// The label table (`label_table`).
    pub label_table: PathBuf,
    /// Persistent state (`state_dir`).
    pub state_dir: PathBuf,
    /// Runtime state and locks (`run_dir`).
    pub run_dir: PathBuf,
    /// `[discovery]`.
    pub discovery: Discovery,
    /// `[timeouts]`.
    pub timeouts: Timeouts,
    /// `[md]`.
    pub md: MdTuning,
    /// `[[chap]]` entries, in file order.
    pub chap: Vec<ChapEntry>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: None,
            label_table: PathBuf::from(DEFAULT_LABEL_TABLE),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            discovery: Discovery::default(),
            timeouts: Timeouts::default(),
            md: MdTuning::default(),
            chap: Vec::new(),
        }
    }
}

impl Config {
    /// Loads `explicit`, or [`DEFAULT_CONFIG_PATH`] (defaults if absent).
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match explicit {
            Some(path) => Config::load_from(path, true),
            None => Config::load_from(Path::new(DEFAULT_CONFIG_PATH), false),
        }
    }

    fn load_from(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let read_err = |cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        };
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return if required {
                    Err(ConfigError::NotFound {
                        path: path.to_owned(),
                    })
                } else {
                    Ok(Config::default())
                };
            }
            Err(e) => return Err(read_err(e)),
        };
        let meta = file.metadata().map_err(read_err)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read_err)?;
        let config = Config::parse(&text, path)?;
        let mode = meta.permissions().mode() & 0o7777;
        if config.has_inline_secret() && mode & 0o077 != 0 {
            return Err(ConfigError::InsecureConfig {
                path: path.to_owned(),
                mode,
            });
        }
        Ok(config)
    }

    /// Parses `text`; `path` is recorded and used in messages. Does not look
    /// at the file system (password files are read by [`Config::chap_for`]).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let start = e.span().map_or(0, |s| s.start);
            let (line, column) = line_col(text, start);
            let message = match secret_key_at(text, start) {
                // serde quotes a value of the wrong type (`invalid type:
                // integer `1234``): an unquoted password would be printed.
                Some(key) => format!("{key} must be a quoted string (its value is not shown)"),
                // The message is one line; make sure of it.
                None => e.message().trim().replace('\n', " "),
            };
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })?;
        let mut v = Validator {
            text,
            path,
            errors: Vec::new(),
        };
        let config = v.config(raw, path);
        match v.errors.len() {
            0 => Ok(config),
            1 => Err(v.errors.remove(0)),
            _ => Err(ConfigError::Multiple {
                path: path.to_owned(),
                errors: v.errors,
            }),
        }
    }

    /// The CHAP settings for `target`: its own entry, else the `"*"` entry,
    /// else `None`. Reads password files.
    pub fn chap_for(&self, target: &TargetName) -> Result<Option<Chap>, ConfigError> {
        self.chap_entry(target).map(ChapEntry::resolve).transpose()
    }

    /// The `[[chap]]` entry that applies to `target`, without reading secrets.
    pub fn chap_entry(&self, target: &TargetName) -> Option<&ChapEntry> {
        let exact = self
            .chap
            .iter()
            .find(|e| matches!(&e.target, ChapTarget::Name(n) if n == target));
        exact.or_else(|| self.chap.iter().find(|e| e.target == ChapTarget::Any))
    }

    fn has_inline_secret(&self) -> bool {
        self.chap.iter().any(|e| {
            std::iter::once(&e.user)
                .chain(e.mutual.as_ref())
                .any(|u| matches!(u.password, SecretSource::Inline(_)))
        })
    }
}

/// The secret key (`password`, `password_in`) whose value holds byte
/// `offset` of `text`, if any.
fn secret_key_at(text: &str, offset: usize) -> Option<&'static str> {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    // The key right before the last `=` ahead of the value, on its line
    // (an inline table has several).
    let line = &text[text[..offset].rfind('\n').map_or(0, |i| i + 1)..offset];
    let before = line[..line.rfind('=')?].trim_end();
    let key = before
        .rsplit(|c: char| !(c.is_ascii_alphanumeric() || "_-\"'".contains(c)))
        .next()?
        .trim_matches(|c| c == '"' || c == '\'');
    ["password", "password_in"].into_iter().find(|k| *k == key)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    label_table: Option<Spanned<String>>,
    state_dir: Option<Spanned<String>>,
    run_dir: Option<Spanned<String>>,
    #[serde(default)]
    discovery: RawDiscovery,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    md: RawMd,
    #[serde(default)]
    chap: Vec<RawChap>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    #[serde(default)]
    portals: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    login: Option<Spanned<u64>>,
    device: Option<Spanned<u64>>,
    command: Option<Spanned<u64>>,
    lock: Option<Spanned<u64>>,
    replacement: Option<Spanned<u64>>,
    noop_interval: Option<Spanned<u64>>,
    noop_timeout: Option<Spanned<u64>>,
    watch: Option<Spanned<u64>>,
    hotplug: Option<Spanned<u64>>,
    heal: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMd {
    sync_speed_min: Option<Spanned<u32>>,
    sync_speed_max: Option<Spanned<u32>>,
    bitmap: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChap {
    target: Spanned<String>,
    username: Spanned<String>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    username_in: Option<Spanned<String>>,
    password_in: Option<Spanned<String>>,
    password_in_file: Option<Spanned<String>>,
}

/// Turns the raw TOML into a [`Config`], collecting every problem.
struct Validator<'a> {
    text: &'a str,
    path: &'a Path,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: String) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push(ConfigError::Invalid {
            path: self.path.to_owned(),
            line,
            column,
            message,
        });
    }

    fn config(&mut self, raw: RawConfig, path: &Path) -> Config {
        let d = Config::default();
        let portals = raw
            .discovery
            .portals
            .iter()
            .filter_map(|p| match parse_portal(p.get_ref()) {
                Ok(portal) => Some(portal),
                Err(why) => {
                    self.error(p.span(), format!("portal {:?}: {why}", p.get_ref()));
                    None
                }
            })
            .collect();
        let t = Timeouts::default();
        let timeouts = Timeouts {
            login: self.timeout("login", raw.timeouts.login, t.login),
            device: self.timeout("device", raw.timeouts.device, t.device),
            command: self.timeout("command", raw.timeouts.command, t.command),
            lock: self.timeout("lock", raw.timeouts.lock, t.lock),
            replacement: self.timeout("replacement", raw.timeouts.replacement, t.replacement),
            noop_interval: self.timeout(
                "noop_interval",
                raw.timeouts.noop_interval,
                t.noop_interval,
            ),
            noop_timeout: self.timeout("noop_timeout", raw.timeouts.noop_timeout, t.noop_timeout),
            watch: self.timeout("watch", raw.timeouts.watch, t.watch),
            hotplug: self.timeout("hotplug", raw.timeouts.hotplug, t.hotplug),
            heal: self.timeout("heal", raw.timeouts.heal, t.heal),
        };
        let md = self.md(raw.md);
        let chap = self.chap(raw.chap);
        Config {
            path: Some(path.to_owned()),
            label_table: self.abs_path("label_table", raw.label_table, d.label_table),
            state_dir: self.abs_path("state_dir", raw.state_dir, d.state_dir),
            run_dir: self.abs_path("run_dir", raw.run_dir, d.run_dir),
            discovery: Discovery { portals },
            timeouts,
            md,
            chap,
        }
    }

    /// Relative paths are refused: hotplug scripts run from arbitrary
    /// working directories.
    fn abs_path(&mut self, key: &str, value: Option<Spanned<String>>, default: PathBuf) -> PathBuf {
        match value {
            None => default,
            Some(v) if v.get_ref().starts_with('/') => PathBuf::from(v.into_inner()),
            Some(v) => {
                self.error(
                    v.span(),
                    format!("{key} {:?} is not an absolute path", v.get_ref()),
                );
                default
            }
        }
    }

    fn timeout(&mut self, key: &str, value: Option<Spanned<u64>>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) if (1..=MAX_TIMEOUT_SECS).contains(v.get_ref()) => {
                Duration::from_secs(*v.get_ref())
            }
            Some(v) => {
                self.error(
                    v.span(),
                    format!(
                        "timeouts.{key} = {} (expected seconds, 1..={MAX_TIMEOUT_SECS})",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn md(&mut self, raw: RawMd) -> MdTuning {
        let mut speed = |key: &str, v: Option<Spanned<u32>>| match v {
            Some(v) if *v.get_ref() == 0 => {
                self.error(
                    v.span(),
                    format!(
                        "md.{key} = 0 (expected KiB/s > 0, or leave it out for the kernel default)"
                    ),
                );
                None
            }
            other => other.map(Spanned::into_inner),
        };
        let min_span = raw.sync_speed_min.as_ref().map(Spanned::span);
        let tuning = MdTuning {
            sync_speed_min: speed("sync_speed_min", raw.sync_speed_min),
            sync_speed_max: speed("sync_speed_max", raw.sync_speed_max),
            bitmap: raw.bitmap.unwrap_or(true),
        };
        if let (Some(min), Some(max), Some(span)) =
            (tuning.sync_speed_min, tuning.sync_speed_max, min_span)
        {
            if min > max {
                self.error(
                    span,
                    format!("md.sync_speed_min = {min} is above md.sync_speed_max = {max}"),
                );
            }
        }
        tuning
    }

    fn chap(&mut self, raw: Vec<RawChap>) -> Vec<ChapEntry> {
        let mut entries: Vec<ChapEntry> = Vec::new();
        for r in raw {
            let line = line_col(self.text, r.target.span().start).0;
            let target = if r.target.get_ref() == "*" {
                ChapTarget::Any
            } else {
                match TargetName::parse(r.target.get_ref()) {
                    Ok(name) => ChapTarget::Name(name),
                    Err(e) => {
                        self.error(r.target.span(), format!("chap target: {e} (or \"*\")"));
                        continue;
                    }
                }
            };
            if let Some(first) = entries.iter().find(|e| e.target == target) {
                let message = format!(
                    "duplicate [[chap]] entry for target {target} (first on line {})",
                    first.line
                );
                self.error(r.target.span(), message);
                continue;
            }
            let Some(user) =
                self.user("", Some(r.username), r.password, r.password_file, &r.target)
            else {
                continue;
            };
            let mutual = match (&r.username_in, &r.password_in, &r.password_in_file) {
                (None, None, None) => None,
                _ => match self.user(
                    "_in",
                    r.username_in,
                    r.password_in,
                    r.password_in_file,
                    &r.target,
                ) {
                    Some(u) => Some(u),
                    None => continue,
                },
            };
            entries.push(ChapEntry {
                target,
                user,
                mutual,
                line,
            });
        }
        entries
    }

    /// Validates one username/secret pair; `suffix` is "" or "_in".
    fn user(
        &mut self,
        suffix: &str,
        username: Option<Spanned<String>>,
        password: Option<Spanned<String>>,
        password_file: Option<Spanned<String>>,
        entry: &Spanned<String>,
    ) -> Option<ChapUser> {
        let Some(username) = username else {
            self.error(
                entry.span(),
                format!("[[chap]] has password{suffix} but no username{suffix} (expected both or neither)"),
            );
            return None;
        };
        let name_problem = if username.get_ref().is_empty() {
            Some("is empty")
        } else if username.get_ref().chars().any(char::is_control) {
            Some("contains a control character")
        } else if username.get_ref().len() > MAX_CHAP_LEN {
            Some("is longer than 255 bytes")
        } else {
            None
        };
        if let Some(problem) = name_problem {
            self.error(username.span(), format!("username{suffix} {problem}"));
            return None;
        }
        let password = match (password, password_file) {
            (Some(_), Some(file)) => {
                self.error(
                    file.span(),
                    format!(
                        "password{suffix} and password{suffix}_file are both set (expected one)"
                    ),
                );
                return None;
            }
            (None, None) => {
                self.error(
                    username.span(),
                    format!("username{suffix} has no password{suffix} or password{suffix}_file (expected one)"),
                );
                return None;
            }
            (Some(p), None) => {
                if let Some(problem) = secret_problem(p.get_ref()) {
                    self.error(p.span(), format!("password{suffix} {problem}"));
                    return None;
                }
                SecretSource::Inline(Secret(p.into_inner()))
            }
            (None, Some(f)) => {
                if !f.get_ref().starts_with('/') {
                    self.error(
                        f.span(),
                        format!(
                            "password{suffix}_file {:?} is not an absolute path",
                            f.get_ref()
                        ),
                    );
                    return None;
                }
                SecretSource::File(PathBuf::from(f.into_inner()))
            }
        };
        Some(ChapUser {
            username: username.into_inner(),
            password,
        })
    }
}

/// Parses `host[:port]`, `a.b.c.d[:port]` or `[v6][:port]`.
fn parse_portal(s: &str) -> Result<Portal, String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err("missing ']' after IPv6 address (expected [addr]:port)".into());
        };
        let addr: Ipv6Addr = rest[..close]
            .parse()
            .map_err(|_| "bad IPv6 address (expected [addr]:port)".to_owned())?;
        let after = &rest[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("unexpected text after ']' (expected [addr]:port)".into()),
        };
        (Host::Ipv6(addr), port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err("IPv6 addresses need brackets (expected [addr]:port)".into());
        }
        (parse_host(host)?, port)
    };
    let port = match port {
        None => DEFAULT_ISCSI_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("bad port {p:?} (expected 1-65535)")),
        },
    };
    Ok(Portal { host, port })
}

fn parse_host(s: &str) -> Result<Host, String> {
    if s.is_empty() {
        return Err("empty host (expected host[:port], a.b.c.d[:port] or [v6]:port)".into());
    }
    if let Ok(addr) = s.parse::<Ipv4Addr>() {
        return Ok(Host::Ipv4(addr));
    }
    // Looks like an address but is not one: more helpful than a name error.
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("bad IPv4 address".into());
    }
    let name_ok = s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !name_ok {
        return Err("bad host name (expected host[:port], a.b.c.d[:port] or [v6]:port)".into());
    }
    Ok(Host::Name(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn p() -> &'static Path {
        Path::new("/etc/i.toml")
    }

    fn parse_err(text: &str) -> String {
        Config::parse(text, p())
            .expect_err("should fail")
            .to_string()
    }

    fn target(s: &str) -> TargetName {
        TargetName::parse(s).expect("valid target")
    }

    const FULL: &str = r#"
label_table = "/etc/iscsimple/labels.conf"
state_dir = "/var/lib/x"
run_dir = "/run/x"

[discovery]
portals = ["192.0.2.10", "192.0.2.11:3261", "[2001:db8::1]:3262", "[2001:db8::2]", "san.example.com"]

[timeouts]
login = 5
device = 6
command = 7
lock = 8

[md]
sync_speed_min = 1000
sync_speed_max = 200000

[[chap]]
target = "IQN.2014-06.fr.example:my-vm-sn-1"
username = "u"
password = "secret-secret"
username_in = "t"
password_in_file = "/etc/iscsimple/secret-in"

[[chap]]
target = "*"
username = "any"
password_file = "/etc/iscsimple/secret"
"#;

    #[test]
    fn empty_text_gives_defaults() {
        let c = Config::parse("", p()).expect("valid");
        assert_eq!(
            c,
            Config {
                path: Some(p().to_owned()),
                ..Config::default()
            }
        );
        assert_eq!(c.timeouts.login, Duration::from_secs(15));
        assert_eq!(c.timeouts.device, Duration::from_secs(10));
        assert_eq!(c.label_table, Path::new(DEFAULT_LABEL_TABLE));
        assert_eq!(c.md, MdTuning::default());
    }

    #[test]
    fn full_example_parses() {
        let c = Config::parse(FULL, p()).expect("valid");
        assert_eq!(c.label_table, Path::new("/etc/iscsimple/labels.conf"));
        assert_eq!(c.run_dir, Path::new("/run/x"));
        let shown: Vec<String> = c
            .discovery
            .portals
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "192.0.2.10:3260",
                "192.0.2.11:3261",
                "[2001:db8::1]:3262",
                "[2001:db8::2]:3260",
                "san.example.com:3260"
            ]
        );
        assert_eq!(c.timeouts.lock, Duration::from_secs(8));
        assert_eq!(c.md.sync_speed_max, Some(200_000));
        assert_eq!(c.chap.len(), 2);
        assert_eq!(
            c.chap[0].target,
            ChapTarget::Name(target("iqn.2014-06.fr.example:my-vm-sn-1"))
        );
        assert_eq!(c.chap[0].line, 20);
        assert_eq!(
            c.chap[0].mutual,
            Some(ChapUser {
                username: "t".into(),
                password: SecretSource::File("/etc/iscsimple/secret-in".into())
            })
        );
        assert_eq!(c.chap[1].target, ChapTarget::Any);
    }

    #[test]
    fn shipped_example_parses_commented_and_uncommented() {
        let text = include_str!("../etc/iscsimple.toml");
        assert_eq!(
            Config::parse(text, p()).expect("as shipped"),
            Config {
                path: Some(p().to_owned()),
                ..Config::default()
            }
        );
        // Settings are commented out as "#key" (prose uses "# "): enabling
        // them all must still give a valid file.
        let enabled: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if !rest.is_empty() && !rest.starts_with([' ', '#']) => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::parse(&enabled, p()).expect("uncommented");
        assert!(!c.chap.is_empty());
        assert!(!c.discovery.portals.is_empty());
    }

    #[test]
    fn unknown_key_is_rejected_with_line() {
        assert_eq!(
            parse_err("[timeouts]\nlogin = 5\nlogn = 3\n"),
            "/etc/i.toml:3:1: unknown field `logn`, expected one of `login`, `device`, `command`, `lock`, `replacement`, `noop_interval`, `noop_timeout`, `watch`, `hotplug`, `heal`"
        );
        let e = parse_err("label_tabel = \"/x\"\n");
        assert!(
            e.starts_with("/etc/i.toml:1:1: unknown field `label_tabel`"),
            "{e}"
        );
        let e = parse_err("[timeouts]\nlogin = \"5\"\n");
        assert!(e.starts_with("/etc/i.toml:2:9: invalid type"), "{e}");
        let e = parse_err("[timeouts]\nlogin = -1\n");
        assert!(e.starts_with("/etc/i.toml:2:9: "), "{e}");
        let e = parse_err("a = [\n");
        assert!(e.starts_with("/etc/i.toml:"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn bad_values_are_rejected_with_position() {
        let cases = [
            (
                "[discovery]\nportals = [\"192.0.2.1:0\"]\n",
                r#"/etc/i.toml:2:12: portal "192.0.2.1:0": bad port "0" (expected 1-65535)"#,
            ),
            (
                "[discovery]\nportals = [\"a\", \"2001:db8::1\"]\n",
                r#"/etc/i.toml:2:17: portal "2001:db8::1": IPv6 addresses need brackets (expected [addr]:port)"#,
            ),
            (
                "[discovery]\nportals = [\"[2001:db8::1\"]\n",
                r#"/etc/i.toml:2:12: portal "[2001:db8::1": missing ']' after IPv6 address (expected [addr]:port)"#,
            ),
            (
                "[discovery]\nportals = [\"300.1.1.1\"]\n",
                r#"/etc/i.toml:2:12: portal "300.1.1.1": bad IPv4 address"#,
            ),
            (
                "[discovery]\nportals = [\"bad_host:3260\"]\n",
                r#"/etc/i.toml:2:12: portal "bad_host:3260": bad host name (expected host[:port], a.b.c.d[:port] or [v6]:port)"#,
            ),
            (
                "[discovery]\nportals = [\"h:99999\"]\n",
                r#"/etc/i.toml:2:12: portal "h:99999": bad port "99999" (expected 1-65535)"#,
            ),
            (
                "[timeouts]\ndevice = 0\n",
                "/etc/i.toml:2:10: timeouts.device = 0 (expected seconds, 1..=86400)",
            ),
            (
                "run_dir = \"run\"\n",
                r#"/etc/i.toml:1:11: run_dir "run" is not an absolute path"#,
            ),
            (
                "[md]\nsync_speed_min = 10\nsync_speed_max = 5\n",
                "/etc/i.toml:2:18: md.sync_speed_min = 10 is above md.sync_speed_max = 5",
            ),
            (
                "[[chap]]\ntarget = \"iqn.x\"\nusername = \"u\"\npassword = \"p\"\n",
                r#"/etc/i.toml:2:10: chap target: invalid target name "iqn.x": at byte 4: bad date in iqn. name (expected iqn.YYYY-MM. with month 01-12) (or "*")"#,
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"p\"\npassword_file = \"/s\"\n",
                "/etc/i.toml:5:17: password and password_file are both set (expected one)",
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\n",
                "/etc/i.toml:3:12: username has no password or password_file (expected one)",
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"\"\n",
                "/etc/i.toml:4:12: password is empty",
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"a\\nb\"\n",
                "/etc/i.toml:4:12: password contains a newline",
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword_file = \"s\"\n",
                r#"/etc/i.toml:4:17: password_file "s" is not an absolute path"#,
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"p\"\npassword_in = \"q\"\n",
                "/etc/i.toml:2:10: [[chap]] has password_in but no username_in (expected both or neither)",
            ),
            (
                "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"p\"\nusername_in = \"t\"\n",
                "/etc/i.toml:5:15: username_in has no password_in or password_in_file (expected one)",
            ),
            (
                "[[chap]]\ntarget = \"*\"\npassword = \"p\"\n",
                "/etc/i.toml:1:1: missing field `username`",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_err(text), expected, "{text}");
        }
        let long = format!(
            "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"{}\"\n",
            "x".repeat(256)
        );
        assert_eq!(
            parse_err(&long),
            "/etc/i.toml:4:12: password is longer than 255 bytes"
        );
    }

    #[test]
    fn duplicate_chap_entries_are_rejected() {
        let text = r#"
[[chap]]
target = "iqn.2014-06.fr.example:a"
username = "u"
password = "p"
[[chap]]
target = "IQN.2014-06.FR.EXAMPLE:A"
username = "u"
password = "p"
[[chap]]
target = "*"
username = "u"
password = "p"
[[chap]]
target = "*"
username = "u"
password = "p"
"#;
        let e = Config::parse(text, p()).expect_err("duplicates");
        let shown: Vec<String> = e.problems().iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "/etc/i.toml:7:10: duplicate [[chap]] entry for target iqn.2014-06.fr.example:a (first on line 3)",
                "/etc/i.toml:15:10: duplicate [[chap]] entry for target * (first on line 11)",
            ]
        );
        assert!(e
            .to_string()
            .starts_with("/etc/i.toml: 2 problems; first: /etc/i.toml:7:10: "));
    }

    #[test]
    fn exact_chap_entry_wins_over_wildcard() {
        let text = r#"
[[chap]]
target = "*"
username = "any"
password = "p-any"
[[chap]]
target = "eui.02004567A425678D"
username = "exact"
password = "p-exact"
username_in = "tgt"
password_in = "p-in"
"#;
        let c = Config::parse(text, p()).expect("valid");
        let exact = c
            .chap_for(&target("eui.02004567a425678d"))
            .expect("inline")
            .expect("entry");
        assert_eq!(exact.credentials.username, "exact");
        assert_eq!(exact.credentials.password.expose(), "p-exact");
        let mutual = exact.mutual.expect("mutual");
        assert_eq!(
            (mutual.username.as_str(), mutual.password.expose()),
            ("tgt", "p-in")
        );
        let any = c
            .chap_for(&target("naa.52004567ba64678d"))
            .expect("inline")
            .expect("entry");
        assert_eq!(any.credentials.username, "any");
        assert!(any.mutual.is_none());

        let none = Config::parse("", p()).expect("valid");
        assert!(none
            .chap_for(&target("naa.52004567ba64678d"))
            .expect("ok")
            .is_none());
    }

    fn secret_file(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        let mut f = File::create(&path).expect("create");
        f.write_all(body.as_bytes()).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    fn entry(path: &Path) -> ChapEntry {
        ChapEntry {
            target: ChapTarget::Any,
            user: ChapUser {
                username: "u".into(),
                password: SecretSource::File(path.to_owned()),
            },
            mutual: None,
            line: 1,
        }
    }

    #[test]
    fn password_files_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let me = nix::unistd::geteuid().as_raw();

        let good = secret_file(dir.path(), "good", "s3cret\r\nignored\n", 0o600);
        let chap = entry(&good).resolve_as(me).expect("good file");
        assert_eq!(chap.credentials.password.expose(), "s3cret");
        assert_eq!(entry(&good).resolve().expect("geteuid"), chap);

        let e = entry(&good).resolve_as(me + 1).expect_err("owner");
        assert_eq!(
            e.to_string(),
            format!(
                "password file {0}: owned by uid {me} (expected uid {1}); run chown {1} {0}",
                good.display(),
                me + 1
            )
        );

        let open = secret_file(dir.path(), "open", "s3cret\n", 0o640);
        let e = entry(&open).resolve_as(me).expect_err("mode");
        assert_eq!(
            e.to_string(),
            format!(
                "password file {0}: mode 0640 gives group/other access (expected 0600 or stricter); run chmod 600 {0}",
                open.display()
            )
        );

        let empty = secret_file(dir.path(), "empty", "\nsecond\n", 0o400);
        let e = entry(&empty).resolve_as(me).expect_err("empty");
        assert_eq!(
            e.to_string(),
            format!("password file {}: first line is empty", empty.display())
        );

        let e = entry(dir.path()).resolve_as(me).expect_err("dir");
        assert!(matches!(e, ConfigError::SecretNotRegular { .. }), "{e}");

        // A FIFO is refused without blocking on open.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let e = entry(&fifo).resolve_as(me).expect_err("fifo");
        assert!(matches!(e, ConfigError::SecretNotRegular { .. }), "{e}");

        let missing = dir.path().join("missing");
        let e = entry(&missing).resolve_as(me).expect_err("missing");
        assert!(
            e.to_string().starts_with(&format!(
                "password file {}: cannot read: ",
                missing.display()
            )),
            "{e}"
        );
    }

    #[test]
    fn load_handles_missing_and_insecure_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("none.toml");
        let e = Config::load(Some(&missing)).expect_err("explicit missing");
        assert_eq!(
            e.to_string(),
            format!("config {}: not found", missing.display())
        );
        assert_eq!(
            Config::load_from(&missing, false).expect("default missing"),
            Config::default()
        );

        let inline = "[[chap]]\ntarget = \"*\"\nusername = \"u\"\npassword = \"p\"\n";
        let cfg = secret_file(dir.path(), "c.toml", inline, 0o644);
        let e = Config::load(Some(&cfg)).expect_err("insecure");
        assert_eq!(
            e.to_string(),
            format!(
                "config {0}: holds an inline CHAP password but mode is 0644 (group/other access); run chmod 600 {0} or use password_file",
                cfg.display()
            )
        );
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = Config::load(Some(&cfg)).expect("secure");
        assert_eq!(c.path.as_deref(), Some(cfg.as_path()));

        // Without inline secrets a world-readable config is fine.
        let plain = secret_file(dir.path(), "p.toml", "[timeouts]\nlock = 3\n", 0o644);
        assert_eq!(
            Config::load(Some(&plain)).expect("plain").timeouts.lock,
            Duration::from_secs(3)
        );
    }

    #[test]
    fn secrets_never_print() {
        let c = Config::parse(FULL, p()).expect("valid");
        let debug = format!("{c:?}");
        assert!(!debug.contains("secret-secret"), "{debug}");
        assert!(debug.contains("<redacted>"));
        let chap = c.chap[0].resolve_as(0).ok();
        assert!(chap.is_none(), "password_in_file does not exist here");
        let s = Secret::from("hunter2".to_owned());
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(
            format!("{:?}", SecretSource::Inline(s.clone())),
            "Inline(<redacted>)"
        );
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn a_password_of_the_wrong_type_is_not_echoed() {
        // serde quotes the value of an invalid type: an unquoted numeric
        // password would land in the error line, stderr and the journal.
        for value in ["12345678901", "3.14159265", "true", "1979-05-27"] {
            for key in ["password", "password_in"] {
                let text = format!(
                    "[[chap]]\ntarget = \"*\"\nusername = \"u\"\nusername_in = \"t\"\n{key} = {value}\n"
                );
                let e = parse_err(&text);
                assert!(!e.contains(value), "{e}");
                assert!(e.contains(&format!("{key} must be a quoted string")), "{e}");
                assert!(e.starts_with("/etc/i.toml:5:"), "{e}");
            }
        }
        let e =
            parse_err("chap = [{ target = \"*\", username = \"u\", password = 12345678901 }]\n");
        assert!(!e.contains("12345678901"), "{e}");
        // Other keys keep serde's message, value included.
        let e = parse_err("[timeouts]\nlogin = true\n");
        assert!(e.contains("invalid type: boolean `true`"), "{e}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é = 1", 2), (1, 2));
        assert_eq!(line_col("ab", 99), (1, 3));
    }
}
