//! The kernel's side of the model: what the tool reads under `/sys`,
//! `/dev` and `/proc`, and the attributes it writes there.
use std::io;
use std::path::{Path, PathBuf};

use super::{Dev, Host, MState, Model, Scsi};
use crate::sysfs::Kernel;

impl Model {
    // ---- the kernel's side: paths ----

    fn sessions_named(&self) -> Vec<String> {
        self.sessions
            .keys()
            .map(|s| format!("session{s}"))
            .collect()
    }

    /// What is at `p` (no link followed at the last component).
    fn node(&self, p: &Path) -> Node {
        let parts: Vec<&str> = p
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        let sid_of = |s: &str| {
            s.strip_prefix("session")
                .and_then(|n| n.parse::<u32>().ok())
        };
        match parts.as_slice() {
            ["sys", "class", "iscsi_session"] => Node::Dir(self.sessions_named()),
            ["sys", "class", "iscsi_session", s, rest @ ..] => {
                let Some(sid) = sid_of(s) else {
                    return Node::None;
                };
                let Some(x) = self.sessions.get(&sid) else {
                    return Node::None;
                };
                match rest {
                    [] => Node::dir(&["device", "state", "targetname"]),
                    ["targetname"] => Node::File(x.target.clone()),
                    ["state"] => Node::File(
                        if self.targets.get(&x.target).is_some_and(|t| t.up) {
                            "LOGGED_IN"
                        } else {
                            "FAILED"
                        }
                        .into(),
                    ),
                    ["device"] => {
                        Node::Link(format!("/sys/devices/platform/host{}/session{sid}", x.host))
                    }
                    _ => Node::None,
                }
            }
            ["sys", "devices", "platform", h, s] => match (h.strip_prefix("host"), sid_of(s)) {
                (Some(h), Some(sid))
                    if self
                        .sessions
                        .get(&sid)
                        .is_some_and(|x| x.host.to_string() == h) =>
                {
                    Node::Dir(vec![format!("connection{sid}:0"), "iscsi_session".into()])
                }
                _ => Node::None,
            },
            ["sys", "class", "iscsi_connection", c, attr] => {
                let sid = c
                    .strip_prefix("connection")
                    .and_then(|c| c.strip_suffix(":0"))
                    .and_then(|n| n.parse::<u32>().ok());
                if !sid.is_some_and(|s| self.sessions.contains_key(&s)) {
                    return Node::None;
                }
                match *attr {
                    "persistent_address" | "address" => Node::File("127.0.0.1".into()),
                    "persistent_port" | "port" => Node::File("3260".into()),
                    _ => Node::None,
                }
            }
            ["sys", "bus", "scsi", "devices"] => Node::Dir(self.scsi.keys().cloned().collect()),
            ["sys", "bus", "scsi", "devices", h, rest @ ..] => {
                let Some(s) = self.scsi.get(*h) else {
                    return Node::None;
                };
                match rest {
                    [] => Node::dir(&["block", "delete", "rescan", "state", "type"]),
                    ["type"] => Node::File("0".into()),
                    ["state"] => Node::File(
                        if self.reachable(&s.kname) {
                            "running"
                        } else {
                            "transport-offline"
                        }
                        .into(),
                    ),
                    ["block"] => Node::Dir(vec![s.kname.clone()]),
                    ["delete" | "rescan"] => Node::File(String::new()),
                    _ => Node::None,
                }
            }
            ["sys", "class", "scsi_host", h, "scan"] => {
                let ok = h
                    .strip_prefix("host")
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| self.sessions.values().any(|s| s.host == n));
                if ok {
                    Node::File(String::new())
                } else {
                    Node::None
                }
            }
            ["sys", "block"] | ["sys", "class", "block"] => {
                let mut v: Vec<String> = self.scsi.values().map(|s| s.kname.clone()).collect();
                v.extend(self.locals.values().map(|l| format!("dm-{}", l.minor)));
                v.extend(self.arrays.keys().map(|m| format!("md{m}")));
                v.sort();
                Node::Dir(v)
            }
            ["sys", "block" | "class", "block", ..] | ["sys", "block", ..] => {
                let rest: &[&str] = if parts[1] == "class" {
                    &parts[3..]
                } else {
                    &parts[2..]
                };
                self.block_node(rest)
            }
            ["sys", "dev", "block", d] => {
                let hit = self.all_devs().into_iter().find(|x| {
                    let (_, a, b) = self.kname(x);
                    format!("{a}:{b}") == *d
                });
                match hit {
                    Some(x) => {
                        Node::Link(format!("/sys/devices/virtual/block/{}", self.kname(&x).0))
                    }
                    None => Node::None,
                }
            }
            ["sys", "devices", "virtual", "block", k] => {
                if self.dev(k).is_some() {
                    Node::dir(&["dev", "size"])
                } else {
                    Node::None
                }
            }
            ["dev", "md"] => Node::Dir(self.links.keys().cloned().collect()),
            ["dev", "md", l] => match self.links.get(*l) {
                Some(t) => Node::Link(t.clone()),
                None => Node::None,
            },
            ["dev", "vg", n] => match self.locals.get(*n) {
                Some(l) => Node::Link(format!("../dm-{}", l.minor)),
                None => Node::None,
            },
            ["dev", k] => match self.dev(k) {
                Some(d) => {
                    let (_, a, b) = self.kname(&d);
                    Node::Block(a, b)
                }
                None => Node::None,
            },
            ["dev"] | ["sys"] => Node::dir(&[]),
            _ => Node::None,
        }
    }

    fn all_devs(&self) -> Vec<Dev> {
        let mut v: Vec<Dev> = self.scsi.keys().cloned().map(Dev::Scsi).collect();
        v.extend(self.locals.keys().cloned().map(Dev::Local));
        v.extend(self.arrays.keys().copied().map(Dev::Md));
        v
    }

    fn block_node(&self, rest: &[&str]) -> Node {
        let Some((k, rest)) = rest.split_first() else {
            return Node::None;
        };
        let Some(d) = self.dev(k) else {
            return Node::None;
        };
        let (_, a, b) = self.kname(&d);
        match (rest, &d) {
            ([], Dev::Md(_)) => Node::dir(&["dev", "holders", "md", "size"]),
            ([], Dev::Local(_)) => Node::dir(&["dev", "dm", "holders", "size"]),
            ([], Dev::Scsi(_)) => Node::dir(&["dev", "device", "holders", "size"]),
            (["dev"], _) => Node::File(format!("{a}:{b}")),
            (["size"], _) => Node::File((self.size_of(&d) / 512).to_string()),
            (["holders"], _) => Node::Dir(
                self.holder_of(k)
                    .map(|m| vec![format!("md{m}")])
                    .unwrap_or_default(),
            ),
            (["dm"], Dev::Local(_)) => Node::dir(&["uuid"]),
            (["dm", "uuid"], Dev::Local(n)) => Node::File(self.locals[n].uuid.clone()),
            (["device"], Dev::Scsi(_)) => Node::dir(&["wwid"]),
            (["device", "wwid"], Dev::Scsi(h)) => Node::File(self.scsi[h].wwid.clone()),
            (["md", rest @ ..], Dev::Md(m)) => self.md_node(*m, rest),
            _ => Node::None,
        }
    }

    fn md_node(&self, m: u32, rest: &[&str]) -> Node {
        let a = &self.arrays[&m];
        let recovering = a.members.iter().any(|x| x.state == MState::Recovering);
        match rest {
            [] => {
                let mut v: Vec<String> =
                    ["array_state", "degraded", "sync_action", "sync_completed"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect();
                v.extend(a.members.iter().map(|x| format!("dev-{}", x.kname)));
                v.sort();
                Node::Dir(v)
            }
            ["array_state"] => Node::File("clean".into()),
            ["sync_action"] => Node::File(if recovering { "recover" } else { "idle" }.into()),
            ["sync_completed"] => Node::File(if recovering {
                format!("0 / {}", a.size / 512)
            } else {
                "none".into()
            }),
            ["degraded"] => {
                let ok = a
                    .members
                    .iter()
                    .filter(|x| x.state == MState::InSync)
                    .count();
                Node::File(2usize.saturating_sub(ok).to_string())
            }
            ["sync_speed_min" | "sync_speed_max"] => Node::File("0".into()),
            [d, rest @ ..] => {
                let Some(x) = d
                    .strip_prefix("dev-")
                    .and_then(|k| a.members.iter().find(|x| x.kname == k))
                else {
                    return Node::None;
                };
                match rest {
                    [] => Node::dir(&["slot", "state"]),
                    ["state"] => {
                        let mut s = match x.state {
                            MState::InSync => "in_sync",
                            MState::Faulty => "faulty",
                            MState::Recovering => "spare",
                        }
                        .to_string();
                        if x.write_mostly {
                            s.push_str(",write_mostly");
                        }
                        Node::File(s)
                    }
                    ["slot"] => Node::File(match x.state {
                        MState::InSync => "0".into(),
                        _ => "none".into(),
                    }),
                    _ => Node::None,
                }
            }
        }
    }

    /// `p` with every link resolved.
    pub fn canonical(&self, p: &Path) -> Option<PathBuf> {
        let mut cur = PathBuf::from("/");
        let mut todo: Vec<String> = comps(p);
        let mut hops = 0;
        while !todo.is_empty() {
            let c = todo.remove(0);
            if c == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&c);
            match self.node(&next) {
                Node::Link(t) => {
                    hops += 1;
                    if hops > 16 {
                        return None;
                    }
                    let mut t_parts = comps(Path::new(&t));
                    if t.starts_with('/') {
                        cur = PathBuf::from("/");
                    }
                    t_parts.extend(todo);
                    todo = t_parts;
                }
                // Directories on the way are not all modelled; the end is.
                Node::None if todo.is_empty() => return None,
                _ => cur = next,
            }
        }
        Some(cur)
    }

    // ---- the kernel's side: writes ----

    fn write_attr(&mut self, p: &Path, value: &str) -> io::Result<()> {
        let parts = comps(p);
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        match parts.as_slice() {
            ["sys", "class", "scsi_host", h, "scan"] => {
                let host: u32 = h
                    .strip_prefix("host")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
                let Some((sid, s)) = self
                    .sessions
                    .iter()
                    .find(|(_, s)| s.host == host)
                    .map(|(a, b)| (*a, b.clone()))
                else {
                    return Err(io::ErrorKind::NotFound.into());
                };
                let want = value.split_whitespace().nth(2).unwrap_or("-");
                self.scan(sid, &s.target, want.parse().ok());
                Ok(())
            }
            ["sys", "bus", "scsi", "devices", h, "delete"] => {
                let Some(s) = self.scsi.get(*h).cloned() else {
                    return Err(io::ErrorKind::NotFound.into());
                };
                if self.open_by_vm.contains(&s.kname) {
                    let d = format!("SCSI disk {} ({h}) deleted while a VM has it open", s.kname);
                    self.violate("a disk in use is never removed", d);
                }
                let me = super::caller();
                let lun = &self.luns[s.lun];
                let mine: Vec<String> = self
                    .attached
                    .iter()
                    .filter(|spec| {
                        me.acts_for(spec)
                            && spec_target(spec).as_deref() == Some(lun.target.as_str())
                            && spec_lun(spec) == lun.lun
                    })
                    .cloned()
                    .collect();
                self.released.extend(mine);
                self.remove_scsi(h);
                Ok(())
            }
            ["sys", "bus", "scsi", "devices", h, "rescan"] => {
                let reachable = self.scsi.get(*h).is_some_and(|s| self.reachable(&s.kname));
                let Some(s) = self.scsi.get_mut(*h) else {
                    return Err(io::ErrorKind::NotFound.into());
                };
                if !reachable {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
                s.wwid = self.luns[s.lun].wwid.clone();
                s.size = self.luns[s.lun].size;
                Ok(())
            }
            ["sys", "block", _, "md", "sync_speed_min" | "sync_speed_max"] => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the model has no writable {}", p.display()),
            )),
        }
    }

    /// Scan `lun` (all LUNs when None) of session `sid`'s target.
    pub(super) fn scan(&mut self, sid: u32, target: &str, lun: Option<u32>) {
        if !self.targets.get(target).is_some_and(|t| t.up) {
            return;
        }
        let host = self.sessions[&sid].host;
        let want: Vec<usize> = self
            .luns
            .iter()
            .enumerate()
            .filter(|(_, l)| l.target == target && lun.map_or(true, |n| n == l.lun))
            .map(|(i, _)| i)
            .collect();
        for i in want {
            let hctl = format!("{host}:0:0:{}", self.luns[i].lun);
            if self.scsi.contains_key(&hctl) {
                continue;
            }
            // sd takes the lowest free index, as the kernel's IDA does.
            let idx = (0u32..)
                .find(|n| !self.scsi.values().any(|s| s.minor == n * 16))
                .unwrap_or(0);
            let letter = char::from(b'a' + u8::try_from(idx % 26).unwrap_or(0));
            let asked = (self.luns[i].target.clone(), self.luns[i].lun);
            if !self.asked.contains(&asked) {
                let d = format!("LUN {} of {} scanned: no spec names it", asked.1, asked.0);
                self.violate("only the asked LUN is scanned", d);
            }
            self.scsi.insert(
                hctl,
                Scsi {
                    sid,
                    lun: i,
                    kname: format!("sd{letter}"),
                    minor: idx * 16,
                    wwid: self.luns[i].wwid.clone(),
                    size: self.luns[i].size,
                },
            );
        }
    }

    pub(super) fn remove_scsi(&mut self, hctl: &str) {
        if let Some(s) = self.scsi.remove(hctl) {
            // md keeps a failed member's name until it is removed.
            for a in self.arrays.values_mut() {
                for m in a.members.iter_mut().filter(|m| m.kname == s.kname) {
                    m.state = MState::Faulty;
                }
            }
            self.open_by_vm.remove(&s.kname);
        }
    }
}

