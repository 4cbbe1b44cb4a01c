//! One typed table of records: a directory of `NAME.json` files, one per
//! key, each written atomically (temporary file made with `O_EXCL` and
//! `O_NOFOLLOW`, fsync, rename, fsync of the directory) and read only from
//! a directory that is ours (0700, see [`crate::fsutil`]): the tool acts on
//! what they say, as root.
//!
//! Every record kind of [`super::Store`] and [`super::Durable`] is one
//! [`Table`]; the file names and bytes are those earlier versions wrote.
use std::fs::{self, File};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::fsutil::{self, FsError};

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or removing a state file failed.
    #[error("state file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A state directory is not safely ours (a symlink, someone else's,
    /// writable by others), or a file could not be made safely in it.
    #[error(transparent)]
    Path(#[from] FsError),
    /// A state file is not valid JSON of the expected shape.
    #[error("state file {} is corrupt: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// How a table turns a key into its file name (`NAME.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// [`crate::lock::file_key`]: every character but letters, digits,
    /// `.`, `_` and `-` becomes `_`. For keys the tool makes from labels,
    /// specs and targets (the lock of a key has the same name).
    Plain,
    /// Letters, digits, `.` and `-` stay, every other byte is `_` and two
    /// hex digits: no two keys share a file. For keys from outside (a
    /// volume identity holds spaces, a domain name almost anything).
    Exact,
}

impl Naming {
    fn name(self, key: &str) -> String {
        match self {
            Naming::Plain => crate::lock::file_key(key),
            Naming::Exact => exact_key(key),
        }
    }
}

