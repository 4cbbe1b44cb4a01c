//! Host checks: daemons, names, kernel modules, mdadm policy, hooks.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Doctor, Finding};
use crate::runner::Program;
use crate::spec::TargetName;

const INITIATOR_FILE: &str = "/etc/iscsi/initiatorname.iscsi";
/// Where iscsiadm finds iscsid (an abstract unix socket).
const ISCSID_SOCKET: &str = "@ISCSIADM_ABSTRACT_NAMESPACE";
/// Where the package and `make install` put the binary the hooks run.
pub const SBIN: &str = "/usr/sbin/iscsimple";

fn unit_exists(d: &Doctor<'_>, unit: &str) -> bool {
    [
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/etc/systemd/system",
    ]
    .iter()
    .any(|dir| d.sys.exists(Path::new(dir).join(unit)))
}

pub(super) fn iscsid(d: &Doctor<'_>) -> Finding {
    const C: &str = "iscsid";
    if d.runner.verify(&[Program::Iscsiadm]).is_err() {
        return Finding::fail(
            C,
            vec!["iscsiadm is not installed".into()],
            vec!["apt-get install open-iscsi".into()],
        );
    }
    let unix = d.text("/proc/net/unix").unwrap_or_default();
    if unix
        .lines()
        .any(|l| l.split_whitespace().last() == Some(ISCSID_SOCKET))
    {
        return Finding::ok(C, format!("iscsid listens on {ISCSID_SOCKET}"));
    }
    let fix = if unit_exists(d, "iscsid.socket") {
        "systemctl enable --now iscsid.socket"
    } else if unit_exists(d, "iscsid.service") {
        "systemctl enable --now iscsid"
    } else {
        "/usr/sbin/iscsid  # and have the init system start it at boot"
    };
    Finding::fail(
        C,
        vec![format!(
            "iscsid is not running (nothing listens on {ISCSID_SOCKET}): every login fails"
        )],
        vec![fix.into()],
    )
}

pub(super) fn initiator_name(d: &Doctor<'_>) -> Finding {
    const C: &str = "initiator-name";
    let generate = format!("echo \"InitiatorName=$(iscsi-iname)\" > {INITIATOR_FILE}");
    let restart = if unit_exists(d, "iscsid.service") {
        "systemctl restart iscsid  # iscsid reads the name when it starts; log out every session first"
    } else {
        "restart iscsid  # it reads the name when it starts; log out every session first"
    };
    let fail =
        |found: String| Finding::fail(C, vec![found], vec![generate.clone(), restart.into()]);
    let Some(text) = d.text(INITIATOR_FILE) else {
        return fail(format!("{INITIATOR_FILE} is missing: iscsid cannot log in"));
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let names: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("InitiatorName="))
        .map(str::trim)
        .collect();
    let name = match names.as_slice() {
        [] if lines.iter().any(|l| l.starts_with("GenerateName=")) => {
            return fail(format!(
                "{INITIATOR_FILE} asks for a name to be generated (GenerateName) but holds none"
            ))
        }
        [] => return fail(format!("{INITIATOR_FILE} has no InitiatorName= line")),
        [one] => *one,
        more => {
            return fail(format!(
                "{INITIATOR_FILE} has {} InitiatorName= lines",
                more.len()
            ))
        }
    };
    if let Err(e) = TargetName::parse(name) {
        return fail(format!("{INITIATOR_FILE}: {e}"));
    }
    // A name with an empty unique part is a template that every host
    // built from the same image shares; targets then drop one host's
    // session whenever the other logs in.
    if name.ends_with(':') {
        return fail(format!(
            "{INITIATOR_FILE}: {name} has no unique part: every host made from this image has it"
        ));
    }
    // iscsid keeps the name it read at start: a file changed since then
    // does not count until it restarts. Its sessions show the name it uses
    // (the kernel prints "(null)" where iscsid set none).
    for h in d.sys.list("/sys/class/iscsi_session") {
        if let Some(used) = d
            .sys
            .read(format!("/sys/class/iscsi_session/{h}/initiatorname"))
        {
            if !used.is_empty() && used != "(null)" && !used.eq_ignore_ascii_case(name) {
                return Finding::fail(
                    C,
                    vec![format!(
                        "iscsid logs in as {used} ({h}) but {INITIATOR_FILE} says {name}: the file changed since iscsid started"
                    )],
                    vec![restart.into()],
                );
            }
        }
    }
    Finding::ok(C, format!("{name} ({INITIATOR_FILE})"))
}