/// The LUN of spec `s` (0 when not written).
pub fn spec_lun(s: &str) -> u32 {
    crate::spec::Spec::parse(s).map_or(0, |p| p.lun)
}

/// The target of spec `s` (normalised form `[lunN@]TARGET[+LABEL]`).
pub fn spec_target(s: &str) -> Option<String> {
    let s = s.split_once('@').map_or(s, |(_, r)| r);
    let t = s.split_once('+').map_or(s, |(t, _)| t);
    (!t.starts_with("MISSING")).then(|| t.to_string())
}

fn comps(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => s.to_str().map(str::to_string),
            std::path::Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

/// What is at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    None,
    File(String),
    Dir(Vec<String>),
    Link(String),
    Block(u64, u64),
}

impl Node {
    fn dir(names: &[&str]) -> Node {
        Node::Dir(names.iter().map(|s| s.to_string()).collect())
    }
}

impl Kernel for Host {
    fn read(&self, p: &Path) -> Option<String> {
        let m = self.model();
        match m.node(&m.canonical(p)?) {
            Node::File(s) => Some(s),
            _ => None,
        }
    }

    fn list(&self, p: &Path) -> Vec<String> {
        let m = self.model();
        match m.canonical(p).map(|c| m.node(&c)) {
            Some(Node::Dir(v)) => v,
            _ => Vec::new(),
        }
    }

