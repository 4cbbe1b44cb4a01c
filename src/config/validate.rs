//! The raw TOML and its validation into a [`Config`](super::Config): every
//! problem collected, each with its `line:column`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::spec::TargetName;

use super::chap::secret_problem;
use super::*;

/// The secret key (`password`, `password_in`) whose value holds byte
/// `offset` of `text`, if any.
pub(super) fn secret_key_at(text: &str, offset: usize) -> Option<&'static str> {
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
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
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
pub(super) struct RawConfig {
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
    cluster: RawCluster,
    #[serde(default)]
    chap: Vec<RawChap>,
    #[serde(default)]
    target: Vec<RawTarget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    name: Spanned<String>,
    portals: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    store: Option<Spanned<String>>,
    host_id: Option<Spanned<String>>,
    only_user: Option<bool>,
    #[serde(default)]
    endpoints: Vec<Spanned<String>>,
    lease_ttl: Option<Spanned<u64>>,
    on_unreachable: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    #[serde(default)]
    portals: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
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
pub(super) struct RawMd {
    sync_speed_min: Option<Spanned<u32>>,
    sync_speed_max: Option<Spanned<u32>>,
    bitmap: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChap {
    target: Spanned<String>,
    username: Spanned<String>,
    password: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
    username_in: Option<Spanned<String>>,
    password_in: Option<Spanned<String>>,
    password_in_file: Option<Spanned<String>>,
}

/// Turns the raw TOML into a [`Config`], collecting every problem.
pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
    pub(super) errors: Vec<ConfigError>,
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

    pub(super) fn config(&mut self, raw: RawConfig, path: &Path) -> Config {
        let d = Config::default();
        let portals = self.portals(&raw.discovery.portals);
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
        let cluster = self.cluster(raw.cluster);
        let chap = self.chap(raw.chap);
        let targets = self.targets(raw.target);
        Config {
            path: Some(path.to_owned()),
            label_table: self.abs_path("label_table", raw.label_table, d.label_table),
            state_dir: self.abs_path("state_dir", raw.state_dir, d.state_dir),
            run_dir: self.abs_path("run_dir", raw.run_dir, d.run_dir),
            discovery: Discovery { portals },
            timeouts,
            md,
            cluster,
            chap,
            targets,
        }
    }

    fn portal(&mut self, p: &Spanned<String>) -> Option<Portal> {
        match parse_portal(p.get_ref()) {
            Ok(portal) => Some(portal),
            Err(why) => {
                self.error(p.span(), format!("portal {:?}: {why}", p.get_ref()));
                None
            }
        }
    }

    fn portals(&mut self, raw: &[Spanned<String>]) -> Vec<Portal> {
        raw.iter().filter_map(|p| self.portal(p)).collect()
    }

    /// `[[target]]`: a target's own portals. Addresses only: open-iscsi
    /// names a session's portal by address, and the tool finds a portal's
    /// session by that name.
    fn targets(&mut self, raw: Vec<RawTarget>) -> Vec<TargetPortals> {
        let mut out: Vec<TargetPortals> = Vec::new();
        for r in raw {
            let line = line_col(self.text, r.name.span().start).0;
            let name = match TargetName::parse(r.name.get_ref()) {
                Ok(n) => n,
                Err(e) => {
                    self.error(r.name.span(), format!("target name: {e}"));
                    continue;
                }
            };
            if let Some(first) = out.iter().find(|t| t.name == name) {
                let message = format!(
                    "duplicate [[target]] entry for {name} (first on line {})",
                    first.line
                );
                self.error(r.name.span(), message);
                continue;
            }
            let span = r.portals.span();
            let raw_portals = r.portals.into_inner();
            if raw_portals.is_empty() {
                self.error(span, format!("[[target]] {name}: portals is empty"));
                continue;
            }
            let mut portals: Vec<Portal> = Vec::new();
            for p in &raw_portals {
                let Some(portal) = self.portal(p) else {
                    continue;
                };
                if matches!(portal.host, Host::Name(_)) {
                    let message = format!(
                        "portal {:?}: an IP address is needed here (sessions are matched by address)",
                        p.get_ref()
                    );
                    self.error(p.span(), message);
                } else if portals.contains(&portal) {
                    self.error(p.span(), format!("portal {:?} listed twice", p.get_ref()));
                } else {
                    portals.push(portal);
                }
            }
            out.push(TargetPortals {
                name,
                portals,
                line,
            });
        }
        out
    }