/// The modules attach needs, by their /sys/module names.
const MODULES: [&str; 3] = ["iscsi_tcp", "raid1", "md_mod"];
const MODPROBE_DIRS: [&str; 5] = [
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/lib/modprobe.d",
    "/usr/lib/modprobe.d",
];

fn module_name(s: &str) -> String {
    let base = s.rsplit('/').next().unwrap_or(s);
    base.split(".ko").next().unwrap_or(base).replace('-', "_")
}

pub(super) fn kernel_modules(d: &Doctor<'_>) -> Finding {
    const C: &str = "kernel-modules";
    let release = d.sys.read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = format!("/lib/modules/{release}");
    let listed = |file: &str, m: &str| {
        d.text(format!("{dir}/{file}"))
            .unwrap_or_default()
            .lines()
            .any(|l| module_name(l.split(':').next().unwrap_or("")) == m)
    };
    // `install NAME COMMAND` replaces loading NAME by COMMAND: hardening
    // guides use it with /bin/false to disable modules.
    let mut overrides = Vec::new();
    for md in MODPROBE_DIRS {
        for f in d.sys.list(md).into_iter().filter(|f| f.ends_with(".conf")) {
            let path = format!("{md}/{f}");
            for (i, l) in d.text(&path).unwrap_or_default().lines().enumerate() {
                let w: Vec<&str> = l.split_whitespace().collect();
                if w.len() >= 2 && w[0] == "install" && !l.contains("--ignore-install") {
                    overrides.push((module_name(w[1]), path.clone(), i + 1, l.trim().to_string()));
                }
            }
        }
    }
    let mut ok = Vec::new();
    let mut found = Vec::new();
    let mut fix = Vec::new();
    for m in MODULES {
        if d.sys.exists(format!("/sys/module/{m}")) {
            ok.push(format!("{m} loaded"));
            continue;
        }
        let mine: Vec<_> = overrides.iter().filter(|o| o.0 == m).collect();
        if !mine.is_empty() {
            // Highest line first so that each sed keeps the next one's number.
            let mut by_line = mine.clone();
            by_line.sort_by(|a, b| (&a.1, b.2).cmp(&(&b.1, a.2)));
            for (_, file, line, text) in by_line {
                found.push(format!(
                    "{file}:{line}: `{text}` stops modprobe from loading {m}"
                ));
                fix.push(format!("sed -i '{line}d' {file}"));
            }
        } else if listed("modules.dep", m) || listed("modules.builtin", m) {
            ok.push(format!("{m} loadable"));
        } else {
            found.push(format!(
                "{m} is neither loaded nor in {dir}/modules.dep: attach cannot work on this kernel"
            ));
            fix.push(format!(
                "apt-get install --reinstall linux-image-{release}  # or boot a kernel whose modules are installed"
            ));
        }
    }
    fix.dedup();
    if found.is_empty() {
        Finding::ok(C, format!("{} ({release})", ok.join(", ")))
    } else {
        Finding::fail(C, found, fix)
    }
}

/// The metadata types mdadm knows (mdadm.conf(5), AUTO).
const MD_TYPES: [&str; 4] = ["0.90", "1.x", "ddf", "imsm"];

/// The types an AUTO line lets mdadm assemble on its own: for each type,
/// the first `+TYPE`, `-TYPE`, `+all` or `-all` decides; none means allowed.
fn auto_allows(tokens: &[&str]) -> Vec<&'static str> {
    MD_TYPES
        .into_iter()
        .filter(|t| {
            tokens
                .iter()
                .find_map(|tok| {
                    let (sign, what) = tok.split_at(1);
                    (matches!(sign, "+" | "-") && (what == *t || what == "all"))
                        .then_some(sign == "+")
                })
                .unwrap_or(true)
        })
        .collect()
}

