//! `[[chap]]` entries and their secrets: inline, or password files read
//! (owner and mode checked) only when a target needs them.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::spec::TargetName;

use super::*;

/// A CHAP secret. Debug and Display print `<redacted>`; use
/// [`Secret::expose`] only where the value is handed to open-iscsi.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

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
    pub(super) fn resolve_as(&self, owner: u32) -> Result<Chap, ConfigError> {
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

pub(super) fn resolve_user(user: &ChapUser, owner: u32) -> Result<Credentials, ConfigError> {
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
pub(super) fn read_secret_file(path: &Path, owner: u32) -> Result<Secret, ConfigError> {
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
pub(super) fn secret_problem(s: &str) -> Option<&'static str> {
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
