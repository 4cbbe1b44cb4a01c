//! The label table: which local volume is the second leg of each mirror.
//!
//! One `LABEL DEVICE` pair per line, separated by whitespace. `#` starts a
//! comment when it begins a line or follows whitespace (so a `#` inside a
//! device path is kept). Blank lines are ignored. A DEVICE starting with
//! `MISSING` means the mirror has no local leg (it runs degraded on iSCSI
//! alone); any other DEVICE must be an absolute path.
//!
//! ```text
//! # LABEL      DEVICE
//! my-vm-disk   /dev/vg0/my-vm-disk
//! my-vm-swap   MISSING
//! ```
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::spec::{Label, SpecError};

/// DEVICE word meaning "no local leg" (case-sensitive prefix, as in specs).
pub const MISSING: &str = crate::spec::MISSING;

/// A problem with the label table file.
///
/// Every variant names the file; line problems also name the line, in the
/// usual `PATH:LINE: message` form. Display is always one line and includes
/// the cause; causes are fields, not `source()`, so printing an error chain
/// does not repeat them.
#[derive(Debug, thiserror::Error)]
pub enum LabelTableError {
    /// The file does not exist.
    #[error("label table {}: not found", path.display())]
    NotFound {
        /// The file looked for.
        path: PathBuf,
    },
    /// The file exists but could not be read (permissions, not UTF-8, ...).
    #[error("label table {}: cannot read: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        cause: io::Error,
    },
    /// A line with a label but no device.
    #[error("{}:{line}: label {label:?} has no device (expected LABEL DEVICE)", path.display())]
    NoDevice {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The lone word.
        label: String,
    },
    /// A line with three or more words.
    #[error("{}:{line}: {columns} columns (expected LABEL DEVICE; '#' after a space starts a comment)", path.display())]
    ExtraColumns {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// How many whitespace-separated words the line has.
        columns: usize,
    },
    /// The first column is not a valid label.
    #[error("{}:{line}: {cause}", path.display())]
    BadLabel {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why the label was rejected.
        cause: SpecError,
    },
    /// The device is neither `MISSING...` nor an absolute path.
    #[error("{}:{line}: device {device:?} is not an absolute path (expected /dev/... or MISSING)", path.display())]
    RelativeDevice {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The device as written.
        device: String,
    },
    /// A label defined twice.
    #[error("{}:{line}: duplicate label {:?} (first defined on line {first_line})", path.display(), label.as_str())]
    Duplicate {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the second definition.
        line: usize,
        /// 1-based line number of the first definition.
        first_line: usize,
        /// The label.
        label: Label,
    },
    /// Several line problems; [`LabelTableError::problems`] lists them all.
    #[error("{}: {} problems; first: {}", path.display(), errors.len(), errors.first().map_or(String::new(), ToString::to_string))]
    Multiple {
        /// The file.
        path: PathBuf,
        /// Each problem, in line order (never nested `Multiple`).
        errors: Vec<LabelTableError>,
    },
}

impl LabelTableError {
    /// Each single problem: the errors inside `Multiple`, or `self`.
    pub fn problems(&self) -> Vec<&LabelTableError> {
        match self {
            LabelTableError::Multiple { errors, .. } => errors.iter().collect(),
            other => vec![other],
        }
    }
}

/// Where a mirror's local leg is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LocalDevice {
    /// No local leg (`MISSING...`): the mirror runs on iSCSI alone.
    Missing,
    /// An absolute path to a block device, usually an LVM volume.
    Path(PathBuf),
}

impl fmt::Display for LocalDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalDevice::Missing => f.write_str(MISSING),
            LocalDevice::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The mirror label.
    pub label: Label,
    /// The local leg.
    pub device: LocalDevice,
    /// 1-based line number, for messages.
    pub line: usize,
}

/// A parsed label table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelTable {
    /// The file it came from, for messages.
    pub path: PathBuf,
    /// The entries, in file order; labels are unique.
    pub entries: Vec<Entry>,
}

impl LabelTable {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<LabelTable, LabelTableError> {
        let text = std::fs::read_to_string(path).map_err(|cause| {
            if cause.kind() == io::ErrorKind::NotFound {
                LabelTableError::NotFound {
                    path: path.to_owned(),
                }
            } else {
                LabelTableError::Read {
                    path: path.to_owned(),
                    cause,
                }
            }
        })?;
        LabelTable::parse(&text, path)
    }

    /// Parses `text`; `path` is only used in messages. Every bad line is
    /// reported: one problem as itself, several as `Multiple`.
    pub fn parse(text: &str, path: &Path) -> Result<LabelTable, LabelTableError> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut errors = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            match parse_line(strip_comment(raw), path, line) {
                Ok(None) => {}
                Ok(Some(entry)) => {
                    if let Some(first) = entries.iter().find(|e| e.label == entry.label) {
                        errors.push(LabelTableError::Duplicate {
                            path: path.to_owned(),
                            line,
                            first_line: first.line,
                            label: entry.label,
                        });
                    } else {
                        entries.push(entry);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(LabelTable {
                path: path.to_owned(),
                entries,
            }),
            1 => Err(errors.remove(0)),
            _ => Err(LabelTableError::Multiple {
                path: path.to_owned(),
                errors,
            }),
        }
    }

    /// The entry for `label`, if any.
    pub fn lookup(&self, label: &Label) -> Option<&Entry> {
        self.entries.iter().find(|e| &e.label == label)
    }
}

/// Cuts a comment: `#` at the start of the line or after whitespace.
fn strip_comment(line: &str) -> &str {
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_space {
            return &line[..i];
        }
        prev_space = c.is_whitespace();
    }
    line
}

