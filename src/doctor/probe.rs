//! Identities written inside a disk: filesystem, LVM, md and GPT UUIDs,
//! read straight from the superblocks (no blkid: the lab and minimal hosts
//! lack it, and the formats are fixed). Clones of one golden LUN share
//! them, and the host then masks one copy behind the other (by-uuid links,
//! LVM duplicate PVs, md incremental assembly).
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// One identity found on a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident {
    /// `ext4`, `xfs`, `btrfs`, `swap`, `LVM2 PV`, `LVM2 VG`, `md`, `GPT`.
    pub kind: &'static str,
    /// The UUID as tools print it.
    pub uuid: String,
}

impl Ident {
    /// Identities of one namespace collide: every filesystem kind shares
    /// `/dev/disk/by-uuid`, the others have their own.
    pub fn namespace(&self) -> &'static str {
        match self.kind {
            "ext4" | "xfs" | "btrfs" | "swap" => "filesystem",
            other => other,
        }
    }
}

/// How much of the start of a device is read: btrfs keeps its superblock at 64 KiB.
const HEAD: usize = 64 * 1024 + 4096;

/// Every identity on the device or image at `path`.
pub fn identify(path: &Path) -> std::io::Result<Vec<Ident>> {
    let mut f = File::open(path)?;
    let mut head = Vec::with_capacity(HEAD);
    f.by_ref().take(HEAD as u64).read_to_end(&mut head)?;
    let mut out = Vec::new();
    let at = |off: usize, len: usize| head.get(off..off + len);
    // ext2/3/4: superblock at 1024, magic 0xEF53 at +56, UUID at +104.
    if at(1024 + 56, 2) == Some(&[0x53, 0xef]) {
        if let Some(u) = at(1024 + 104, 16) {
            out.push(ident("ext4", uuid(u)));
        }
    }
    if at(0, 4) == Some(b"XFSB") {
        if let Some(u) = at(32, 16) {
            out.push(ident("xfs", uuid(u)));
        }
    }
    if at(65536 + 64, 8) == Some(b"_BHRfS_M") {
        if let Some(u) = at(65536 + 32, 16) {
            out.push(ident("btrfs", uuid(u)));
        }
    }
    // swap: signature at the end of the first 4 KiB page, UUID after the
    // 1024 boot bytes and three u32 fields.
    if at(4096 - 10, 10) == Some(b"SWAPSPACE2") {
        if let Some(u) = at(1024 + 12, 16) {
            out.push(ident("swap", uuid(u)));
        }
    }
    // md 1.1 (at 0) and 1.2 (at 4 KiB): magic a92b4efc, set UUID at +16.
    for off in [0usize, 4096] {
        if at(off, 4) == Some(&[0xfc, 0x4e, 0x2b, 0xa9]) {
            if let Some(u) = at(off + 16, 16) {
                out.push(ident("md", md_uuid(u)));
            }
        }
    }
    if at(512, 8) == Some(b"EFI PART") {
        if let Some(u) = at(512 + 56, 16) {
            out.push(ident("GPT", guid(u)));
        }
    }
    out.extend(lvm(&f, &head));
    Ok(out)
}

