//! The programs' side of the model: iscsiadm, mdadm and udevadm as the
//! tool runs them, with the invariants each command must keep.
use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{
    caller, spec_target, Array, Data, Dev, Host, MState, Member, Model, Scsi, Session, TORN,
};
use crate::runner::{Arg, Cmd, Output, Program, RunError, Runner};

/// The value after option `k` in `a`.
fn opt<'a>(a: &[&'a str], k: &str) -> Option<&'a str> {
    a.iter()
        .position(|x| *x == k)
        .and_then(|i| a.get(i + 1))
        .copied()
}

impl Model {
    // ---- programs ----

    fn run(&mut self, cmd: &Cmd) -> Result<Output, (i32, String)> {
        let shown = cmd.display();
        self.log.push(shown.clone());
        let argv: Vec<String> = cmd
            .args
            .iter()
            .map(|a| match a {
                Arg::Plain(s) | Arg::Secret(s) => s.clone(),
            })
            .collect();
        for s in self.secrets.clone() {
            if argv.iter().any(|a| a.contains(&s)) {
                self.violate("no secret in argv", format!("`{shown}` carries a secret"));
            }
        }
        if let Some(i) = self
            .fail_next
            .iter()
            .position(|p| shown.starts_with(p.as_str()))
        {
            self.fail_next.remove(i);
            return Err((1, format!("injected failure of `{shown}`")));
        }
        let a: Vec<&str> = argv.iter().map(String::as_str).collect();
        match cmd.program {
            Program::Iscsiadm => self.iscsiadm(&a),
            Program::Mdadm => self.mdadm(&a),
            Program::Udevadm => Ok(Output::default()),
            Program::Lvm => Err((1, "lvm is not modelled".into())),
            Program::Virsh => Err((1, "virsh is not modelled".into())),
            // A host without multipath-tools: every target has one path.
            Program::Multipath | Program::Multipathd => {
                Err((1, "multipath-tools are not modelled".into()))
            }
        }
    }

    /// How long `cmd` takes: slow targets answer discovery in 25 s and a
    /// login in 14 s.
    fn delay(&self, cmd: &Cmd) -> std::time::Duration {
        let a = cmd.plain_args();
        let slow = |t: &str| self.targets.get(t).is_some_and(|x| x.slow && x.up);
        let secs = match cmd.program {
            Program::Iscsiadm
                if a.contains(&"discovery") && self.targets.keys().any(|t| slow(t)) =>
            {
                25
            }
            Program::Iscsiadm if a.contains(&"--login") && opt(&a, "-T").is_some_and(slow) => 14,
            _ => 0,
        };
        std::time::Duration::from_secs(secs)
    }

    fn record_path(&self, target: &str) -> PathBuf {
        self.root
            .join("etc/iscsi/nodes")
            .join(target)
            .join("127.0.0.1,3260,1")
    }

    fn iscsiadm(&mut self, a: &[&str]) -> Result<Output, (i32, String)> {
        let opt = |k: &str| opt(a, k);
        match (opt("-m"), a) {
            (Some("discovery"), _) => {
                let out: String = self
                    .targets
                    .values()
                    .filter(|t| t.up)
                    .map(|t| format!("127.0.0.1:3260,1 {}\n", t.iqn))
                    .collect();
                if out.is_empty() {
                    // A portal that does not answer: iscsiadm waits until killed.
                    return Err((HANG, String::new()));
                }
                Ok(out_of(out))
            }
            (Some("node"), _) if a.contains(&"--login") => {
                let t = opt("-T").unwrap_or_default().to_string();
                self.login(&t)
            }
            (Some("node"), _) => {
                let t = opt("-T").unwrap_or_default();
                let path = self.record_path(t);
                match opt("-o") {
                    Some("new") => {
                        let body = format!(
                            "# BEGIN RECORD 2.1.8\nnode.name = {t}\nnode.session.scan = auto\nnode.startup = automatic\n# END RECORD\n"
                        );
                        crate::sim::sched::mkdirs(path.parent().expect("parent"));
                        std::fs::write(&path, body).map_err(|e| (6, e.to_string()))?;
                        Ok(Output::default())
                    }
                    Some("delete") => {
                        if !path.exists() {
                            return Err((21, "iscsiadm: No records found".into()));
                        }
                        let _ = std::fs::remove_dir_all(path.parent().expect("parent"));
                        Ok(Output::default())
                    }
                    Some("update") => Ok(Output::default()),
                    _ => Err((7, format!("iscsiadm: unmodelled {a:?}"))),
                }
            }
            (Some("session"), _) if a.contains(&"--logout") => {
                let sid: u32 = opt("-r").and_then(|s| s.parse().ok()).unwrap_or(0);
                self.logout(sid)
            }
            _ => Err((7, format!("iscsiadm: unmodelled {a:?}"))),
        }
    }

