//! Files and directories that root creates in places others might reach.
//!
//! iscsimple runs as root and acts on what its state files say (stop this
//! array, delete that SCSI disk, log out of that session), so its
//! directories must be ones nobody else can write in, and no path it
//! creates may be steered elsewhere by a planted symlink:
//!
//! - a directory of ours ([`private_dir`]) is made 0700; an existing one
//!   that is a symlink, not a directory, not owned by the effective uid, or
//!   writable by group or others is refused, with the exact fix;
//! - open-iscsi's lock directory ([`root_dir`]) is made 0700 when missing
//!   (`/run/lock` is world-writable on Debian: whoever makes it first owns
//!   it); an existing one must be a real directory of root's that others
//!   cannot write in;
//! - every directory above either is checked as OpenSSH checks a key
//!   file's path: owned by root (or us), and not writable by others unless
//!   sticky; a symlink on the way must be root's;
//! - new files are made with `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`, mode
//!   0600 ([`create_new`]); lock files are opened with `O_NOFOLLOW`
//!   ([`open_lock`]).
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Why a path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The path exists but is not safely ours: changing nothing, we refuse it.
    #[error("{}: {problem}; not using it (fix: {fix})", path.display())]
    Unsafe {
        /// The path refused.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The command that fixes it.
        fix: String,
    },
    /// A system call on the path failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

impl FsError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> FsError + '_ {
        move |source| FsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How strict a directory check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Ours alone: owned by the effective uid, no group or other write.
    Private,
    /// open-iscsi's, shared by root's tools: owned by root (or us), no
    /// write for others, group write only for root's group.
    Root,
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Make sure `path` is a directory of ours, creating it (0700, and any
/// missing parent 0755) when absent. See the module doc for what is refused.
pub fn private_dir(path: &Path) -> Result<(), FsError> {
    ensure(path, Kind::Private, true).map(|_| ())
}

/// [`private_dir`] for `dir` and its parent (a state, lock or bitmap
/// directory and the run or state directory above it: both are ours).
pub fn private_subdir(dir: &Path) -> Result<(), FsError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        private_dir(parent)?;
    }
    ensure(dir, Kind::Private, true).map(|_| ())
}

/// Check `dir` and its parent as [`private_subdir`] does, without creating
/// either; Ok(false) when `dir` does not exist (nothing of ours to read).
pub fn check_private_subdir(dir: &Path) -> Result<bool, FsError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !check_dir(parent)? {
            return Ok(false);
        }
    }
    if !exists(dir)? {
        return Ok(false);
    }
    verify(dir, Kind::Private)?;
    Ok(true)
}

/// Check an existing directory of ours (and what is above it) without
/// creating anything; Ok(false) when it does not exist.
pub fn check_dir(path: &Path) -> Result<bool, FsError> {
    check(path, Kind::Private)
}

/// Make sure `path` is a directory of root's that others cannot write in
/// (open-iscsi's lock directory), creating it 0700 when absent.
pub fn root_dir(path: &Path) -> Result<(), FsError> {
    ensure(path, Kind::Root, true).map(|_| ())
}

/// Check an existing root directory as [`root_dir`] does, creating
/// nothing; Ok(false) when absent.
pub fn check_root_dir(path: &Path) -> Result<bool, FsError> {
    check(path, Kind::Root)
}

/// Check an existing directory of `kind` and what is above it, creating
/// nothing; Ok(false) when it does not exist.
fn check(path: &Path, kind: Kind) -> Result<bool, FsError> {
    ancestors(path)?;
    if !exists(path)? {
        return Ok(false);
    }
    verify(path, kind)?;
    Ok(true)
}