fn ident(kind: &'static str, uuid: String) -> Ident {
    Ident { kind, uuid }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// RFC 4122 text form of 16 bytes in order.
fn uuid(b: &[u8]) -> String {
    let h = hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A GPT GUID: its first three fields are little-endian.
fn guid(b: &[u8]) -> String {
    let mut v = b.to_vec();
    v[0..4].reverse();
    v[4..6].reverse();
    v[6..8].reverse();
    uuid(&v)
}

/// mdadm prints set UUIDs as four colon-separated groups of 8 hex digits.
fn md_uuid(b: &[u8]) -> String {
    let h = hex(b);
    format!("{}:{}:{}:{}", &h[0..8], &h[8..16], &h[16..24], &h[24..32])
}

fn le64(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
}

fn le32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
}

/// LVM2 text-format ids are 32 characters shown in groups 6-4-4-4-4-4-6.
fn lvm_id(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    for n in [6, 4, 4, 4, 4, 4, 6] {
        if rest.len() < n {
            break;
        }
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(&rest[..n]);
        rest = &rest[n..];
    }
    out
}

/// The PV UUID from the label in one of the first four sectors, and the VG
/// id from the current text metadata of the first metadata area.
fn lvm(f: &File, head: &[u8]) -> Vec<Ident> {
    let mut out = Vec::new();
    let Some(label) = (0..4).map(|s| s * 512).find(|&o| {
        head.get(o..o + 8) == Some(b"LABELONE") && head.get(o + 24..o + 32) == Some(b"LVM2 001")
    }) else {
        return out;
    };
    let Some(pvh) = le32(head, label + 20).map(|x| label + x as usize) else {
        return out;
    };
    let Some(pv_uuid) = head.get(pvh..pvh + 32) else {
        return out;
    };
    out.push(ident("LVM2 PV", lvm_id(&String::from_utf8_lossy(pv_uuid))));
    // After the UUID and the device size: the data area list, then the
    // metadata area list, each ended by an all-zero (offset, size) pair.
    let mut p = pvh + 40;
    let mut lists = 0;
    let mut mda = None;
    while lists < 2 {
        let (Some(off), Some(size)) = (le64(head, p), le64(head, p + 8)) else {
            return out;
        };
        p += 16;
        if off == 0 && size == 0 {
            lists += 1;
        } else if lists == 1 && mda.is_none() {
            mda = Some(off);
        }
    }
    let Some(mda) = mda else { return out };
    // mda header: checksum, magic (16), version, start, size, then raw locations.
    let mut hdr = [0u8; 512];
    if f.read_exact_at(&mut hdr, mda).is_err() || &hdr[4..20] != b" LVM2 x[5A%r0N*>" {
        return out;
    }
    let (Some(off), Some(size)) = (le64(&hdr, 40), le64(&hdr, 48)) else {
        return out;
    };
    if off == 0 || size == 0 || size > 1 << 20 {
        return out;
    }
    let mut text = vec![0u8; usize::try_from(size.min(64 * 1024)).unwrap_or(0)];
    if f.read_exact_at(&mut text, mda + off).is_err() {
        return out;
    }
    let text = String::from_utf8_lossy(&text);
    if let Some(i) = text.find("id = \"") {
        let rest = &text[i + 6..];
        if let Some(end) = rest.find('"') {
            out.push(ident("LVM2 VG", rest[..end].to_string()));
        }
    }
    out
}

/// The command that gives `dev` a new identity of `kind` (its VM stopped).
pub fn new_uuid_command(kind: &str, dev: &str) -> String {
    match kind {
        "ext4" => format!("e2fsck -f -p {dev} && tune2fs -U random {dev}"),
        "xfs" => format!("xfs_admin -U generate {dev}"),
        "btrfs" => format!("btrfstune -u {dev}"),
        "swap" => format!("swaplabel -U $(cat /proc/sys/kernel/random/uuid) {dev}"),
        "LVM2 PV" | "LVM2 VG" => format!("vgimportclone --basevgname NEWNAME {dev}"),
        "md" => format!("mdadm --assemble /dev/md/NEWNAME --update=uuid {dev} ... (every member, inside the VM or with it stopped)"),
        "GPT" => format!("sgdisk -G {dev}"),
        _ => format!("give {dev} a new {kind} UUID"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(f: impl FnOnce(&mut Vec<u8>)) -> tempfile::NamedTempFile {
        let mut b = vec![0u8; 2 << 20];
        f(&mut b);
        let mut t = tempfile::NamedTempFile::new().expect("temp");
        t.write_all(&b).expect("write");
        t
    }

    #[test]
    fn ext4_and_gpt() {
        let t = image(|b| {
            b[1024 + 56] = 0x53;
            b[1024 + 57] = 0xef;
            b[1024 + 104..1024 + 120].copy_from_slice(&[
                0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
                0xff, 0x00,
            ]);
            b[512..520].copy_from_slice(b"EFI PART");
            b[512 + 56..512 + 72].copy_from_slice(&[
                0x44, 0x33, 0x22, 0x11, 0x66, 0x55, 0x88, 0x77, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
                0xff, 0x00,
            ]);
        });
        let ids = identify(t.path()).expect("identify");
        assert_eq!(
            ids,
            vec![
                ident("ext4", "11223344-5566-7788-99aa-bbccddeeff00".into()),
                ident("GPT", "11223344-5566-7788-99aa-bbccddeeff00".into()),
            ]
        );
    }

    #[test]
    fn lvm_pv_and_vg() {
        let t = image(|b| {
            let l = 512;
            b[l..l + 8].copy_from_slice(b"LABELONE");
            b[l + 20..l + 24].copy_from_slice(&32u32.to_le_bytes());
            b[l + 24..l + 32].copy_from_slice(b"LVM2 001");
            let p = l + 32;
            b[p..p + 32].copy_from_slice(b"AbCdEf0123012301230123012301AbCd");
            // data area (1 MiB, rest), end; metadata area at 4096, end
            let mut q = p + 40;
            for (o, s) in [(1u64 << 20, 0u64), (0, 0), (4096, 1 << 20), (0, 0)] {
                b[q..q + 8].copy_from_slice(&o.to_le_bytes());
                b[q + 8..q + 16].copy_from_slice(&s.to_le_bytes());
                q += 16;
            }
            b[4096 + 4..4096 + 20].copy_from_slice(b" LVM2 x[5A%r0N*>");
            let text = b"vg1 {\nid = \"VgVgVg-0000-1111-2222-3333-4444-555555\"\nseqno = 1\n";
            b[4096 + 40..4096 + 48].copy_from_slice(&512u64.to_le_bytes());
            b[4096 + 48..4096 + 56].copy_from_slice(&(text.len() as u64).to_le_bytes());
            b[4096 + 512..4096 + 512 + text.len()].copy_from_slice(text);
        });
        let ids = identify(t.path()).expect("identify");
        assert_eq!(
            ids,
            vec![
                ident("LVM2 PV", "AbCdEf-0123-0123-0123-0123-0123-01AbCd".into()),
                ident("LVM2 VG", "VgVgVg-0000-1111-2222-3333-4444-555555".into()),
            ]
        );
    }

    #[test]
    fn xfs_swap_md_btrfs() {
        let t = image(|b| {
            b[0..4].copy_from_slice(b"XFSB");
            b[32] = 1;
            b[4086..4096].copy_from_slice(b"SWAPSPACE2");
            b[1036] = 2;
            b[4096..4100].copy_from_slice(&[0xfc, 0x4e, 0x2b, 0xa9]);
            b[4096 + 16] = 3;
            b[65536 + 64..65536 + 72].copy_from_slice(b"_BHRfS_M");
            b[65536 + 32] = 4;
        });
        let kinds: Vec<_> = identify(t.path())
            .expect("identify")
            .into_iter()
            .map(|i| (i.kind, i.uuid))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("xfs", "01000000-0000-0000-0000-000000000000".to_string()),
                ("btrfs", "04000000-0000-0000-0000-000000000000".to_string()),
                ("swap", "02000000-0000-0000-0000-000000000000".to_string()),
                ("md", "03000000:00000000:00000000:00000000".to_string()),
            ]
        );
    }

    #[test]
    fn blank_device_has_no_identity() {
        let t = image(|_| {});
        assert!(identify(t.path()).expect("identify").is_empty());
    }
}
