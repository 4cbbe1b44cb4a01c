//! SCSI-3 persistent reservations on a LUN, to fence a host: each host
//! registers its own key under a Write Exclusive – Registrants Only
//! reservation, so every registered host may write and an unregistered
//! one may not; a host taking over a disk whose writer's lease expired
//! preempts that host's key, and the fenced host's next write fails.
//!
//! Sent with the SG_IO ioctl on the disk's block device (PERSISTENT
//! RESERVE IN/OUT, SPC-4 6.15/6.16), not through sg_persist: one ioctl
//! each, no process, no parsing of another tool's output.
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A reservation operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ReservationError {
    /// The device could not be opened or the ioctl failed.
    #[error("{}: {op}: {source}", device.display())]
    Io {
        /// The disk.
        device: PathBuf,
        /// The command.
        op: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The target answered with a SCSI error.
    #[error("{}: {op}: {status}", device.display())]
    Scsi {
        /// The disk.
        device: PathBuf,
        /// The command.
        op: &'static str,
        /// Status and sense, for people.
        status: String,
        /// The sense key was UNIT ATTENTION (sent again by [`Lun`]).
        unit_attention: bool,
    },
}

/// The reservation type this tool uses: Write Exclusive – Registrants Only.
pub const WRITE_EXCLUSIVE_REGISTRANTS_ONLY: u8 = 5;

const PR_IN: u8 = 0x5e;
const PR_OUT: u8 = 0x5f;
const SG_IO: libc::c_ulong = 0x2285;
const SG_DXFER_TO_DEV: i32 = -2;
const SG_DXFER_FROM_DEV: i32 = -3;
/// The status of a command refused because another initiator holds the
/// reservation.
const RESERVATION_CONFLICT: u8 = 0x18;

/// The kernel's `struct sg_io_hdr` (scsi/sg.h).
#[repr(C)]
#[derive(Debug)]
struct SgIoHdr {
    interface_id: i32,
    dxfer_direction: i32,
    cmd_len: u8,
    mx_sb_len: u8,
    iovec_count: u16,
    dxfer_len: u32,
    dxferp: *mut libc::c_void,
    cmdp: *const u8,
    sbp: *mut u8,
    timeout: u32,
    flags: u32,
    pack_id: i32,
    usr_ptr: *mut libc::c_void,
    status: u8,
    masked_status: u8,
    msg_status: u8,
    sb_len_wr: u8,
    host_status: u16,
    driver_status: u16,
    resid: i32,
    duration: u32,
    info: u32,
}

/// What the LUN says about its reservations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservations {
    /// The registered keys (one per I_T nexus).
    pub keys: Vec<u64>,
    /// The reservation: holder's key and type.
    pub holder: Option<(u64, u8)>,
}

/// This host's key: a hash of its id (never 0, which means "no key").
pub fn key_of(host: &str) -> u64 {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// A PERSISTENT RESERVE OUT parameter list (24 bytes).
fn out_params(key: u64, sa_key: u64) -> [u8; 24] {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    p
}

/// The keys of a READ KEYS answer.
fn parse_keys(data: &[u8]) -> Vec<u64> {
    let Some(len) = data.get(4..8) else {
        return Vec::new();
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    data.get(8..8 + len.min(data.len().saturating_sub(8)))
        .unwrap_or_default()
        .chunks_exact(8)
        .map(|k| u64::from_be_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]]))
        .collect()
}

/// The reservation of a READ RESERVATION answer.
fn parse_reservation(data: &[u8]) -> Option<(u64, u8)> {
    let len = data.get(4..8)?;
    if u32::from_be_bytes([len[0], len[1], len[2], len[3]]) < 16 {
        return None;
    }
    let k = data.get(8..16)?;
    let key = u64::from_be_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]]);
    Some((key, data.get(21)? & 0x0f))
}

/// A disk's reservations, through its block device.
#[derive(Debug, Clone)]
pub struct Lun {
    device: PathBuf,
}