fn exists(path: &Path) -> Result<bool, FsError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(FsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Check the ancestors, then create (when `create`) and check `path`.
/// Returns whether this call made it.
fn ensure(path: &Path, kind: Kind, create: bool) -> Result<bool, FsError> {
    ancestors(path)?;
    let mut made = false;
    if !exists(path)? {
        if !create {
            return Err(FsError::Io {
                path: path.to_path_buf(),
                source: io::ErrorKind::NotFound.into(),
            });
        }
        if let Some(parent) = path.parent().filter(|p| !exists(p).unwrap_or(true)) {
            // Missing parents are ordinary directories (as `mkdir -p`
            // makes them), made by us; the leaf is the private one.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(FsError::io(parent))?;
        }
        // mkdir never follows a symlink planted at `path` (EEXIST), and the
        // umask can only take bits away from 0700.
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => made = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(FsError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    verify(path, kind)?;
    Ok(made)
}

/// `path` itself: a real directory, ours, others cannot write in it.
fn verify(path: &Path, kind: Kind) -> Result<(), FsError> {
    let m = fs::symlink_metadata(path).map_err(FsError::io(path))?;
    let shown = path.display();
    let unsafe_ = |problem: String, fix: String| FsError::Unsafe {
        path: path.to_path_buf(),
        problem,
        fix,
    };
    let remake = match kind {
        Kind::Private => "iscsimple makes it again",
        Kind::Root => "iscsiadm and iscsimple make it again",
    };
    if m.file_type().is_symlink() {
        let to = fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        return Err(unsafe_(
            format!("is a symbolic link (to {to}), not a directory"),
            format!("rm {shown}; {remake}"),
        ));
    }
    if !m.is_dir() {
        return Err(unsafe_(
            "is not a directory".to_string(),
            format!("rm {shown}; {remake}"),
        ));
    }
    let owner_ok = match kind {
        Kind::Private => m.uid() == euid(),
        Kind::Root => m.uid() == 0 || m.uid() == euid(),
    };
    if !owner_ok {
        return Err(unsafe_(
            format!(
                "is owned by uid {}, not {}: someone else made it and may have put anything in it",
                m.uid(),
                euid()
            ),
            format!("rm -rf {shown}; {remake}"),
        ));
    }
    let mode = m.mode() & 0o7777;
    let writable = match kind {
        Kind::Private => mode & 0o022 != 0,
        Kind::Root => mode & 0o002 != 0 || (mode & 0o020 != 0 && m.gid() != 0),
    };
    if writable {
        let fix = match kind {
            Kind::Private => format!("chmod 0700 {shown}"),
            Kind::Root => format!("chmod go-w {shown}"),
        };
        return Err(unsafe_(
            format!("has mode {mode:04o}: others can write in it"),
            fix,
        ));
    }
    Ok(())
}

/// Every existing directory above `path`: root's or ours, not writable by
/// others unless sticky; a symlink on the way must be root's or ours (it
/// could otherwise send the rest of the path anywhere).
fn ancestors(path: &Path) -> Result<(), FsError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let parent = if parent.is_absolute() {
        parent.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(FsError::io(path))?
            .join(parent)
    };
    let mut at = PathBuf::from("/");
    check_above(&at, &fs::metadata(&at).map_err(FsError::io(&at))?)?;
    for c in parent.components() {
        match c {
            Component::Normal(name) => at.push(name),
            Component::ParentDir => {
                at.pop();
                continue;
            }
            _ => continue,
        }
        let m = match fs::symlink_metadata(&at) {
            Ok(m) => m,
            // The rest is missing: made by us, below what was checked.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(FsError::Io { path: at, source }),
        };
        if m.file_type().is_symlink() {
            check_owner_above(&at, &m)?;
            at = fs::canonicalize(&at).map_err(FsError::io(&at))?;
            let m = fs::metadata(&at).map_err(FsError::io(&at))?;
            check_above(&at, &m)?;
        } else {
            check_above(&at, &m)?;
        }
    }
    Ok(())
}

fn check_owner_above(at: &Path, m: &Metadata) -> Result<(), FsError> {
    if m.uid() != 0 && m.uid() != euid() {
        return Err(FsError::Unsafe {
            path: at.to_path_buf(),
            problem: format!(
                "is owned by uid {}: it decides where the directories below it are",
                m.uid()
            ),
            fix: "set run_dir and state_dir in the config to directories under root's own"
                .to_string(),
        });
    }
    Ok(())
}

fn check_above(at: &Path, m: &Metadata) -> Result<(), FsError> {
    check_owner_above(at, m)?;
    if !m.is_dir() {
        return Err(FsError::Unsafe {
            path: at.to_path_buf(),
            problem: "is not a directory".to_string(),
            fix: format!("rm {}", at.display()),
        });
    }
    let mode = m.mode() & 0o7777;
    let sticky = mode & 0o1000 != 0;
    let others = mode & 0o002 != 0 || (mode & 0o020 != 0 && m.gid() != 0);
    if others && !sticky {
        return Err(FsError::Unsafe {
            path: at.to_path_buf(),
            problem: format!(
                "has mode {mode:04o}: others can rename what is in it (no sticky bit)"
            ),
            fix: format!("chmod go-w {}", at.display()),
        });
    }
    Ok(())
}

/// Create a new file for writing: `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`,
/// `mode`. A leftover at `path` (a stale temporary file, a planted
/// symlink) makes it fail: remove it first with [`remove_stale`].
pub fn create_new(path: &Path, mode: u32) -> Result<File, FsError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(FsError::io(path))
}

/// Remove what a killed writer may have left at `path` (a file, or a
/// symlink, which is removed itself and never followed); absent is fine.
pub fn remove_stale(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FsError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Open (creating it 0600 if absent) a lock file, never through a symlink;
/// it must be a regular file.
pub fn open_lock(path: &Path) -> Result<File, FsError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // O_NONBLOCK: a FIFO there must not hang the call; it is refused below.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => FsError::Unsafe {
                path: path.to_path_buf(),
                problem: "is a symbolic link, not a lock file".to_string(),
                fix: format!("rm {}", path.display()),
            },
            _ => FsError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
    let m = file.metadata().map_err(FsError::io(path))?;
    if !m.is_file() {
        return Err(FsError::Unsafe {
            path: path.to_path_buf(),
            problem: "is not a regular file".to_string(),
            fix: format!("rm {}", path.display()),
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).expect("stat").mode() & 0o7777
    }

    fn chmod(p: &Path, m: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");
    }

    #[test]
    fn a_new_private_dir_is_0700_under_0755_parents() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("a/b/iscsimple");
        private_dir(&dir).expect("made");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&d.path().join("a/b")), 0o755);
        private_dir(&dir).expect("again: fine");
    }

    #[test]
    fn a_symlink_is_refused_and_nothing_is_made_at_its_target() {
        let d = tempfile::tempdir().expect("tempdir");
        let target = d.path().join("target");
        let link = d.path().join("iscsimple");
        symlink(&target, &link).expect("plant");
        let e = private_dir(&link).expect_err("refused");
        assert!(
            e.to_string().contains("is a symbolic link")
                && e.to_string()
                    .contains(&format!("fix: rm {}", link.display())),
            "{e}"
        );
        assert!(!target.exists(), "nothing made at the target");
        let e = root_dir(&link).expect_err("refused");
        assert!(matches!(e, FsError::Unsafe { .. }), "{e}");
        assert!(!target.exists());
    }

    #[test]
    fn a_writable_dir_is_refused_with_the_chmod() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("iscsimple");
        fs::create_dir(&dir).expect("mkdir");
        for m in [0o777, 0o770, 0o1777] {
            chmod(&dir, m);
            let e = private_dir(&dir).expect_err("refused");
            assert!(
                e.to_string()
                    .contains(&format!("fix: chmod 0700 {}", dir.display())),
                "{e}"
            );
            assert_eq!(mode(&dir), m, "left as it was");
        }
        chmod(&dir, 0o755);
        private_dir(&dir).expect("0755: nobody else can write");
        // open-iscsi's directory: others must not write; root's group may.
        chmod(&dir, 0o757);
        let e = root_dir(&dir).expect_err("refused");
        assert!(e.to_string().contains("chmod go-w"), "{e}");
    }

    #[test]
    fn a_file_where_a_dir_goes_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let path = d.path().join("iscsimple");
        fs::write(&path, "").expect("write");
        let e = private_dir(&path).expect_err("refused");
        assert!(e.to_string().contains("is not a directory"), "{e}");
    }

    #[test]
    fn a_foreign_dir_is_refused_and_so_is_what_is_below_a_foreign_parent() {
        if !nix::unistd::geteuid().is_root() {
            return; // only root can give a directory away
        }
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("iscsimple");
        fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::chown(&dir, Some(65534), None).expect("chown");
        let e = private_dir(&dir).expect_err("refused");
        assert!(
            e.to_string().contains("owned by uid 65534")
                && e.to_string()
                    .contains(&format!("fix: rm -rf {}", dir.display())),
            "{e}"
        );
        assert!(root_dir(&dir).is_err(), "not root's either");
        // Below it: the parent decides where the rest goes.
        let e = private_dir(&dir.join("run")).expect_err("refused");
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        assert!(!dir.join("run").exists());
    }

    #[test]
    fn a_parent_others_can_write_is_refused_unless_sticky() {
        let d = tempfile::tempdir().expect("tempdir");
        let open = d.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        chmod(&open, 0o777);
        let e = private_dir(&open.join("iscsimple")).expect_err("refused");
        assert!(e.to_string().contains("no sticky bit"), "{e}");
        assert!(!open.join("iscsimple").exists());
        chmod(&open, 0o1777); // like /tmp and Debian's /run/lock
        private_dir(&open.join("iscsimple")).expect("sticky: fine");
    }

    #[test]
    fn checks_create_nothing() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("run/iscsimple/attachments");
        assert!(!check_private_subdir(&dir).expect("absent is fine"));
        assert!(!check_dir(&d.path().join("run")).expect("absent is fine"));
        assert!(!check_root_dir(&d.path().join("lock")).expect("absent is fine"));
        assert!(!d.path().join("run").exists() && !d.path().join("lock").exists());
        private_subdir(&dir).expect("made");
        assert!(check_private_subdir(&dir).expect("ours"));
        chmod(&d.path().join("run/iscsimple"), 0o777);
        assert!(
            check_private_subdir(&dir).is_err(),
            "its parent is checked too"
        );
    }

    #[test]
    fn new_files_are_exclusive_0600_and_never_follow_a_symlink() {
        let d = tempfile::tempdir().expect("tempdir");
        let victim = d.path().join("victim");
        fs::write(&victim, "precious").expect("write");
        let path = d.path().join("x.tmp");
        symlink(&victim, &path).expect("plant");
        assert!(
            create_new(&path, 0o600).is_err(),
            "a symlink is not followed"
        );
        remove_stale(&path).expect("remove the link itself");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
        create_new(&path, 0o600).expect("create");
        assert_eq!(mode(&path), 0o600);
        assert!(create_new(&path, 0o600).is_err(), "O_EXCL");
        remove_stale(&d.path().join("absent")).expect("absent is fine");
    }

    #[test]
    fn lock_files_are_never_opened_through_a_symlink() {
        let d = tempfile::tempdir().expect("tempdir");
        let victim = d.path().join("victim");
        let path = d.path().join("x.lock");
        symlink(&victim, &path).expect("plant");
        let e = open_lock(&path).expect_err("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!victim.exists());
        fs::remove_file(&path).expect("rm");
        open_lock(&path).expect("made");
        assert_eq!(mode(&path), 0o600);
        open_lock(&path).expect("opened again");
        nix::unistd::mkfifo(&d.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert!(
            open_lock(&d.path().join("fifo")).is_err(),
            "not a regular file"
        );
    }
}