pub(super) fn mdadm_auto(d: &Doctor<'_>) -> Finding {
    const C: &str = "mdadm-auto-assembly";
    if d.runner.verify(&[Program::Mdadm]).is_err() {
        return Finding::fail(
            C,
            vec!["mdadm is not installed".into()],
            vec!["apt-get install mdadm".into()],
        );
    }
    // mdadm reads its file, then the .d directories; the first AUTO line wins.
    let main = ["/etc/mdadm/mdadm.conf", "/etc/mdadm.conf"]
        .into_iter()
        .find(|p| d.sys.exists(p))
        .unwrap_or("/etc/mdadm/mdadm.conf");
    let mut files = vec![main.to_string()];
    for dir in ["/etc/mdadm/mdadm.conf.d", "/etc/mdadm.conf.d"] {
        files.extend(
            d.sys
                .list(dir)
                .into_iter()
                .filter(|f| f.ends_with(".conf"))
                .map(|f| format!("{dir}/{f}")),
        );
    }
    let mut auto = None;
    let mut array_lines = 0;
    for f in &files {
        let text = d.text(f).unwrap_or_default();
        // A line starting with blanks continues the previous one.
        let mut logical: Vec<(usize, String)> = Vec::new();
        for (i, l) in text.lines().enumerate() {
            let l = l.split('#').next().unwrap_or("");
            if l.starts_with([' ', '\t']) && !logical.is_empty() {
                if let Some(last) = logical.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(l.trim());
                }
            } else if !l.trim().is_empty() {
                logical.push((i + 1, l.trim().to_string()));
            }
        }
        for (n, l) in logical {
            let mut w = l.split_whitespace();
            match w.next().map(str::to_ascii_uppercase).as_deref() {
                Some("AUTO") if auto.is_none() => {
                    auto = Some((f.clone(), n, w.map(str::to_string).collect::<Vec<_>>()))
                }
                Some("ARRAY") => array_lines += 1,
                _ => {}
            }
        }
    }
    // Arrays with metadata are the host's own (the tool's have none): they
    // must be listed before auto-assembly is turned off.
    let own_arrays = d
        .sys
        .list("/sys/block")
        .into_iter()
        .filter(|k| k.starts_with("md"))
        .filter(|k| {
            d.sys
                .read(format!("/sys/block/{k}/md/metadata_version"))
                .is_some_and(|v| v != "none" && !v.is_empty())
        })
        .count();
    let mut fix = Vec::new();
    if own_arrays > 0 && array_lines == 0 {
        fix.push(format!(
            "mdadm --detail --scan >> {main}  # list the host's own arrays so that they still assemble"
        ));
    }
    let why = "udev and the initramfs would assemble md RAID found inside VM disks (a guest's own RAID), holding them so that the VM cannot start (the seed's first tip: no automatic start)";
    let found = match &auto {
        None => {
            fix.push(format!("echo 'AUTO -all' >> {main}"));
            format!("{main} has no AUTO line: {why}")
        }
        Some((f, n, tokens)) => {
            let t: Vec<&str> = tokens.iter().map(String::as_str).collect();
            let allowed = auto_allows(&t);
            if allowed.is_empty() {
                return Finding::ok(
                    C,
                    format!(
                        "{f}:{n}: AUTO {}: only arrays listed in ARRAY lines assemble",
                        tokens.join(" ")
                    ),
                );
            }
            fix.push(format!("sed -i '{n}s/.*/AUTO -all/' {f}"));
            format!(
                "{f}:{n}: AUTO {} allows {}: {why}",
                tokens.join(" "),
                allowed.join(", ")
            )
        }
    };
    fix.push("update-initramfs -u  # the initramfs keeps a copy of mdadm.conf".into());
    Finding::fail(C, vec![found], fix)
}