    fn exists(&self, p: &Path) -> bool {
        self.model().canonical(p).is_some()
    }

    fn opens(&self, p: &Path) -> bool {
        let m = self.model();
        m.canonical(p)
            .is_some_and(|c| !matches!(m.node(&c), Node::None))
    }

    fn canonical(&self, p: &Path) -> Option<PathBuf> {
        self.model().canonical(p)
    }

    fn read_link(&self, p: &Path) -> Option<PathBuf> {
        match self.model().node(p) {
            Node::Link(t) => Some(PathBuf::from(t)),
            _ => None,
        }
    }

    fn write(&self, p: &Path, value: &str) -> io::Result<()> {
        // A scan of a slow target's host blocks the writer (nothing can
        // cut it short).
        let slow = {
            let m = self.model();
            let host = p
                .to_str()
                .and_then(|s| s.strip_prefix("/sys/class/scsi_host/host"))
                .and_then(|s| s.strip_suffix("/scan"))
                .and_then(|n| n.parse::<u32>().ok());
            host.is_some_and(|h| {
                m.sessions
                    .values()
                    .any(|x| x.host == h && m.targets.get(&x.target).is_some_and(|t| t.slow))
            })
        };
        if slow {
            crate::clock::sleep(std::time::Duration::from_secs(8));
        }
        self.model().write_attr(p, value)
    }