/// The records of one kind `T`: `DIR/NAME.json` per key.
#[derive(Debug, Clone)]
pub struct Table<T> {
    dir: PathBuf,
    naming: Naming,
    kind: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Table<T> {
    /// The table in `dir` (made 0700 at the first write; `dir` and the
    /// directory above it must be ours).
    pub fn new(dir: PathBuf, naming: Naming) -> Table<T> {
        Table {
            dir,
            naming,
            kind: PhantomData,
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the record under `key`.
    pub fn file(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{}.json", self.naming.name(key)))
    }

    /// The record under `key`; None when there is none, or when the
    /// directory does not exist.
    pub fn get(&self, key: &str) -> Result<Option<T>, StateError> {
        if !self.ours()? {
            return Ok(None);
        }
        read(&self.file(key))
    }

    /// Record `value` under `key`, replacing what was there; a crash
    /// leaves the old record or the new one, never half of one.
    pub fn put(&self, key: &str, value: &T) -> Result<(), StateError> {
        write_atomic(&self.file(key), value)
    }

    /// Forget the record under `key` (absent is fine), and the temporary
    /// file a write killed before its rename may have left.
    pub fn remove(&self, key: &str) -> Result<(), StateError> {
        let path = self.file(key);
        self.remove_files(&[path.with_extension("tmp"), path])
    }

    /// Remove only what a write of `key` killed before its rename left:
    /// the record itself stays.
    pub fn tidy(&self, key: &str) -> Result<(), StateError> {
        self.remove_files(&[self.file(key).with_extension("tmp")])
    }

    /// Read and forget the record under `key`: an unreadable one counts as
    /// none, and is removed all the same.
    pub fn take(&self, key: &str) -> Result<Option<T>, StateError> {
        if !self.ours()? {
            return Ok(None);
        }
        let value = read(&self.file(key)).ok().flatten();
        self.remove(key)?;
        Ok(value)
    }

    /// Every record with its file name without `.json` (which is its key
    /// under [`Naming::Plain`] when the key needed no change), sorted by
    /// name; empty when the directory does not exist.
    pub fn list(&self) -> Result<Vec<(String, T)>, StateError> {
        let io = |source| StateError::Io {
            path: self.dir.clone(),
            source,
        };
        if !self.ours()? {
            return Ok(Vec::new());
        }
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io(source)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(io)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".json") {
                if let Some(v) = read(&e.path())? {
                    out.push((stem.to_string(), v));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// [`Table::list`] with each record's file instead of its name.
    pub fn list_files(&self) -> Result<Vec<(PathBuf, T)>, StateError> {
        Ok(self
            .list()?
            .into_iter()
            .map(|(stem, v)| (self.dir.join(format!("{stem}.json")), v))
            .collect())
    }

    /// Whether the directory exists and is ours (it and the one above):
    /// what a file says is acted on as root, so only from there.
    fn ours(&self) -> Result<bool, StateError> {
        Ok(fsutil::check_private_subdir(&self.dir)?)
    }

    fn remove_files(&self, paths: &[PathBuf]) -> Result<(), StateError> {
        if !self.ours()? {
            return Ok(());
        }
        for p in paths {
            if !p.exists() {
                continue;
            }
            crate::crash::point("state remove", p);
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Io {
                        path: p.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

/// Parse the record at `path`; None when there is no file.
fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| StateError::Corrupt {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Write `value` as JSON to `path` so that a crash leaves the old or the new file, never half of one.
/// Its directory and the one above (the run or state directory) must be ours.
pub fn write_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().expect("state paths have a parent");
    fsutil::private_subdir(dir)?;
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec_pretty(value).expect("state serializes");
    // A killed write may have left the temporary file: made anew, never
    // reused (O_EXCL), so a link planted there cannot redirect the write.
    fsutil::remove_stale(&tmp)?;
    let mut f = fsutil::create_new(&tmp, 0o600)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    crate::crash::point("state write", path);
    fs::rename(&tmp, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// The file name of [`Naming::Exact`].
fn exact_key(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
                char::from(b).to_string()
            } else {
                format!("_{b:02x}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Rec {
        n: u32,
    }

    fn table(dir: &Path, naming: Naming) -> Table<Rec> {
        Table::new(dir.join("recs"), naming)
    }

    #[test]
    fn get_put_remove_list() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = table(d.path(), Naming::Plain);
        assert_eq!(t.get("a").expect("get"), None, "no directory yet");
        assert!(t.list().expect("list").is_empty());
        t.remove("a").expect("nothing to remove is fine");
        t.put("b:1", &Rec { n: 1 }).expect("put");
        t.put("a", &Rec { n: 2 }).expect("put");
        t.put("a", &Rec { n: 3 }).expect("replace");
        assert_eq!(t.get("a").expect("get"), Some(Rec { n: 3 }));
        assert_eq!(t.file("b:1"), d.path().join("recs/b_1.json"));
        assert_eq!(
            t.list().expect("list"),
            vec![("a".into(), Rec { n: 3 }), ("b_1".into(), Rec { n: 1 })],
            "sorted, by file name"
        );
        assert_eq!(
            t.list_files().expect("files")[1],
            (d.path().join("recs/b_1.json"), Rec { n: 1 })
        );
        t.remove("b:1").expect("remove");
        assert_eq!(t.get("b:1").expect("get"), None);
        assert_eq!(t.list().expect("list").len(), 1);
    }

    #[test]
    fn list_skips_what_is_not_a_record() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = table(d.path(), Naming::Plain);
        t.put("a", &Rec { n: 1 }).expect("put");
        fs::write(d.path().join("recs/a.tmp"), "{").expect("a killed write");
        fs::write(d.path().join("recs/README"), "x").expect("other");
        assert_eq!(t.list().expect("list"), vec![("a".into(), Rec { n: 1 })]);
        fs::write(d.path().join("recs/b.json"), "{").expect("corrupt");
        let e = t.list().expect_err("corrupt");
        assert!(matches!(&e, StateError::Corrupt { path, .. } if path.ends_with("recs/b.json")));
    }

    #[test]
    fn tidy_leaves_the_record_and_take_consumes_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = table(d.path(), Naming::Exact);
        t.put("x y", &Rec { n: 1 }).expect("put");
        let tmp = d.path().join("recs/x_20y.tmp");
        fs::write(&tmp, "half").expect("a killed write");
        t.tidy("x y").expect("tidy");
        assert!(!tmp.exists());
        assert_eq!(t.take("x y").expect("take"), Some(Rec { n: 1 }));
        assert_eq!(t.take("x y").expect("taken"), None);
        fs::write(t.file("x y"), "{").expect("corrupt");
        assert_eq!(t.take("x y").expect("unreadable: none"), None);
        assert!(!t.file("x y").exists(), "and gone");
    }

    #[test]
    fn nothing_is_read_from_a_directory_others_can_write() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let t = table(d.path(), Naming::Plain);
        t.put("a", &Rec { n: 1 }).expect("put");
        let dir = d.path().join("recs");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        for e in [
            t.get("a").map(|_| ()).expect_err("get"),
            t.list().map(|_| ()).expect_err("list"),
            t.remove("a").expect_err("remove"),
            t.take("a").map(|_| ()).expect_err("take"),
        ] {
            assert!(matches!(e, StateError::Path(FsError::Unsafe { .. })), "{e}");
        }
        assert!(t.file("a").exists(), "left as it was");
    }

    #[test]
    fn exact_keys_never_collide() {
        assert_ne!(exact_key("web 2"), exact_key("web_2"));
        assert_ne!(exact_key("dev:8:1"), exact_key("dev_8_1"));
        assert_eq!(exact_key("dm:LVM-abc.1"), "dm_3aLVM-abc.1");
    }
}
