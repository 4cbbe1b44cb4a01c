//! LVM device filters as LVM applies them (lib/filters/filter-regex.c):
//! each pattern is `a` or `r` followed by a delimited regex; for each name
//! of a device in turn, the first pattern that matches decides; a device is
//! accepted as soon as one of its names is accepted, rejected if some name
//! was rejected and none accepted, and accepted if no name matched at all.
use regex_lite::Regex;

/// One filter pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// `a` (accept) or `r` (reject).
    pub accept: bool,
    /// The regex.
    pub regex: Regex,
    /// As written, for messages.
    pub text: String,
}

/// Why a filter could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// Neither a quoted string nor a list of them.
    #[error("cannot parse the value {0:?}")]
    Syntax(String),
    /// A pattern does not start with `a` or `r` and a delimiter.
    #[error("pattern {0:?} is not a|REGEX| or r|REGEX|")]
    Pattern(String),
    /// The regex does not compile.
    #[error("pattern {text:?}: {source}")]
    Regex {
        /// The pattern.
        text: String,
        /// The cause.
        source: regex_lite::Error,
    },
}

/// A whole filter (`filter` or `global_filter`).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The patterns, in order.
    pub patterns: Vec<Pattern>,
}

impl Filter {
    /// Parse a value as `lvm config` prints it: `["a|x|","r|.*|"]` or `"r|x|"`.
    pub fn parse(value: &str) -> Result<Filter, FilterError> {
        let strings = strings(value).ok_or_else(|| FilterError::Syntax(value.to_string()))?;
        let patterns = strings
            .into_iter()
            .map(|s| pattern(&s))
            .collect::<Result<_, _>>()?;
        Ok(Filter { patterns })
    }

    /// Whether LVM uses a device known by `names`.
    pub fn accepts<S: AsRef<str>>(&self, names: &[S]) -> bool {
        let mut rejected = false;
        for n in names {
            if let Some(p) = self.patterns.iter().find(|p| p.regex.is_match(n.as_ref())) {
                if p.accept {
                    return true;
                }
                rejected = true;
            }
        }
        !rejected
    }

    /// As LVM shows it.
    pub fn text(&self) -> String {
        let items: Vec<String> = self
            .patterns
            .iter()
            .map(|p| format!("\"{}\"", p.text))
            .collect();
        format!("[ {} ]", items.join(", "))
    }
}

/// The quoted strings of `"x"` or `["x","y"]` (backslash escapes `"` and `\`).
fn strings(v: &str) -> Option<Vec<String>> {
    let v = v.trim();
    let inner = match v.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']')?,
        None => v,
    };
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some('"') => {}
            Some(_) => return None,
        }
        let mut s = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    c @ ('"' | '\\') => s.push(c),
                    c => {
                        s.push('\\');
                        s.push(c);
                    }
                },
                c => s.push(c),
            }
        }
        out.push(s);
    }
}

fn pattern(s: &str) -> Result<Pattern, FilterError> {
    let bad = || FilterError::Pattern(s.to_string());
    let mut it = s.chars();
    let accept = match it.next() {
        Some('a') => true,
        Some('r') => false,
        _ => return Err(bad()),
    };
    let delim = it.next().ok_or_else(bad)?;
    let rest: String = it.collect();
    let body = rest.strip_suffix(delim).ok_or_else(bad)?;
    let regex = Regex::new(body).map_err(|source| FilterError::Regex {
        text: s.to_string(),
        source,
    })?;
    Ok(Pattern {
        accept,
        regex,
        text: s.to_string(),
    })
}

/// `^PATH$` with regex metacharacters escaped, for an accept pattern.
pub fn exact(path: &str) -> String {
    let mut s = String::from("^");
    for c in path.chars() {
        if "\\.+*?()[]{}^$|".contains(c) {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('$');
    s
}

/// The values of `lvm config` output lines `key=value`.
pub fn config_value<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_single_strings() {
        let f = Filter::parse(r#"["a|^/dev/sda2$|","r|.*|"]"#).expect("parse");
        assert_eq!(f.patterns.len(), 2);
        assert_eq!(f.text(), r#"[ "a|^/dev/sda2$|", "r|.*|" ]"#);
        let g = Filter::parse(r#""r/md/""#).expect("parse");
        assert!(!g.patterns[0].accept);
        assert!(Filter::parse("[a|x|]").is_err());
        assert!(Filter::parse(r#"["x|y|"]"#).is_err());
    }

    #[test]
    fn lvm_semantics() {
        let allow = Filter::parse(r#"["a|^/dev/sda2$|","r|.*|"]"#).expect("parse");
        assert!(allow.accepts(&["/dev/sda2"]));
        assert!(!allow.accepts(&["/dev/md127", "/dev/md/x"]));
        // the default accepts everything
        assert!(Filter::parse(r#"["a|.*|"]"#)
            .expect("p")
            .accepts(&["/dev/md127"]));
        // names no pattern matches do not count
        let rej = Filter::parse(r#"["r|^/dev/md|"]"#).expect("parse");
        assert!(!rej.accepts(&["/dev/disk/by-id/md-name-x", "/dev/md127"]));
        assert!(rej.accepts(&["/dev/sdb"]));
        // one accepted name is enough: a trailing a|.*| undoes a reject list
        let leaky = Filter::parse(r#"["r|^/dev/md|","a|.*|"]"#).expect("parse");
        assert!(leaky.accepts(&["/dev/md127", "/dev/disk/by-id/md-name-x"]));
    }

    #[test]
    fn exact_escapes() {
        let p = exact("/dev/disk/by-id/ata-X_1.0+(a)");
        let f = Filter::parse(&format!("[\"a|{p}|\",\"r|.*|\"]")).expect("parse");
        assert!(f.accepts(&["/dev/disk/by-id/ata-X_1.0+(a)"]));
        assert!(!f.accepts(&["/dev/disk/by-id/ata-X_1x0+(a)"]));
    }

    #[test]
    fn config_values() {
        let out = "filter=[\"a|.*|\"]\nglobal_filter=[\"r|.*|\"]\nscan_lvs=0\n";
        assert_eq!(config_value(out, "scan_lvs"), Some("0"));
        assert_eq!(config_value(out, "filter"), Some("[\"a|.*|\"]"));
        assert_eq!(config_value(out, "use_devicesfile"), None);
    }
}