    fn block_dev(&self, p: &Path) -> io::Result<Option<(u64, u64)>> {
        let m = self.model();
        let c = m
            .canonical(p)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(match m.node(&c) {
            Node::Block(a, b) => Some((a, b)),
            _ => None,
        })
    }

    fn open_exclusive(&self, p: &Path) -> io::Result<()> {
        let m = self.model();
        let d = m
            .dev_at(&p.to_string_lossy())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let k = m.kname(&d).0;
        let busy = m.holder_of(&k).is_some()
            || m.open_by_vm.contains(&k)
            || matches!(&d, Dev::Local(n) if m.locals[n].busy);
        if busy {
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        } else {
            Ok(())
        }
    }

    fn flush(&self, _p: &Path) -> io::Result<()> {
        Ok(())
    }

    fn remove(&self, p: &Path) -> io::Result<()> {
        let mut m = self.model();
        let s = p.to_string_lossy();
        if let Some(l) = s.strip_prefix("/dev/md/") {
            return m
                .links
                .remove(l)
                .map(drop)
                .ok_or_else(|| io::ErrorKind::NotFound.into());
        }
        // A stale /dev/mdN node: the model has none once the array is gone.
        Err(io::ErrorKind::NotFound.into())
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        let mut m = self.model();
        let s = link.to_string_lossy();
        let l = s
            .strip_prefix("/dev/md/")
            .ok_or_else(|| io::Error::from(io::ErrorKind::PermissionDenied))?;
        m.links
            .insert(l.to_string(), target.to_string_lossy().into_owned());
        Ok(())
    }

    fn boot_id(&self) -> String {
        format!("boot-{}", self.model().boot)
    }
}