fn parse_line(line: &str, path: &Path, number: usize) -> Result<Option<Entry>, LabelTableError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (label, device) = match words.as_slice() {
        [] => return Ok(None),
        [label] => {
            return Err(LabelTableError::NoDevice {
                path: path.to_owned(),
                line: number,
                label: (*label).to_owned(),
            })
        }
        [label, device] => (*label, *device),
        _ => {
            return Err(LabelTableError::ExtraColumns {
                path: path.to_owned(),
                line: number,
                columns: words.len(),
            })
        }
    };
    let label = Label::parse(label).map_err(|cause| LabelTableError::BadLabel {
        path: path.to_owned(),
        line: number,
        cause,
    })?;
    let device = if device.starts_with(MISSING) {
        LocalDevice::Missing
    } else if device.starts_with('/') {
        LocalDevice::Path(PathBuf::from(device))
    } else {
        return Err(LabelTableError::RelativeDevice {
            path: path.to_owned(),
            line: number,
            device: device.to_owned(),
        });
    };
    Ok(Some(Entry {
        label,
        device,
        line: number,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "\
# --------------------------------
# LABEL DEVICE
# --------------------------------
my-vm-disk /dev/vg0/my-vm-disk
my-vm-swap /dev/vg0/my-vm-swap
";

    fn path() -> &'static Path {
        Path::new("/etc/tab.conf")
    }

    fn label(s: &str) -> Label {
        Label::parse(s).expect("valid label")
    }

    fn err(text: &str) -> Vec<String> {
        LabelTable::parse(text, path())
            .expect_err("should fail")
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn seed_example_parses() {
        let t = LabelTable::parse(SEED, path()).expect("valid");
        assert_eq!(t.entries.len(), 2);
        let e = t.lookup(&label("my-vm-swap")).expect("present");
        assert_eq!(e.device, LocalDevice::Path("/dev/vg0/my-vm-swap".into()));
        assert_eq!(e.line, 5);
        assert!(t.lookup(&label("other")).is_none());
        // Labels are case-sensitive.
        assert!(t.lookup(&label("MY-VM-DISK")).is_none());
    }

    #[test]
    fn comments_blank_lines_and_missing() {
        let text = "\n  \t\n   # indented comment\nA\t MISSING  # no local leg\nb /dev/x#1 #trailing\nc MISSING-later\n";
        let t = LabelTable::parse(text, path()).expect("valid");
        assert_eq!(
            t.entries,
            vec![
                Entry {
                    label: label("A"),
                    device: LocalDevice::Missing,
                    line: 4
                },
                Entry {
                    label: label("b"),
                    device: LocalDevice::Path("/dev/x#1".into()),
                    line: 5
                },
                Entry {
                    label: label("c"),
                    device: LocalDevice::Missing,
                    line: 6
                },
            ]
        );
        assert_eq!(t.entries[0].device.to_string(), "MISSING");
        assert!(LabelTable::parse("", path())
            .expect("empty")
            .entries
            .is_empty());
    }

    #[test]
    fn bad_lines_are_all_reported() {
        let text = "ok /dev/a\nlonely\na b c # comment\nbad.label /dev/x\nrel dev/x\nok /dev/b\n";
        assert_eq!(
            err(text),
            vec![
                r#"/etc/tab.conf:2: label "lonely" has no device (expected LABEL DEVICE)"#,
                "/etc/tab.conf:3: 3 columns (expected LABEL DEVICE; '#' after a space starts a comment)",
                r#"/etc/tab.conf:4: invalid label "bad.label": at byte 3: invalid character '.' in label (expected 1+ of A-Za-z0-9_-)"#,
                r#"/etc/tab.conf:5: device "dev/x" is not an absolute path (expected /dev/... or MISSING)"#,
                r#"/etc/tab.conf:6: duplicate label "ok" (first defined on line 1)"#,
            ]
        );
        let whole = LabelTable::parse(text, path()).expect_err("fails");
        let shown = whole.to_string();
        assert!(shown.starts_with("/etc/tab.conf: 5 problems; first: /etc/tab.conf:2: "));
        assert!(!shown.contains('\n'));
    }

    #[test]
    fn single_problem_is_not_wrapped() {
        let e = LabelTable::parse("x /a\nx /b\n", path()).expect_err("dup");
        assert!(matches!(
            e,
            LabelTableError::Duplicate {
                line: 2,
                first_line: 1,
                ..
            }
        ));
    }

    #[test]
    fn load_reports_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope.conf");
        let e = LabelTable::load(&missing).expect_err("missing");
        assert!(matches!(e, LabelTableError::NotFound { .. }));
        assert_eq!(
            e.to_string(),
            format!("label table {}: not found", missing.display())
        );
        let file = dir.path().join("tab.conf");
        std::fs::write(&file, SEED).expect("write");
        assert_eq!(LabelTable::load(&file).expect("valid").entries.len(), 2);
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../etc/block-iscsimple-tab.conf");
        LabelTable::parse(text, path()).expect("etc/block-iscsimple-tab.conf parses");
    }
}
