//! The disk spec `[iscsimple:][lunN@]TARGET[+LABEL]`.
//!
//! This is what a Xen `disk=` line (after the `script=block-iscsimple`
//! prefix is dropped) or a libvirt hook hands us. Parsing is strict and
//! every rejection names the byte where the problem is, because the spec is
//! typed by hand into VM configurations and the error ends up in a hotplug
//! log far from the person who typed it.
//!
//! - `iscsimple:` is optional.
//! - `lunN@` is optional (LUN 0 otherwise). N is decimal digits only, at
//!   most [`MAX_LUN`], without leading zeros (`lun0@` but not `lun05@`), so
//!   that every LUN has one spelling.
//! - `TARGET` is an iSCSI name ([`TargetName`]) or a word starting with
//!   `MISSING`, meaning "no iSCSI leg" (only valid with a label).
//! - `+LABEL` ([`Label`]) names the mirror and its local leg in the label
//!   table; with a label the disk is an md RAID1.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Optional prefix of a spec, as Xen passes it through from `disk=` lines.
pub const PREFIX: &str = "iscsimple:";

/// Largest LUN accepted; LUNs are addressed as 16-bit numbers in practice
/// (the SAM flat/peripheral addressing used by iSCSI targets).
pub const MAX_LUN: u32 = 65_535;

/// Maximum length of an iSCSI name in bytes (RFC 3720 §3.2.6.1).
pub const MAX_TARGET_LEN: usize = 223;

/// Maximum length of a label in bytes: the md array name field of mdadm
/// superblocks is 32 bytes, so a longer label could not be used as an md
/// array name everywhere.
pub const MAX_LABEL_LEN: usize = 32;

/// Target word meaning "no iSCSI leg" (case-sensitive; anything may follow,
/// so that several degraded disks can still have distinct spec strings).
pub const MISSING: &str = "MISSING";

/// What was wrong with a spec, target name or label.
///
/// The Display text says what was found and, in parentheses, what was
/// expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecErrorKind {
    /// The input is empty.
    #[error("empty spec (expected [iscsimple:][lunN@]TARGET[+LABEL])")]
    Empty,
    /// A space, tab or other whitespace character.
    #[error("whitespace is not allowed (expected [iscsimple:][lunN@]TARGET[+LABEL])")]
    Whitespace,
    /// A control character.
    #[error("control character {0:?} is not allowed")]
    Control(char),
    /// A second `+`.
    #[error("second '+' (expected at most one, before the label)")]
    ExtraPlus,
    /// `LUN5@` or `Lun5@`: the prefix is lowercase only.
    #[error("LUN prefix must be lowercase (expected lunN@)")]
    LunPrefixCase,
    /// `lun5` with no `@` before the target.
    #[error("missing '@' after the LUN number (expected lunN@TARGET)")]
    LunMissingAt,
    /// `@` not preceded by `lunN`.
    #[error("'@' without a LUN prefix (expected lunN@TARGET)")]
    LunMissingPrefix,
    /// `lun@`.
    #[error("empty LUN number (expected lunN@ with N decimal 0..=65535)")]
    LunEmpty,
    /// A non-digit in the LUN number.
    #[error("invalid character {0:?} in LUN number (expected decimal digits 0-9)")]
    LunChar(char),
    /// `lun05@`: only one spelling per LUN is accepted.
    #[error("leading zero in LUN number (expected canonical decimal, e.g. lun5@)")]
    LunLeadingZero,
    /// A LUN number above [`MAX_LUN`].
    #[error("LUN number out of range (expected 0..=65535)")]
    LunRange,
    /// Nothing where the target name should be.
    #[error("empty target name (expected iqn., eui. or naa. name, or MISSING)")]
    TargetEmpty,
    /// A character not allowed in an iSCSI name.
    #[error("invalid character {0:?} in target name (expected letters, digits, '.', '-', ':')")]
    TargetChar(char),
    /// An iSCSI name over [`MAX_TARGET_LEN`] bytes.
    #[error("target name is {0} bytes (expected at most 223)")]
    TargetTooLong(usize),
    /// The name does not start with `iqn.`, `eui.`, `naa.` or `MISSING`.
    #[error("unknown name type (expected iqn., eui., naa. or MISSING)")]
    TargetType,
    /// Bad `YYYY-MM.` after `iqn.`.
    #[error("bad date in iqn. name (expected iqn.YYYY-MM. with month 01-12)")]
    IqnDate,
    /// Empty label in the reversed domain name of an `iqn.` name.
    #[error("empty domain label in iqn. naming authority (expected reversed domain such as com.example)")]
    IqnDomain,
    /// Nothing after the `:` of an `iqn.` name.
    #[error("empty name after ':' (expected iqn.YYYY-MM.domain[:name])")]
    IqnEmptySuffix,
    /// A non-hex character in an `eui.` or `naa.` name.
    #[error("invalid character {1:?} in {0} name (expected hex digits)")]
    HexChar(HexName, char),
    /// Wrong number of hex digits in an `eui.` or `naa.` name.
    #[error("{0} name has {1} hex digits (expected {expected})", expected = .0.expected())]
    HexLength(HexName, usize),
    /// A character after `MISSING` that is not allowed there.
    #[error(
        "invalid character {0:?} after MISSING (expected letters, digits, '.', '-', '_', ':')"
    )]
    MissingChar(char),
    /// `MISSING` with no label: there would be no leg at all.
    #[error("MISSING target needs a label (expected MISSING+LABEL)")]
    MissingNeedsLabel,
    /// `+` at the end, or an empty label.
    #[error("empty label (expected 1+ of A-Za-z0-9_-)")]
    LabelEmpty,
    /// A character not allowed in a label.
    #[error("invalid character {0:?} in label (expected 1+ of A-Za-z0-9_-)")]
    LabelChar(char),
    /// A label over [`MAX_LABEL_LEN`] bytes.
    #[error("label is {0} bytes (expected at most 32)")]
    LabelTooLong(usize),
}