fn hook(
    d: &Doctor<'_>,
    check: &'static str,
    name: &str,
    installed: Option<&str>,
    path: &str,
    subcommand: &str,
    reload: Option<&str>,
) -> Finding {
    let Some(why) = installed else {
        return Finding::skip(check, format!("{name} is not installed"));
    };
    let dir = Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let write = format!(
        "mkdir -p {dir} && printf '%s\\n' '#!/bin/sh' 'exec {SBIN} {subcommand} \"$@\"' > {path} && chmod 755 {path}"
    );
    let mut fix = Vec::new();
    let file = d.sys.path(path);
    let problem = match std::fs::metadata(&file) {
        Err(_) => {
            fix.push(write);
            format!("{why}, but {path} is missing: its disks cannot attach")
        }
        Ok(m) if !m.is_file() => {
            fix.push(format!("rm -rf {path} && {write}"));
            format!("{path} is not a regular file")
        }
        Ok(m) if m.permissions().mode() & 0o100 == 0 => {
            fix.push(format!("chmod 755 {path}"));
            format!(
                "{path} has mode {:04o}: not executable, so the hypervisor cannot run it",
                m.permissions().mode() & 0o7777
            )
        }
        Ok(_) => {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let interp = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("#!"))
                .and_then(|l| l.split_whitespace().next());
            let target = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("exec "))
                .filter_map(|l| l.split_whitespace().next())
                .find(|w| w.ends_with("iscsimple"));
            match (interp, target) {
                (None, _) => {
                    fix.push(format!("rm -f {path} && {write}"));
                    format!("{path} has no #! line")
                }
                (Some(i), _) if !executable(d, i) => {
                    fix.push(format!("rm -f {path} && {write}"));
                    format!("{path} runs {i}, which is missing")
                }
                (_, Some(t)) if !executable(d, t) => {
                    let me = std::env::current_exe()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| "iscsimple".into());
                    fix.push(format!("cp {me} {t} && chmod 755 {t}"));
                    format!("{path} runs {t}, which is missing or not executable")
                }
                (_, t) => {
                    return Finding::ok(
                        check,
                        format!(
                            "{path} is executable and runs {}",
                            t.unwrap_or("something else than iscsimple")
                        ),
                    )
                }
            }
        }
    };
    if let Some(r) = reload {
        fix.push(r.to_string());
    }
    Finding::fail(check, vec![problem], fix)
}

fn executable(d: &Doctor<'_>, p: &str) -> bool {
    std::fs::metadata(d.sys.path(p))
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

pub(super) fn xen_hook(d: &Doctor<'_>) -> Finding {
    let why = ["/proc/xen/capabilities", "/etc/xen", "/usr/sbin/xl"]
        .into_iter()
        .find(|p| d.sys.exists(p))
        .map(|p| format!("Xen is installed ({p})"));
    hook(
        d,
        "xen-hook",
        "Xen",
        why.as_deref(),
        "/etc/xen/scripts/block-iscsimple",
        "xen",
        None,
    )
}

pub(super) fn libvirt_hook(d: &Doctor<'_>) -> Finding {
    let why = ["/etc/libvirt", "/usr/sbin/libvirtd"]
        .into_iter()
        .find(|p| d.sys.exists(p))
        .map(|p| format!("libvirt is installed ({p})"));
    hook(
        d,
        "libvirt-hook",
        "libvirt",
        why.as_deref(),
        "/etc/libvirt/hooks/qemu.d/iscsimple",
        "libvirt-hook",
        Some("systemctl reload libvirtd  # libvirtd looks for hooks when it starts or reloads"),
    )
}

#[cfg(test)]
mod tests {
    use super::auto_allows;

    #[test]
    fn auto_line_semantics() {
        assert!(auto_allows(&["-all"]).is_empty());
        assert!(auto_allows(&["homehost", "-all"]).is_empty());
        assert_eq!(auto_allows(&["+1.x", "-all"]), vec!["1.x"]);
        assert_eq!(auto_allows(&["-1.x"]), vec!["0.90", "ddf", "imsm"]);
        assert_eq!(auto_allows(&["+all"]).len(), 4);
        assert_eq!(auto_allows(&[]).len(), 4);
    }
}