    fn login(&mut self, t: &str) -> Result<Output, (i32, String)> {
        let Some(target) = self.targets.get(t).cloned() else {
            return Err((21, "iscsiadm: No records found".into()));
        };
        if self.sessions.values().any(|s| s.target == t) {
            return Err((15, "iscsiadm: session exists".into()));
        }
        let record = std::fs::read_to_string(self.record_path(t)).unwrap_or_default();
        let value = |k: &str| {
            record.lines().rev().find_map(|l| {
                let (a, b) = l.split_once('=')?;
                (a.trim() == k).then(|| b.trim().to_string())
            })
        };
        if !target.up {
            // iscsid's attempts run until the wait the tool gave the login.
            return Err((HANG, String::new()));
        }
        if let Some((user, secret)) = &target.chap {
            if value("node.session.auth.username").as_deref() != Some(user.as_str())
                || value("node.session.auth.password").as_deref() != Some(secret.as_str())
            {
                return Err((
                    24,
                    "iscsiadm: Login failed due to authorization failure".into(),
                ));
            }
        }
        let sid = self.next_sid;
        self.next_sid += 1;
        self.sessions.insert(
            sid,
            Session {
                target: t.to_string(),
                host: sid + 1,
                by_tool: true,
            },
        );
        if value("node.session.scan").as_deref() != Some("manual") {
            self.scan(sid, t, None);
        }
        Ok(Output::default())
    }

    fn logout(&mut self, sid: u32) -> Result<Output, (i32, String)> {
        let Some(s) = self.sessions.get(&sid).cloned() else {
            return Err((21, "iscsiadm: No matching sessions found".into()));
        };
        if !s.by_tool {
            let d = format!(
                "session {sid} to {} was made by the administrator",
                s.target
            );
            self.violate("only a session the tool made is logged out", d);
        }
        let disks: Vec<(String, Scsi)> = self
            .scsi
            .iter()
            .filter(|(_, d)| d.sid == sid)
            .map(|(h, d)| (h.clone(), d.clone()))
            .collect();
        for (h, d) in &disks {
            if self.holder_of(&d.kname).is_some() || self.open_by_vm.contains(&d.kname) {
                let detail = format!(
                    "session {sid} logged out under {} ({h}), still in use",
                    d.kname
                );
                self.violate("a session in use is never logged out", detail);
            }
        }
        let me = caller();
        // The sweep detaches what no live domain holds, whichever spec.
        let attached = if me.op == "sweep" {
            BTreeSet::new()
        } else {
            self.attached.clone()
        };
        for spec in attached {
            if !me.acts_for(&spec)
                && !self.released.contains(&spec)
                && spec_target(&spec).as_deref() == Some(s.target.as_str())
            {
                let d = format!(
                    "session {sid} to {} logged out while {spec} is attached",
                    s.target
                );
                self.violate("a session in use is never logged out", d);
            }
        }
        for (h, _) in disks {
            self.remove_scsi(&h);
        }
        self.sessions.remove(&sid);
        Ok(Output::default())
    }

