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
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spec::TargetName;

mod chap;
#[cfg(test)]
mod tests;
mod validate;

pub use chap::{Chap, ChapEntry, ChapTarget, ChapUser, Credentials, Secret, SecretSource};
use validate::{line_col, secret_key_at, RawConfig, Validator};

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

/// Where the disks' records are kept (`[cluster] store`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ClusterStore {
    /// On this host, under `state_dir` (`disks/WWID.json`).
    #[default]
    Local,
    /// In etcd (`endpoints`), shared by every host that attaches the disks.
    Etcd,
}

/// What an attach of a writable disk does when the store does not answer
/// (`[cluster] on_unreachable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnUnreachable {
    /// Refuse it (exit 1): another host may be writing the disk.
    #[default]
    Refuse,
    /// Attach with what this host knows (a full copy from the iSCSI disk,
    /// or the local copy where this host recorded it newer).
    Local,
}

/// `[cluster]`: the disks' records (generation, writer, each host's copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Where the records are kept.
    pub store: ClusterStore,
    /// This host's name in the records; None: `/etc/machine-id`.
    pub host_id: Option<String>,
    /// This host is the only one that ever attaches its disks: with the
    /// local store, a clean copy may then be trusted (zero-copy attach).
    pub only_user: bool,
    /// etcd's client URLs (`http://HOST:PORT`), tried in order.
    pub endpoints: Vec<String>,
    /// How long this host stays the writer of its disks after `watch`
    /// last renewed its lease.
    pub lease_ttl: Duration,
    /// What an attach does when the store does not answer.
    pub on_unreachable: OnUnreachable,
    /// TLS to etcd (`https://` endpoints).
    pub tls: Option<EtcdTls>,
}

/// The files TLS to etcd uses (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed the members' certificates (`ca_file`).
    pub ca: PathBuf,
    /// This host's certificate and key (`cert_file`, `key_file`), for
    /// etcd's `--client-cert-auth`.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            store: ClusterStore::Local,
            host_id: None,
            only_user: false,
            endpoints: Vec::new(),
            lease_ttl: Duration::from_secs(20),
            on_unreachable: OnUnreachable::Refuse,
            tls: None,
        }
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
    /// `[cluster]`.
    pub cluster: Cluster,
    /// `[[chap]]` entries, in file order.
    pub chap: Vec<ChapEntry>,
    /// `[[target]]` entries: targets with their own portals.
    pub targets: Vec<TargetPortals>,
}

/// `[[target]]`: the portals a target is reached through (each logged in,
/// with multipath when there are several), instead of its node records
/// or discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPortals {
    /// The target.
    pub name: TargetName,
    /// Its portals (IP addresses), in file order, at least one.
    pub portals: Vec<Portal>,
    /// Line of `name` in the file, for messages.
    pub line: usize,
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
            cluster: Cluster::default(),
            chap: Vec::new(),
            targets: Vec::new(),
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

    /// The portals `[[target]]` gives `target`, if any.
    pub fn portals_for(&self, target: &TargetName) -> Option<&[Portal]> {
        self.targets
            .iter()
            .find(|t| &t.name == target)
            .map(|t| t.portals.as_slice())
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
