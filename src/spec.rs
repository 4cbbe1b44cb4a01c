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
mod tests {
    use super::*;

    fn json(spec: &str) -> String {
        let parsed = Spec::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        serde_json::to_string(&parsed).expect("serialize")
    }

    fn err(spec: &str) -> String {
        match Spec::parse(spec) {
            Ok(s) => panic!("{spec:?} parsed as {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    const VALID: &[(&str, &str)] = &[
        (
            "lun5@iqn.2014-06.fr.example:my-vm-sn-1+my-vm-disk",
            r#"{"target":"iqn.2014-06.fr.example:my-vm-sn-1","lun":5,"label":"my-vm-disk"}"#,
        ),
        (
            "iscsimple:iqn.2014-06.fr.thierry-jaouen.local:partage-sn-00000001",
            r#"{"target":"iqn.2014-06.fr.thierry-jaouen.local:partage-sn-00000001","lun":0,"label":null}"#,
        ),
        (
            "eui.02004567A425678D",
            r#"{"target":"eui.02004567a425678d","lun":0,"label":null}"#,
        ),
        (
            "naa.52004567BA64678D",
            r#"{"target":"naa.52004567ba64678d","lun":0,"label":null}"#,
        ),
        (
            "lun1@naa.6001405ABCDEF0123456789ABCDEF012",
            r#"{"target":"naa.6001405abcdef0123456789abcdef012","lun":1,"label":null}"#,
        ),
        ("MISSING+lab", r#"{"target":null,"lun":0,"label":"lab"}"#),
        (
            "iscsimple:lun3@MISSING-2+My_Disk-2",
            r#"{"target":null,"lun":3,"label":"My_Disk-2"}"#,
        ),
        (
            "IQN.2014-06.FR.Example:VM1",
            r#"{"target":"iqn.2014-06.fr.example:vm1","lun":0,"label":null}"#,
        ),
        (
            "lun0@iqn.2001-04.com.example",
            r#"{"target":"iqn.2001-04.com.example","lun":0,"label":null}"#,
        ),
        (
            "lun65535@iqn.2001-12.com.example:a:b.c-d",
            r#"{"target":"iqn.2001-12.com.example:a:b.c-d","lun":65535,"label":null}"#,
        ),
    ];

    #[test]
    fn valid_specs_give_exact_json() {
        for (spec, expected) in VALID {
            assert_eq!(json(spec), *expected, "{spec}");
        }
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (spec, _) in VALID {
            let parsed = Spec::parse(spec).expect("valid");
            let shown = parsed.to_string();
            assert_eq!(Spec::parse(&shown).expect("canonical parses"), parsed);
            assert_eq!(Spec::parse(&shown).expect("again").to_string(), shown);
        }
        let s = Spec::parse("iscsimple:IQN.2014-06.fr.example:X+Lab").expect("valid");
        assert_eq!(s.to_string(), "lun0@iqn.2014-06.fr.example:x+Lab");
        assert_eq!(
            Spec::parse("MISSING-x+a").expect("valid").to_string(),
            "lun0@MISSING+a"
        );
    }

    #[test]
    fn invalid_specs_give_exact_errors() {
        let name223 = format!("iqn.2014-06.com.example:{}", "a".repeat(223 - 24));
        assert_eq!(name223.len(), 223);
        assert!(Spec::parse(&name223).is_ok());
        let name224 = format!("{name223}b");
        let cases: Vec<(String, &str)> = vec![
            (
                "lun5@iqn.x+".into(),
                r#"invalid spec "lun5@iqn.x+": at byte 11: empty label (expected 1+ of A-Za-z0-9_-)"#,
            ),
            (
                "".into(),
                r#"invalid spec "": at byte 0: empty spec (expected [iscsimple:][lunN@]TARGET[+LABEL])"#,
            ),
            (
                "iscsimple:".into(),
                r#"invalid spec "iscsimple:": at byte 10: empty spec (expected [iscsimple:][lunN@]TARGET[+LABEL])"#,
            ),
            (
                "lun5@ iqn.2014-06.a".into(),
                r#"invalid spec "lun5@ iqn.2014-06.a": at byte 5: whitespace is not allowed (expected [iscsimple:][lunN@]TARGET[+LABEL])"#,
            ),
            (
                "eui.0\n".into(),
                r#"invalid spec "eui.0\n": at byte 5: whitespace is not allowed (expected [iscsimple:][lunN@]TARGET[+LABEL])"#,
            ),
            (
                "eui.0\u{1}".into(),
                r#"invalid spec "eui.0\u{1}": at byte 5: control character '\u{1}' is not allowed"#,
            ),
            (
                "MISSING+a+b".into(),
                r#"invalid spec "MISSING+a+b": at byte 9: second '+' (expected at most one, before the label)"#,
            ),
            (
                "lun@eui.02004567a425678d".into(),
                r#"invalid spec "lun@eui.02004567a425678d": at byte 3: empty LUN number (expected lunN@ with N decimal 0..=65535)"#,
            ),
            (
                "lunx@eui.02004567a425678d".into(),
                r#"invalid spec "lunx@eui.02004567a425678d": at byte 3: invalid character 'x' in LUN number (expected decimal digits 0-9)"#,
            ),
            (
                "lun-1@eui.02004567a425678d".into(),
                r#"invalid spec "lun-1@eui.02004567a425678d": at byte 3: invalid character '-' in LUN number (expected decimal digits 0-9)"#,
            ),
            (
                "lun+1@eui.02004567a425678d".into(),
                r#"invalid spec "lun+1@eui.02004567a425678d": at byte 5: invalid character '@' in label (expected 1+ of A-Za-z0-9_-)"#,
            ),
            (
                "lun05@eui.02004567a425678d".into(),
                r#"invalid spec "lun05@eui.02004567a425678d": at byte 3: leading zero in LUN number (expected canonical decimal, e.g. lun5@)"#,
            ),
            (
                "lun65536@eui.02004567a425678d".into(),
                r#"invalid spec "lun65536@eui.02004567a425678d": at byte 3: LUN number out of range (expected 0..=65535)"#,
            ),
            (
                "lun99999999999999999999@eui.02004567a425678d".into(),
                r#"invalid spec "lun99999999999999999999@eui.02004567a425678d": at byte 3: LUN number out of range (expected 0..=65535)"#,
            ),
            (
                "LUN5@eui.02004567a425678d".into(),
                r#"invalid spec "LUN5@eui.02004567a425678d": at byte 0: LUN prefix must be lowercase (expected lunN@)"#,
            ),
            (
                "lun5eui.02004567a425678d".into(),
                r#"invalid spec "lun5eui.02004567a425678d": at byte 4: missing '@' after the LUN number (expected lunN@TARGET)"#,
            ),
            (
                "x@eui.02004567a425678d".into(),
                r#"invalid spec "x@eui.02004567a425678d": at byte 1: '@' without a LUN prefix (expected lunN@TARGET)"#,
            ),
            (
                "lun5@".into(),
                r#"invalid spec "lun5@": at byte 5: empty target name (expected iqn., eui. or naa. name, or MISSING)"#,
            ),
            (
                "lun5@+lab".into(),
                r#"invalid spec "lun5@+lab": at byte 5: empty target name (expected iqn., eui. or naa. name, or MISSING)"#,
            ),
            (
                "MISSING".into(),
                r#"invalid spec "MISSING": at byte 7: MISSING target needs a label (expected MISSING+LABEL)"#,
            ),
            (
                "iscsimple:lun1@MISSING".into(),
                r#"invalid spec "iscsimple:lun1@MISSING": at byte 22: MISSING target needs a label (expected MISSING+LABEL)"#,
            ),
            (
                "MISSING/x+a".into(),
                r#"invalid spec "MISSING/x+a": at byte 7: invalid character '/' after MISSING (expected letters, digits, '.', '-', '_', ':')"#,
            ),
            (
                "missing+a".into(),
                r#"invalid spec "missing+a": at byte 0: unknown name type (expected iqn., eui., naa. or MISSING)"#,
            ),
            (
                "iqn.2014-06.fr_x.example".into(),
                r#"invalid spec "iqn.2014-06.fr_x.example": at byte 14: invalid character '_' in target name (expected letters, digits, '.', '-', ':')"#,
            ),
            (
                "iqn.2014-06.example,x".into(),
                r#"invalid spec "iqn.2014-06.example,x": at byte 19: invalid character ',' in target name (expected letters, digits, '.', '-', ':')"#,
            ),
            (
                "iqn.2014-06.exa/mple".into(),
                r#"invalid spec "iqn.2014-06.exa/mple": at byte 15: invalid character '/' in target name (expected letters, digits, '.', '-', ':')"#,
            ),
            (
                "iqn.2014-06.exämple".into(),
                r#"invalid spec "iqn.2014-06.exämple": at byte 14: invalid character 'ä' in target name (expected letters, digits, '.', '-', ':')"#,
            ),
            (
                name224.clone(),
                "target name is 224 bytes (expected at most 223)",
            ),
            (
                "iqn.2014-13.com.example".into(),
                r#"invalid spec "iqn.2014-13.com.example": at byte 4: bad date in iqn. name (expected iqn.YYYY-MM. with month 01-12)"#,
            ),
            (
                "iqn.2014-00.com.example".into(),
                r#"invalid spec "iqn.2014-00.com.example": at byte 4: bad date in iqn. name (expected iqn.YYYY-MM. with month 01-12)"#,
            ),
            (
                "iqn.14-06.com.example".into(),
                r#"invalid spec "iqn.14-06.com.example": at byte 4: bad date in iqn. name (expected iqn.YYYY-MM. with month 01-12)"#,
            ),
            (
                "iqn.2014-06".into(),
                r#"invalid spec "iqn.2014-06": at byte 4: bad date in iqn. name (expected iqn.YYYY-MM. with month 01-12)"#,
            ),
            (
                "iqn.2014-06.".into(),
                r#"invalid spec "iqn.2014-06.": at byte 12: empty domain label in iqn. naming authority (expected reversed domain such as com.example)"#,
            ),
            (
                "iqn.2014-06.com..example".into(),
                r#"invalid spec "iqn.2014-06.com..example": at byte 16: empty domain label in iqn. naming authority (expected reversed domain such as com.example)"#,
            ),
            (
                "iqn.2014-06.com.example:".into(),
                r#"invalid spec "iqn.2014-06.com.example:": at byte 24: empty name after ':' (expected iqn.YYYY-MM.domain[:name])"#,
            ),
            (
                "eui.02004567A425678".into(),
                r#"invalid spec "eui.02004567A425678": at byte 4: eui. name has 15 hex digits (expected 16)"#,
            ),
            (
                "eui.02004567A425678G".into(),
                r#"invalid spec "eui.02004567A425678G": at byte 19: invalid character 'g' in eui. name (expected hex digits)"#,
            ),
            (
                "naa.52004567BA64678D00".into(),
                r#"invalid spec "naa.52004567BA64678D00": at byte 4: naa. name has 18 hex digits (expected 16 or 32)"#,
            ),
            (
                "foo.bar".into(),
                r#"invalid spec "foo.bar": at byte 0: unknown name type (expected iqn., eui., naa. or MISSING)"#,
            ),
            (
                "MISSING+my disk".into(),
                r#"invalid spec "MISSING+my disk": at byte 10: whitespace is not allowed (expected [iscsimple:][lunN@]TARGET[+LABEL])"#,
            ),
            (
                "MISSING+my.disk".into(),
                r#"invalid spec "MISSING+my.disk": at byte 10: invalid character '.' in label (expected 1+ of A-Za-z0-9_-)"#,
            ),
            (
                format!("MISSING+{}", "a".repeat(33)),
                "label is 33 bytes (expected at most 32)",
            ),
        ];
        for (spec, expected) in &cases {
            let msg = err(spec);
            assert!(!msg.contains('\n'), "multi-line: {msg}");
            if expected.starts_with("invalid spec") {
                assert_eq!(msg, *expected, "{spec:?}");
            } else {
                assert!(msg.ends_with(expected), "{spec:?}: {msg}");
            }
        }
        // Positions of the suffix-only cases above.
        assert_eq!(Spec::parse(&name224).unwrap_err().position(), 223);
        let long_label = format!("MISSING+{}", "a".repeat(33));
        assert_eq!(Spec::parse(&long_label).unwrap_err().position(), 8 + 32);
    }

    #[test]
    fn target_name_and_label_parse_on_their_own() {
        let t = TargetName::parse("EUI.02004567A425678D").expect("valid");
        assert_eq!(t.as_str(), "eui.02004567a425678d");
        assert_eq!(t.to_string(), "eui.02004567a425678d");
        assert_eq!("eui.02004567a425678d".parse::<TargetName>(), Ok(t));
        assert_eq!(
            TargetName::parse("MISSING").unwrap_err().to_string(),
            r#"invalid target name "MISSING": at byte 0: unknown name type (expected iqn., eui., naa. or MISSING)"#
        );
        let l = Label::parse("Disk_1-a").expect("valid");
        assert_eq!(l.as_str(), "Disk_1-a");
        assert_eq!("Disk_1-a".parse::<Label>(), Ok(l));
        let e = Label::parse("a:b").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid label "a:b": at byte 1: invalid character ':' in label (expected 1+ of A-Za-z0-9_-)"#
        );
        assert_eq!(e.kind(), &SpecErrorKind::LabelChar(':'));
        assert_eq!(e.input(), "a:b");
    }

    #[test]
    fn is_mirrored_follows_label() {
        assert!(Spec::parse("MISSING+a").expect("valid").is_mirrored());
        assert!(!Spec::parse("eui.02004567a425678d")
            .expect("valid")
            .is_mirrored());
    }

    #[test]
    fn names_deserialize_with_validation() {
        let t: TargetName = serde_json::from_str(r#""NAA.52004567BA64678D""#).expect("valid");
        assert_eq!(t.as_str(), "naa.52004567ba64678d");
        assert!(serde_json::from_str::<TargetName>(r#""naa.1""#).is_err());
        assert!(serde_json::from_str::<Label>(r#""a b""#).is_err());
    }
}