/// The two iSCSI name types made of hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexName {
    /// `eui.` + 16 hex digits (IEEE EUI-64).
    Eui,
    /// `naa.` + 16 or 32 hex digits (T11 NAA).
    Naa,
}

impl HexName {
    fn lengths(self) -> &'static [usize] {
        match self {
            HexName::Eui => &[16],
            HexName::Naa => &[16, 32],
        }
    }

    fn expected(self) -> &'static str {
        match self {
            HexName::Eui => "16",
            HexName::Naa => "16 or 32",
        }
    }
}

impl fmt::Display for HexName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HexName::Eui => "eui.",
            HexName::Naa => "naa.",
        })
    }
}

/// A rejected spec, target name or label, with the input and the byte
/// position of the problem (0-based, into the whole input, prefix
/// included). The Display form is always one line: the input is quoted with
/// Rust escapes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A whole disk spec was rejected.
    #[error("invalid spec {input:?}: at byte {position}: {kind}")]
    Spec {
        /// The spec as given.
        input: String,
        /// Byte offset of the problem in `input`.
        position: usize,
        /// What was wrong.
        kind: SpecErrorKind,
    },
    /// A target name parsed on its own ([`TargetName::parse`]) was rejected.
    #[error("invalid target name {input:?}: at byte {position}: {kind}")]
    TargetName {
        /// The name as given.
        input: String,
        /// Byte offset of the problem in `input`.
        position: usize,
        /// What was wrong.
        kind: SpecErrorKind,
    },
    /// A label parsed on its own ([`Label::parse`]) was rejected.
    #[error("invalid label {input:?}: at byte {position}: {kind}")]
    Label {
        /// The label as given.
        input: String,
        /// Byte offset of the problem in `input`.
        position: usize,
        /// What was wrong.
        kind: SpecErrorKind,
    },
}

impl SpecError {
    /// The rejected text.
    pub fn input(&self) -> &str {
        match self {
            SpecError::Spec { input, .. }
            | SpecError::TargetName { input, .. }
            | SpecError::Label { input, .. } => input,
        }
    }

    /// Byte offset of the problem in [`SpecError::input`].
    pub fn position(&self) -> usize {
        match self {
            SpecError::Spec { position, .. }
            | SpecError::TargetName { position, .. }
            | SpecError::Label { position, .. } => *position,
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> &SpecErrorKind {
        match self {
            SpecError::Spec { kind, .. }
            | SpecError::TargetName { kind, .. }
            | SpecError::Label { kind, .. } => kind,
        }
    }
}

/// A problem found by a checker: byte offset relative to the checked slice.
type Problem = (usize, SpecErrorKind);

/// An iSCSI name (RFC 3720 §3.2.6), lowercased (RFC 3722 makes names
/// case-insensitive; lowercase is the canonical form open-iscsi shows).
///
/// Accepted forms, in ASCII only (the RFC 3722 stringprep profile reduced
/// to the characters targets actually use: letters, digits, `-`, `.`, `:`):
/// `iqn.YYYY-MM.reversed.domain[:anything]`, `eui.` + 16 hex digits,
/// `naa.` + 16 or 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TargetName(#[serde(deserialize_with = "deserialize_target")] String);

impl TargetName {
    /// Validates and lowercases `s`.
    pub fn parse(s: &str) -> Result<TargetName, SpecError> {
        check_target(s)
            .map(TargetName)
            .map_err(|(position, kind)| SpecError::TargetName {
                input: s.to_owned(),
                position,
                kind,
            })
    }

    /// The normalised (lowercase) name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn deserialize_target<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    TargetName::parse(&s)
        .map(|t| t.0)
        .map_err(serde::de::Error::custom)
}

impl fmt::Display for TargetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TargetName {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TargetName::parse(s)
    }
}

/// A mirror label: 1 to [`MAX_LABEL_LEN`] characters of `A-Za-z0-9_-`, case
/// kept. It names the md array and the local leg in the label table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Label(#[serde(deserialize_with = "deserialize_label")] String);

impl Label {
    /// Validates `s`.
    pub fn parse(s: &str) -> Result<Label, SpecError> {
        check_label(s)
            .map(|()| Label(s.to_owned()))
            .map_err(|(position, kind)| SpecError::Label {
                input: s.to_owned(),
                position,
                kind,
            })
    }

