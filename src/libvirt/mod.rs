//! libvirt's `qemu` hook: which disks of a domain are ours, and what each
//! hook operation must do with them.
//!
//! A domain lists its iscsimple disks in its `<metadata>`, in our namespace:
//!
//! ```xml
//! <metadata>
//!   <iscsimple:disks xmlns:iscsimple="urn:iscsimple:libvirt:1">
//!     <iscsimple:disk target="vda" spec="lun1@iqn.2014-06.fr.example:vm1+vm1-disk"/>
//!   </iscsimple:disks>
//! </metadata>
//! ```
//!
//! and the disk with that target has `<source dev='/dev/md/vm1-disk'/>` (or
//! any path that resolves to the device attach returns).
//!
//! libvirt's contract (libvirt 9.0, seen in the lab): the hook gets `NAME OP
//! SUBOP EXTRA` and the domain XML on stdin; for `migrate` and `restore`
//! stdout is read back as (possibly rewritten) domain XML, so the hook prints
//! nothing there; a non-zero exit of `prepare` makes libvirt refuse to start
//! the domain and show the hook's stderr; libvirt still calls `stopped` and
//! `release` after a failed `prepare`. A hook must never call back into
//! libvirt (it holds locks while the hook runs).
//!
//! [`hook`] holds what each call does with the disks.
use std::path::PathBuf;

pub mod hook;

/// The XML namespace of our metadata element.
pub const NAMESPACE: &str = "urn:iscsimple:libvirt:1";

/// Why the domain XML could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// stdin could not be read.
    #[error(transparent)]
    Stdin(#[from] std::io::Error),
    /// stdin is not well-formed XML.
    #[error("domain XML: {0}")]
    Xml(#[from] roxmltree::Error),
    /// Our metadata is malformed.
    #[error("domain {domain}: iscsimple metadata: {what}")]
    Metadata {
        /// Domain name.
        domain: String,
        /// What is wrong.
        what: String,
    },
}

/// One of our disks in a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// The guest device name (`vda`).
    pub target: String,
    /// The spec.
    pub spec: String,
    /// The domain disk's `<source dev>`, if the domain has that disk.
    pub source: Option<PathBuf>,
}

/// What a hook call should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Attach every disk before QEMU opens them (`prepare begin`).
    Attach,
    /// Detach every disk after QEMU is gone (`release end`).
    Detach,
    /// Remember that the domain is migrating in (`migrate begin` on the
    /// destination, before its `prepare`): a small file, nothing that blocks,
    /// nothing printed.
    MarkIncoming,
    /// Forget that mark (`stopped end`: a migration that failed ends with
    /// its domain stopped, whether its `prepare` ran or not).
    ClearIncoming,
    /// Nothing, quickly (every other op, including the XML filter
    /// `restore begin`, and `reconnect begin`).
    Nothing,
}

/// Map libvirt's `OP SUBOP` to an action.
pub fn action(op: &str, subop: &str) -> Action {
    match (op, subop) {
        ("prepare", "begin") => Action::Attach,
        ("release", "end") => Action::Detach,
        ("migrate", "begin") => Action::MarkIncoming,
        ("stopped", "end") => Action::ClearIncoming,
        _ => Action::Nothing,
    }
}

/// Our disks listed in the domain XML, in document order, each with the
/// source of the domain disk that has the same target.
pub fn disks(domain: &str, xml: &str) -> Result<Vec<DomainDisk>, HookError> {
    let doc = roxmltree::Document::parse(xml)?;
    let root = doc.root_element();
    let bad = |what: String| HookError::Metadata {
        domain: domain.to_string(),
        what,
    };
    let Some(metadata) = root.children().find(|n| n.has_tag_name("metadata")) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<DomainDisk> = Vec::new();
    for n in metadata
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().namespace() == Some(NAMESPACE))
    {
        if n.tag_name().name() != "disk" {
            continue;
        }
        let target = n
            .attribute("target")
            .ok_or_else(|| bad("a disk element has no target attribute".into()))?;
        let spec = n
            .attribute("spec")
            .ok_or_else(|| bad(format!("disk {target} has no spec attribute")))?;
        if out.iter().any(|d| d.target == target) {
            return Err(bad(format!("disk {target} is listed twice")));
        }
        let source = root
            .children()
            .find(|c| c.has_tag_name("devices"))
            .into_iter()
            .flat_map(|d| d.children().filter(|c| c.has_tag_name("disk")))
            .find(|d| {
                d.children()
                    .any(|t| t.has_tag_name("target") && t.attribute("dev") == Some(target))
            })
            .and_then(|d| d.children().find(|s| s.has_tag_name("source")))
            .and_then(|s| s.attribute("dev"))
            .map(PathBuf::from);
        out.push(DomainDisk {
            target: target.to_string(),
            spec: spec.to_string(),
            source,
        });
    }
    Ok(out)
}