impl Lun {
    /// The LUN behind `device` (`/dev/sdX`).
    pub fn new(device: &Path) -> Lun {
        Lun {
            device: device.to_path_buf(),
        }
    }

    /// The LUN behind SCSI disk `kname` (`sdX`).
    pub fn of_disk(kname: &str) -> Lun {
        Lun::new(&PathBuf::from(format!("/dev/{kname}")))
    }

    /// Send `cdb`; a UNIT ATTENTION (the target reporting a change, such
    /// as another host's reservation released) is consumed by the
    /// command it answers: send it again, at most twice.
    fn io(
        &self,
        op: &'static str,
        cdb: &[u8],
        data: &mut [u8],
        to_dev: bool,
    ) -> Result<(), ReservationError> {
        let mut r = self.io_once(op, cdb, data, to_dev);
        for _ in 0..2 {
            match &r {
                Err(ReservationError::Scsi {
                    unit_attention: true,
                    ..
                }) => r = self.io_once(op, cdb, data, to_dev),
                _ => break,
            }
        }
        r
    }

    fn io_once(
        &self,
        op: &'static str,
        cdb: &[u8],
        data: &mut [u8],
        to_dev: bool,
    ) -> Result<(), ReservationError> {
        let io_err = |source| ReservationError::Io {
            device: self.device.clone(),
            op,
            source,
        };
        // O_NONBLOCK: open even while the disk is held by md.
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.device)
            .map_err(io_err)?;
        let mut sense = [0u8; 32];
        let mut hdr = SgIoHdr {
            interface_id: i32::from(b'S'),
            dxfer_direction: if to_dev {
                SG_DXFER_TO_DEV
            } else {
                SG_DXFER_FROM_DEV
            },
            cmd_len: u8::try_from(cdb.len()).unwrap_or(10),
            mx_sb_len: 32,
            iovec_count: 0,
            dxfer_len: u32::try_from(data.len()).unwrap_or(0),
            dxferp: data.as_mut_ptr().cast(),
            cmdp: cdb.as_ptr(),
            sbp: sense.as_mut_ptr(),
            timeout: 20_000,
            flags: 0,
            pack_id: 0,
            usr_ptr: std::ptr::null_mut(),
            status: 0,
            masked_status: 0,
            msg_status: 0,
            sb_len_wr: 0,
            host_status: 0,
            driver_status: 0,
            resid: 0,
            duration: 0,
            info: 0,
        };
        // SAFETY: SG_IO reads the header and the buffers it points to
        // (cdb, data, sense), all alive and of the lengths given, until
        // the ioctl returns; the fd is open.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), SG_IO, std::ptr::addr_of_mut!(hdr)) };
        if r < 0 {
            return Err(io_err(std::io::Error::last_os_error()));
        }
        if hdr.status != 0 || hdr.host_status != 0 || hdr.driver_status & 0x0f != 0 {
            let mut unit_attention = false;
            let status = if hdr.status == RESERVATION_CONFLICT {
                "reservation conflict".to_string()
            } else {
                let s = &sense[..usize::from(hdr.sb_len_wr).min(sense.len())];
                // Fixed-format sense: key in byte 2, ASC/ASCQ in 12/13.
                let (k, asc, ascq) = match s.first().map(|b| b & 0x7f) {
                    Some(0x72 | 0x73) => (s.get(1), s.get(2), s.get(3)),
                    _ => (s.get(2), s.get(12), s.get(13)),
                };
                unit_attention = k.is_some_and(|k| k & 0x0f == 6);
                format!(
                    "SCSI status 0x{:02x}, host 0x{:x}, driver 0x{:x}, sense key 0x{:x} ASC/ASCQ 0x{:02x}/0x{:02x}",
                    hdr.status,
                    hdr.host_status,
                    hdr.driver_status,
                    k.map_or(0, |k| k & 0x0f),
                    asc.copied().unwrap_or(0),
                    ascq.copied().unwrap_or(0)
                )
            };
            return Err(ReservationError::Scsi {
                device: self.device.clone(),
                op,
                status,
                unit_attention,
            });
        }
        Ok(())
    }

    fn pr_in(&self, op: &'static str, sa: u8) -> Result<Vec<u8>, ReservationError> {
        let mut data = vec![0u8; 4096];
        let cdb = [PR_IN, sa, 0, 0, 0, 0, 0, 0x10, 0x00, 0];
        self.io(op, &cdb, &mut data, false)?;
        Ok(data)
    }

    fn pr_out(
        &self,
        op: &'static str,
        sa: u8,
        kind: u8,
        key: u64,
        sa_key: u64,
    ) -> Result<(), ReservationError> {
        crate::crash::point("persistent reserve out", (op, &self.device));
        let mut p = out_params(key, sa_key);
        let cdb = [PR_OUT, sa, kind & 0x0f, 0, 0, 0, 0, 0, 24, 0];
        self.io(op, &cdb, &mut p, true)
    }

    /// The registered keys and the reservation. An error means the target
    /// does not support persistent reservations (or the LUN is gone).
    pub fn read(&self) -> Result<Reservations, ReservationError> {
        let keys = parse_keys(&self.pr_in("PERSISTENT RESERVE IN (READ KEYS)", 0)?);
        let holder = parse_reservation(&self.pr_in("PERSISTENT RESERVE IN (READ RESERVATION)", 1)?);
        Ok(Reservations { keys, holder })
    }

    /// Register `key` for this I_T nexus, replacing any key it had.
    pub fn register(&self, key: u64) -> Result<(), ReservationError> {
        self.pr_out(
            "PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)",
            6,
            0,
            0,
            key,
        )
    }

    /// Reserve the LUN (Write Exclusive – Registrants Only) with `key`.
    pub fn reserve(&self, key: u64) -> Result<(), ReservationError> {
        self.pr_out(
            "PERSISTENT RESERVE OUT (RESERVE)",
            1,
            WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            key,
            0,
        )
    }

    /// Remove `victim`'s registration (and take its reservation if it
    /// held it), as registrant `key`.
    pub fn preempt(&self, key: u64, victim: u64) -> Result<(), ReservationError> {
        self.pr_out(
            "PERSISTENT RESERVE OUT (PREEMPT)",
            4,
            WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
            key,
            victim,
        )
    }

    /// Drop this I_T nexus's registration (and the reservation, if it held it).
    pub fn unregister(&self) -> Result<(), ReservationError> {
        self.pr_out(
            "PERSISTENT RESERVE OUT (REGISTER AND IGNORE EXISTING KEY)",
            6,
            0,
            0,
            0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_reservations_are_read_as_spc_lays_them_out() {
        let mut d = vec![0, 0, 0, 7, 0, 0, 0, 16];
        d.extend_from_slice(&1u64.to_be_bytes());
        d.extend_from_slice(&0xabcdu64.to_be_bytes());
        d.extend_from_slice(&[0; 8]); // beyond the length: ignored
        assert_eq!(parse_keys(&d), vec![1, 0xabcd]);
        assert_eq!(parse_keys(&[0, 0, 0, 1, 0, 0, 0, 0]), Vec::<u64>::new());
        let mut r = vec![0, 0, 0, 2, 0, 0, 0, 16];
        r.extend_from_slice(&0xabcdu64.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, WRITE_EXCLUSIVE_REGISTRANTS_ONLY, 0, 0]);
        assert_eq!(parse_reservation(&r), Some((0xabcd, 5)));
        assert_eq!(parse_reservation(&[0, 0, 0, 2, 0, 0, 0, 0]), None);
        let p = out_params(2, 3);
        assert_eq!((p[7], p[15], p[20]), (2, 3, 0));
    }

    #[test]
    fn a_hosts_key_is_stable_and_never_zero() {
        assert_eq!(key_of("host-a"), key_of("host-a"));
        assert_ne!(key_of("host-a"), key_of("host-b"));
        assert_ne!(key_of(""), 0);
    }
}