    /// The label text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn deserialize_label<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    Label::parse(&s)
        .map(|l| l.0)
        .map_err(serde::de::Error::custom)
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Label {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Label::parse(s)
    }
}

/// A parsed disk spec.
///
/// Serializes (JSON) as `{"target":"<name or null>","lun":N,"label":"<label or null>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Spec {
    /// The iSCSI target; `None` for `MISSING` (no iSCSI leg).
    pub target: Option<TargetName>,
    /// The LUN, 0 when the spec has no `lunN@`.
    pub lun: u32,
    /// The mirror label; with a label the disk is an md RAID1.
    pub label: Option<Label>,
}

impl Spec {
    /// Parses `[iscsimple:][lunN@]TARGET[+LABEL]`.
    ///
    /// The label is checked before the LUN and the target: the `+` split is
    /// structural, and a bad label is the more likely typo in a mirror spec.
    pub fn parse(input: &str) -> Result<Spec, SpecError> {
        parse_spec(input).map_err(|(position, kind)| SpecError::Spec {
            input: input.to_owned(),
            position,
            kind,
        })
    }

    /// Whether the disk is an md RAID1 (the spec has a label).
    pub fn is_mirrored(&self) -> bool {
        self.label.is_some()
    }
}

impl FromStr for Spec {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Spec::parse(s)
    }
}

/// The canonical form `lunN@TARGET[+LABEL]`: LUN always present, no prefix,
/// `MISSING` for no target. Parsing it gives back an equal [`Spec`].
impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lun{}@", self.lun)?;
        match &self.target {
            Some(t) => f.write_str(t.as_str())?,
            None => f.write_str(MISSING)?,
        }
        if let Some(label) = &self.label {
            write!(f, "+{label}")?;
        }
        Ok(())
    }
}

/// Shifts a problem found in a slice starting at `offset`.
fn at(offset: usize) -> impl Fn(Problem) -> Problem {
    move |(pos, kind)| (pos + offset, kind)
}

fn parse_spec(input: &str) -> Result<Spec, Problem> {
    if input.is_empty() {
        return Err((0, SpecErrorKind::Empty));
    }
    // Whitespace and control characters first: they are the usual result of
    // quoting mistakes and would otherwise be reported as odd characters.
    for (i, c) in input.char_indices() {
        if c.is_whitespace() {
            return Err((i, SpecErrorKind::Whitespace));
        }
        if c.is_control() {
            return Err((i, SpecErrorKind::Control(c)));
        }
    }
    let (start, body) = match input.strip_prefix(PREFIX) {
        Some(rest) => (PREFIX.len(), rest),
        None => (0, input),
    };
    if body.is_empty() {
        return Err((start, SpecErrorKind::Empty));
    }

    let (head, label) = match body.find('+') {
        Some(plus) => {
            let label_text = &body[plus + 1..];
            if let Some(second) = label_text.find('+') {
                return Err((start + plus + 1 + second, SpecErrorKind::ExtraPlus));
            }
            check_label(label_text).map_err(at(start + plus + 1))?;
            (&body[..plus], Some(Label(label_text.to_owned())))
        }
        None => (body, None),
    };

    let (lun, target_start) = parse_lun(head).map_err(at(start))?;
    let target_text = &head[target_start..];
    let target_offset = start + target_start;
    let target = if let Some(rest) = target_text.strip_prefix(MISSING) {
        if let Some((i, c)) = rest
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
        {
            return Err((
                target_offset + MISSING.len() + i,
                SpecErrorKind::MissingChar(c),
            ));
        }
        if label.is_none() {
            return Err((input.len(), SpecErrorKind::MissingNeedsLabel));
        }
        None
    } else {
        Some(TargetName(
            check_target(target_text).map_err(at(target_offset))?,
        ))
    };
    Ok(Spec { target, lun, label })
}

