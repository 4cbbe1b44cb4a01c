//! Tests of spec parsing, its canonical form and its serialised records.

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