/// The UUID of a domain XML (`<domain><uuid>`), or of the domain in a
/// libvirt status file (`<domstatus><domain><uuid>`), lowercase.
pub fn domain_uuid(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    let domain = if root.has_tag_name("domstatus") {
        root.children().find(|n| n.has_tag_name("domain"))?
    } else {
        root
    };
    domain
        .children()
        .find(|n| n.has_tag_name("uuid"))
        .and_then(|n| n.text())
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty())
}

/// Where libvirt keeps the live status of its QEMU domains.
pub const STATUS_DIR: &str = "/run/libvirt/qemu";

/// The `state` libvirt records for a running domain in its status file
/// (`<domstatus state='running' reason='migrated' ...>`), if any.
pub fn status_state(status_dir: &std::path::Path, domain: &str) -> Option<String> {
    let text = std::fs::read_to_string(status_dir.join(format!("{domain}.xml"))).ok()?;
    let doc = roxmltree::Document::parse(&text).ok()?;
    let root = doc.root_element();
    root.has_tag_name("domstatus")
        .then(|| root.attribute("state").map(str::to_string))
        .flatten()
}

/// Wait until libvirt records domain `domain` as running on this host: an
/// incoming migration's QEMU runs paused until the source has stopped and
/// handed over, and libvirt then resumes it and records `running`.
/// false when the domain went away or `timeout` passed.
pub fn wait_running(
    status_dir: &std::path::Path,
    domain: &str,
    timeout: std::time::Duration,
) -> bool {
    let start = crate::clock::now();
    let mut seen = false;
    loop {
        match status_state(status_dir, domain) {
            Some(s) if s == "running" => return true,
            Some(_) => seen = true,
            None if seen => return false,
            None => {}
        }
        if crate::clock::since(start) >= timeout {
            return false;
        }
        // libvirt rewrites the file atomically; a short poll is enough here.
        crate::clock::sleep(std::time::Duration::from_millis(500));
    }
}

/// The name of a domain's incoming-migration mark, hex-encoded as
/// [`holder_name`] is: `web 2` and `web_2` are two domains.
pub fn mark_name(domain: &str) -> String {
    let hex: String = domain.bytes().map(|b| format!("{b:02x}")).collect();
    format!("libvirt-{hex}")
}

/// The holder record name of a domain's disk.
///
/// The domain name is hex-encoded: libvirt allows almost any character in
/// it, and distinct domains (`web 2`, `web_2`) must never share a record.
pub fn holder_name(domain: &str, target: &str) -> String {
    let hex: String = domain.bytes().map(|b| format!("{b:02x}")).collect();
    format!("libvirt-{hex}-{target}")
}