    fn cluster(&mut self, raw: RawCluster) -> Cluster {
        let mut c = Cluster::default();
        let store_span = raw.store.as_ref().map_or(0..0, |s| s.span());
        if let Some(s) = raw.store {
            match s.get_ref().as_str() {
                "local" => c.store = ClusterStore::Local,
                "etcd" => c.store = ClusterStore::Etcd,
                other => self.error(
                    s.span(),
                    format!("cluster.store = {other:?} (expected \"local\" or \"etcd\")"),
                ),
            }
        }
        for e in raw.endpoints {
            match crate::cluster::endpoint(e.get_ref()) {
                Ok(url) => c.endpoints.push(url),
                Err(why) => self.error(
                    e.span(),
                    format!("cluster.endpoints: {:?} {why}", e.get_ref()),
                ),
            }
        }
        self.cluster_tls(
            &mut c,
            store_span.clone(),
            [raw.ca_file, raw.cert_file, raw.key_file],
        );
        if c.store == ClusterStore::Etcd && c.endpoints.is_empty() {
            self.error(
                store_span,
                "cluster.store = \"etcd\" needs cluster.endpoints".to_string(),
            );
        }
        if let Some(t) = raw.lease_ttl {
            match *t.get_ref() {
                5..=3600 => c.lease_ttl = Duration::from_secs(*t.get_ref()),
                v => self.error(
                    t.span(),
                    format!("cluster.lease_ttl = {v} (expected 5 to 3600 seconds)"),
                ),
            }
        }
        if let Some(o) = raw.on_unreachable {
            match o.get_ref().as_str() {
                "refuse" => c.on_unreachable = OnUnreachable::Refuse,
                "local" => c.on_unreachable = OnUnreachable::Local,
                other => self.error(
                    o.span(),
                    format!(
                        "cluster.on_unreachable = {other:?} (expected \"refuse\" or \"local\")"
                    ),
                ),
            }
        }
        if let Some(h) = raw.host_id {
            let ok = !h.get_ref().is_empty()
                && h.get_ref().len() <= 64
                && h.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if ok {
                c.host_id = Some(h.into_inner());
            } else {
                self.error(
                    h.span(),
                    format!(
                        "cluster.host_id = {:?} (expected 1 to 64 of A-Z a-z 0-9 - _ .)",
                        h.get_ref()
                    ),
                );
            }
        }
        c.only_user = raw.only_user.unwrap_or(false);
        c
    }

    /// The TLS files for `https://` endpoints: a CA is needed (etcd's
    /// clusters sign with their own), a client certificate is optional
    /// (etcd's `--client-cert-auth`) and comes with its key. One scheme
    /// for every endpoint: a plain one would carry what TLS protects.
    fn cluster_tls(
        &mut self,
        c: &mut Cluster,
        span: Range<usize>,
        [ca, cert, key]: [Option<Spanned<String>>; 3],
    ) {
        let https = c
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        let files_span = [&ca, &cert, &key]
            .into_iter()
            .flatten()
            .map(Spanned::span)
            .next();
        if https == 0 {
            if let Some(s) = files_span {
                self.error(
                    s,
                    "cluster.ca_file, cert_file and key_file are for https:// endpoints"
                        .to_string(),
                );
            }
            return;
        }
        if https != c.endpoints.len() {
            self.error(
                span.clone(),
                "cluster.endpoints: all https:// or all http://, not both".to_string(),
            );
        }
        let mut file = |key: &str, v: Option<Spanned<String>>| {
            v.map(|v| self.abs_path(key, Some(v), PathBuf::new()))
                .filter(|p| !p.as_os_str().is_empty())
        };
        let ca_span = ca.as_ref().map(Spanned::span);
        let ca = file("cluster.ca_file", ca);
        let cert_span = cert.as_ref().or(key.as_ref()).map(Spanned::span);
        let (cert, key) = (
            file("cluster.cert_file", cert),
            file("cluster.key_file", key),
        );
        let Some(ca) = ca else {
            if ca_span.is_none() {
                self.error(
                    span,
                    "cluster.endpoints: https:// needs cluster.ca_file (the CA that signed etcd's certificate)"
                        .to_string(),
                );
            }
            return;
        };
        let client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                self.error(
                    cert_span.unwrap_or(span),
                    "cluster.cert_file and cluster.key_file go together".to_string(),
                );
                None
            }
        };
        c.tls = Some(EtcdTls { ca, client });
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
pub(super) fn parse_portal(s: &str) -> Result<Portal, String> {
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

pub(super) fn parse_host(s: &str) -> Result<Host, String> {
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