/// Parses an optional `lunN@` at the start of `head`; returns the LUN and
/// where the target starts.
fn parse_lun(head: &str) -> Result<(u32, usize), Problem> {
    let Some(at_sign) = head.find('@') else {
        let digits = head
            .strip_prefix("lun")
            .map_or(0, |r| r.bytes().take_while(u8::is_ascii_digit).count());
        if digits > 0 {
            return Err((3 + digits, SpecErrorKind::LunMissingAt));
        }
        return Ok((0, 0));
    };
    let prefix = &head[..at_sign];
    if prefix.len() < 3 || !prefix.is_char_boundary(3) || !prefix[..3].eq_ignore_ascii_case("lun") {
        return Err((at_sign, SpecErrorKind::LunMissingPrefix));
    }
    if &prefix[..3] != "lun" {
        return Err((0, SpecErrorKind::LunPrefixCase));
    }
    let digits = &prefix[3..];
    if digits.is_empty() {
        return Err((3, SpecErrorKind::LunEmpty));
    }
    if let Some((i, c)) = digits.char_indices().find(|&(_, c)| !c.is_ascii_digit()) {
        return Err((3 + i, SpecErrorKind::LunChar(c)));
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err((3, SpecErrorKind::LunLeadingZero));
    }
    // At most 5 digits fit MAX_LUN; checking the length first avoids overflow.
    let lun = if digits.len() <= 5 {
        digits.parse::<u32>().unwrap_or(u32::MAX)
    } else {
        u32::MAX
    };
    if lun > MAX_LUN {
        return Err((3, SpecErrorKind::LunRange));
    }
    Ok((lun, at_sign + 1))
}

/// Validates an iSCSI name; returns it lowercased.
fn check_target(s: &str) -> Result<String, Problem> {
    if s.is_empty() {
        return Err((0, SpecErrorKind::TargetEmpty));
    }
    if let Some((i, c)) = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')))
    {
        return Err((i, SpecErrorKind::TargetChar(c)));
    }
    if s.len() > MAX_TARGET_LEN {
        return Err((MAX_TARGET_LEN, SpecErrorKind::TargetTooLong(s.len())));
    }
    // ASCII only from here on, so lowercasing keeps byte positions.
    let name = s.to_ascii_lowercase();
    if let Some(rest) = name.strip_prefix("iqn.") {
        check_iqn(rest).map_err(at(4))?;
    } else if let Some(hex) = name.strip_prefix("eui.") {
        check_hex(HexName::Eui, hex).map_err(at(4))?;
    } else if let Some(hex) = name.strip_prefix("naa.") {
        check_hex(HexName::Naa, hex).map_err(at(4))?;
    } else {
        return Err((0, SpecErrorKind::TargetType));
    }
    Ok(name)
}

/// Checks what follows `iqn.`: `YYYY-MM.reversed.domain[:name]`.
fn check_iqn(rest: &str) -> Result<(), Problem> {
    let b = rest.as_bytes();
    let date_ok = b.len() >= 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && matches!((b[5] - b'0') * 10 + (b[6] - b'0'), 1..=12)
        && b[7] == b'.';
    if !date_ok {
        return Err((0, SpecErrorKind::IqnDate));
    }
    let after_date = &rest[8..];
    let (domain, suffix) = match after_date.find(':') {
        Some(colon) => (&after_date[..colon], Some(&after_date[colon + 1..])),
        None => (after_date, None),
    };
    let mut pos = 8;
    for part in domain.split('.') {
        if part.is_empty() {
            return Err((pos, SpecErrorKind::IqnDomain));
        }
        pos += part.len() + 1;
    }
    if suffix == Some("") {
        return Err((rest.len(), SpecErrorKind::IqnEmptySuffix));
    }
    Ok(())
}

/// Checks that `hex` is hex digits of one of the lengths `kind` allows.
fn check_hex(kind: HexName, hex: &str) -> Result<(), Problem> {
    if let Some((i, c)) = hex.char_indices().find(|&(_, c)| !c.is_ascii_hexdigit()) {
        return Err((i, SpecErrorKind::HexChar(kind, c)));
    }
    if !kind.lengths().contains(&hex.len()) {
        return Err((0, SpecErrorKind::HexLength(kind, hex.len())));
    }
    Ok(())
}

fn check_label(s: &str) -> Result<(), Problem> {
    if s.is_empty() {
        return Err((0, SpecErrorKind::LabelEmpty));
    }
    if let Some((i, c)) = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err((i, SpecErrorKind::LabelChar(c)));
    }
    if s.len() > MAX_LABEL_LEN {
        return Err((MAX_LABEL_LEN, SpecErrorKind::LabelTooLong(s.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