    fn mdadm(&mut self, a: &[&str]) -> Result<Output, (i32, String)> {
        match a {
            ["--version"] => Ok(Output {
                code: 0,
                stdout: String::new(),
                stderr: "mdadm - v4.2 - 2021-12-30 - Debian 4.2-5\n".into(),
            }),
            ["--build", md, rest @ ..] => self.build(md, rest),
            ["--stop", md] => {
                let m = self.array_at(md)?;
                self.check_owner("mdadm --stop", m);
                if self.open_by_vm.contains(&format!("md{m}")) {
                    return Err((1, format!("mdadm: Cannot get exclusive access to {md}")));
                }
                // A recovery stopped half-way leaves its destination torn.
                let torn: Vec<String> = self.arrays[&m]
                    .members
                    .iter()
                    .filter(|x| x.state == MState::Recovering && !x.partial)
                    .map(|x| x.kname.clone())
                    .collect();
                for k in torn {
                    let id = TORN + self.next_write;
                    self.next_write += 1;
                    if let Some(d) = self.data_mut(&k) {
                        d.insert(id);
                    }
                }
                self.arrays.remove(&m);
                Ok(Output::default())
            }
            [md, op, rest @ ..] if op.starts_with("--") => {
                let m = self.array_at(md)?;
                self.check_owner(&format!("mdadm {op}"), m);
                match (*op, rest) {
                    ("--add", [.., dev]) | ("--re-add", [.., dev]) => {
                        let wm = rest.contains(&"--write-mostly");
                        self.add(m, dev, wm, *op == "--re-add")
                    }
                    ("--fail", [dev]) => {
                        let k = self.kname_at(dev)?;
                        self.set_member(m, &k, MState::Faulty);
                        Ok(Output::default())
                    }
                    ("--remove", [_]) => {
                        let a = self.arrays.get_mut(&m).expect("checked");
                        a.members.retain(|x| x.state != MState::Faulty);
                        Ok(Output::default())
                    }
                    _ => Err((1, format!("mdadm: unmodelled {a:?}"))),
                }
            }
            _ => Err((1, format!("mdadm: unmodelled {a:?}"))),
        }
    }

    fn array_at(&self, p: &str) -> Result<u32, (i32, String)> {
        match self.dev_at(p) {
            Some(Dev::Md(m)) => Ok(m),
            _ => Err((
                1,
                format!("mdadm: error opening {p}: No such file or directory"),
            )),
        }
    }

    fn kname_at(&self, p: &str) -> Result<String, (i32, String)> {
        match self.dev_at(p) {
            Some(d) => Ok(self.kname(&d).0),
            None => Err((
                1,
                format!("mdadm: cannot find {p}: No such file or directory"),
            )),
        }
    }

    /// An md operation other than a build: on an array the tool built for
    /// the attachment this call acts for, or on one whose attachment is
    /// no longer known to be attached (a half-done call's leftover).
    fn check_owner(&mut self, what: &str, m: u32) {
        let owner = self.arrays[&m].owner.clone();
        let me = caller();
        if me.acts_for(&owner) {
            return;
        }
        // The sweep detaches attachments no live domain holds: any owner.
        if me.op == "sweep" {
            return;
        }
        if self.attached.contains(&owner) || me.op != "attach" {
            let d = format!(
                "`{what}` on md{m} (built for {owner}) by {} {}",
                me.op,
                me.spec.as_deref().unwrap_or("-")
            );
            self.violate("md operations touch only the caller's array", d);
        }
    }

    fn build(&mut self, md: &str, rest: &[&str]) -> Result<Output, (i32, String)> {
        let label = md.strip_prefix("/dev/md/").unwrap_or(md).to_string();
        if self.links.contains_key(&label) && self.dev_at(md).is_some() {
            return Err((1, format!("mdadm: {md} is already in use")));
        }
        let mut size = None;
        let mut members = Vec::new();
        let mut wm = false;
        for x in rest {
            if let Some(k) = x.strip_prefix("--size=") {
                size = k.parse::<u64>().ok().map(|k| k * 1024);
            } else if *x == "--write-mostly" {
                wm = true;
            } else if *x == "missing" {
                wm = false;
            } else if x.starts_with("--") {
            } else {
                let k = self.kname_at(x)?;
                if self.holder_of(&k).is_some() || self.open_by_vm.contains(&k) {
                    return Err((1, format!("mdadm: {x} is busy")));
                }
                members.push(Member {
                    kname: k,
                    state: MState::InSync,
                    write_mostly: wm,
                    partial: false,
                });
                wm = false;
            }
        }
        let smallest = members
            .iter()
            .filter_map(|x| self.dev(&x.kname).map(|d| self.size_of(&d)))
            .min()
            .unwrap_or(0);
        let size = size.unwrap_or(smallest);
        if size > smallest {
            return Err((1, "mdadm: a device is too small".into()));
        }
        // Built from a local volume alone (its copy is newer, or the target
        // is MISSING): never larger than the LUN it mirrored, or the VM
        // writes where the LUN can never follow.
        let only_local = members
            .iter()
            .all(|x| matches!(self.dev(&x.kname), Some(Dev::Local(_))));
        for x in &members {
            if let Some(Dev::Local(n)) = self.dev(&x.kname) {
                if let Some(&lun) = self.paired.get(&n).filter(|_| only_local) {
                    if size > lun {
                        let d = format!("{md} built at {size} bytes from local {n}, which mirrored a LUN of {lun}");
                        self.violate("an array is never larger than its LUN", d);
                    }
                }
            }
        }
        let m = (0..=127u32)
            .rev()
            .find(|m| !self.arrays.contains_key(m))
            .ok_or_else(|| (1, "no free minor".to_string()))?;
        // A call for several disks (a libvirt domain) builds for the one
        // of its specs with this label.
        let me = caller();
        let owner = me
            .spec
            .clone()
            .or_else(|| {
                me.specs
                    .iter()
                    .find(|s| s.ends_with(&format!("+{label}")))
                    .cloned()
            })
            .unwrap_or_default();
        self.arrays.insert(
            m,
            Array {
                size,
                members,
                owner,
                label: label.clone(),
                dirty: Data::new(),
            },
        );
        self.links.insert(label, format!("../md{m}"));
        self.pair();
        Ok(Output::default())
    }