/// `virsh blockresize DOMAIN DEVICE SIZEB`: tell a running domain that
/// its disk `device` (the path in its XML's `<source dev=...>`) grew to
/// `size` bytes; QEMU does not notice a bigger block device by itself.
/// The hook never calls libvirt (it runs inside libvirtd's own calls);
/// `grow --libvirt-domain` does, from outside.
pub fn blockresize_cmd(domain: &str, device: &std::path::Path, size: u64) -> crate::runner::Cmd {
    crate::runner::Cmd::new(crate::runner::Program::Virsh)
        .args(["blockresize", domain])
        .arg(device.to_string_lossy())
        .arg(format!("{size}B"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = r#"<domain type='qemu' id='1'>
  <name>vm1</name>
  <uuid>6f3a1c2e-1111-2222-3333-444455556666</uuid>
  <metadata>
    <other:info xmlns:other="http://example.org/other"><other:disk target="vdz" spec="nope"/></other:info>
    <iscsimple:disks xmlns:iscsimple="urn:iscsimple:libvirt:1">
      <iscsimple:disk target="vda" spec="lun1@iqn.2024-01.lab:vm1+vm1-disk"/>
      <iscsimple:disk target="vdb" spec="lun2@iqn.2024-01.lab:vm1"/>
    </iscsimple:disks>
  </metadata>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/md/vm1-disk'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2024-01.lab:vm1-lun-2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>"#;

    #[test]
    fn our_disks_are_found_and_others_ignored() {
        let d = disks("vm1", DOMAIN).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0],
            DomainDisk {
                target: "vda".into(),
                spec: "lun1@iqn.2024-01.lab:vm1+vm1-disk".into(),
                source: Some("/dev/md/vm1-disk".into())
            }
        );
        assert_eq!(d[1].target, "vdb");
        assert_eq!(
            d[1].source.as_deref(),
            Some(std::path::Path::new(
                "/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-iqn.2024-01.lab:vm1-lun-2"
            ))
        );
    }

    #[test]
    fn domains_without_our_metadata_have_no_disks() {
        assert!(disks("x", "<domain><name>x</name></domain>")
            .unwrap()
            .is_empty());
        let other = "<domain><name>x</name><metadata><a:b xmlns:a='urn:x'/></metadata></domain>";
        assert!(disks("x", other).unwrap().is_empty());
    }

    #[test]
    fn malformed_metadata_is_an_error() {
        let xml = "<domain><metadata><i:disk xmlns:i='urn:iscsimple:libvirt:1' target='vda'/></metadata></domain>";
        assert_eq!(
            disks("vm9", xml).unwrap_err().to_string(),
            "domain vm9: iscsimple metadata: disk vda has no spec attribute"
        );
        assert!(disks("vm9", "<domain>").is_err());
    }

    #[test]
    fn status_state_reads_domstatus() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(status_state(d.path(), "vm1"), None);
        std::fs::write(
            d.path().join("vm1.xml"),
            "<domstatus state='paused' reason='migration' pid='42'><domain/></domstatus>",
        )
        .unwrap();
        assert_eq!(status_state(d.path(), "vm1").as_deref(), Some("paused"));
        std::fs::write(
            d.path().join("vm1.xml"),
            "<domstatus state='running' reason='migrated' pid='42'><domain/></domstatus>",
        )
        .unwrap();
        assert!(wait_running(
            d.path(),
            "vm1",
            std::time::Duration::from_secs(1)
        ));
    }

    #[test]
    fn domain_uuids_from_xml_and_status() {
        assert_eq!(
            domain_uuid(DOMAIN).as_deref(),
            Some("6f3a1c2e-1111-2222-3333-444455556666")
        );
        let status = format!("<domstatus state='running'>{DOMAIN}</domstatus>");
        assert_eq!(
            domain_uuid(&status).as_deref(),
            Some("6f3a1c2e-1111-2222-3333-444455556666")
        );
        assert_eq!(domain_uuid("<domain><name>x</name></domain>"), None);
    }

    #[test]
    fn holder_names_never_collide() {
        assert_ne!(holder_name("web 2", "vda"), holder_name("web_2", "vda"));
        assert_eq!(holder_name("web", "vda"), "libvirt-776562-vda");
    }

    #[test]
    fn incoming_marks_are_keyed_by_hex_name_and_carry_the_uuid() {
        assert_ne!(mark_name("web 2"), mark_name("web_2"));
        assert_eq!(mark_name("web"), "libvirt-776562");
        assert_eq!(
            domain_uuid(DOMAIN).as_deref(),
            Some("6f3a1c2e-1111-2222-3333-444455556666")
        );
        assert_eq!(
            domain_uuid("<domain><name>x</name><uuid> AB-CD </uuid></domain>").as_deref(),
            Some("ab-cd")
        );
        assert_eq!(domain_uuid("<domain><name>x</name></domain>"), None);
        assert_eq!(domain_uuid("not xml"), None);
    }

    #[test]
    fn only_prepare_and_release_act() {
        assert_eq!(action("migrate", "begin"), Action::MarkIncoming);
        assert_eq!(action("prepare", "begin"), Action::Attach);
        assert_eq!(action("release", "end"), Action::Detach);
        assert_eq!(action("stopped", "end"), Action::ClearIncoming);
        for (op, sub) in [
            ("start", "begin"),
            ("started", "begin"),
            ("restore", "begin"),
            ("reconnect", "begin"),
            ("attach", "begin"),
        ] {
            assert_eq!(action(op, sub), Action::Nothing, "{op} {sub}");
        }
    }
}