    fn add(&mut self, m: u32, dev: &str, wm: bool, partial: bool) -> Result<Output, (i32, String)> {
        let k = self.kname_at(dev)?;
        let size = self.dev(&k).map(|d| self.size_of(&d)).unwrap_or(0);
        if size < self.arrays[&m].size {
            // md refuses it, but only after the tool's earlier steps ran:
            // a disk too small is bad input, refused before any change.
            let d = format!(
                "md{m} of {} bytes asked to take {dev} of {size}",
                self.arrays[&m].size
            );
            self.violate("a disk too small is refused before anything changes", d);
            return Err((1, format!("mdadm: {dev} not large enough to join array")));
        }
        if self.holder_of(&k).is_some() || self.open_by_vm.contains(&k) {
            return Err((
                1,
                format!("mdadm: Cannot open {dev}: Device or resource busy"),
            ));
        }
        let src = self.arrays[&m]
            .members
            .iter()
            .find(|x| x.state == MState::InSync)
            .map(|x| x.kname.clone());
        if let (Some(src), Some(dst)) = (src, self.data_of(&k).cloned()) {
            let from = self.data_of(&src).cloned().unwrap_or_default();
            // Writes only the destination holds would be gone.
            let elsewhere = self.data_except(&k);
            let lost: Vec<u64> = dst
                .difference(&from)
                .filter(|w| **w < TORN && !elsewhere.contains(w))
                .copied()
                .collect();
            if !lost.is_empty() {
                let d = format!(
                    "md{m}: resync from {src} ({} writes) over {k} ({} writes) destroys writes {lost:?} held nowhere else",
                    from.len(),
                    dst.len()
                );
                self.violate("a resync never overwrites newer data", d);
            }
        }
        let a = self.arrays.get_mut(&m).expect("checked");
        a.members.retain(|x| x.kname != k);
        a.members.push(Member {
            kname: k,
            state: MState::Recovering,
            write_mostly: wm,
            partial,
        });
        Ok(Output::default())
    }
}

fn out_of(stdout: String) -> Output {
    Output {
        code: 0,
        stdout,
        stderr: String::new(),
    }
}

/// A command that does not return: it runs its whole timeout (on the
/// caller's clock) and is killed.
const HANG: i32 = -1;

impl Runner for Host {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        // A slow target answers within the command's own timeout, after a
        // while; past the timeout the command is killed.
        let delay = self.model().delay(cmd);
        if delay > cmd.timeout {
            crate::clock::sleep(cmd.timeout);
            return Err(RunError::Timeout {
                command: cmd.display(),
                after: cmd.timeout,
            });
        }
        crate::clock::sleep(delay);
        let r = self.model().run(cmd);
        if matches!(&r, Err((HANG, _))) {
            crate::clock::sleep(cmd.timeout);
            return Err(RunError::Timeout {
                command: cmd.display(),
                after: cmd.timeout,
            });
        }
        r.map_err(|(code, stderr)| RunError::Failed {
            command: cmd.display(),
            code: Some(code),
            signal: None,
            stderr,
            stdout: String::new(),
        })
    }

    fn verify(&self, _programs: &[Program]) -> Result<(), RunError> {
        Ok(())
    }

    fn spawn_self_detached(&self, _args: &[String]) -> Result<u32, RunError> {
        Ok(0)
    }
}
