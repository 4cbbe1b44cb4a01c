//! The mirror's array: which one is ours, and stopping it. An md minor
//! and a `/dev/md/LABEL` link are names: mdadm hands the minor of a
//! stopped array to the next one, and a link can outlive its array. What
//! makes an array ours is its members: the legs recorded, checked by
//! device number and by identity (the iSCSI disk's wwid, the local
//! volume's dm UUID).
use std::path::Path;
use std::time::Duration;

use super::{Engine, UDEV_WAIT};
use crate::iscsi;
use crate::md::{self, Array, Leg, MdError};
use crate::state::Attachment;
use crate::sysfs::Sys;
use crate::uevent::{Event, Watcher};
use crate::volume;

/// One leg as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct LegId {
    /// Kernel name when recorded (a member keeps it in md's sysfs even
    /// after its disk is gone).
    pub kname: String,
    /// Block device number.
    pub devnum: Option<String>,
    /// The iSCSI disk's wwid, or the local volume's identity.
    pub id: Option<String>,
}

/// What an array must be made of to be a given attachment's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Expected {
    /// The label (`/dev/md/LABEL`).
    pub label: String,
    /// The array's device number, once built.
    pub devnum: Option<String>,
    /// The iSCSI leg.
    pub iscsi: Option<LegId>,
    /// The local leg.
    pub local: Option<LegId>,
}

impl Expected {
    /// The legs an attachment recorded.
    pub fn of(sys: &Sys, a: &Attachment) -> Option<Expected> {
        let m = a.mirror.as_ref()?;
        let local = m.local.as_ref().and_then(|p| {
            // A record from before device numbers were kept: the path's
            // device now.
            let kname = match &m.local_devnum {
                Some(d) => {
                    let (maj, min) = d.split_once(':')?;
                    sys.block_kname(maj.parse().ok()?, min.parse().ok()?)
                        .unwrap_or_default()
                }
                None => volume::resolve(sys, p).ok()?.kname,
            };
            Some(LegId {
                devnum: m.local_devnum.clone().or_else(|| sys.devnum(&kname)),
                kname,
                id: m.local_id.clone(),
            })
        });
        Some(Expected {
            label: m.label.clone(),
            devnum: m.devnum.clone(),
            iscsi: a.iscsi.as_ref().map(|i| LegId {
                kname: i.kname.clone(),
                devnum: i.devnum.clone(),
                id: i.wwid.clone(),
            }),
            local,
        })
    }

    /// Why `arr` is not this attachment's array; None when it is.
    pub fn mismatch(&self, sys: &Sys, arr: &Array) -> Option<String> {
        if let (Some(want), Some(got)) = (&self.devnum, &arr.devnum) {
            if want != got {
                return Some(format!("{} is device {got}, recorded {want}", arr.kname));
            }
        }
        if let Some(link) = sys.link_name(md::label_path(&self.label)) {
            if link != arr.kname {
                return Some(format!(
                    "/dev/md/{} points at {link}, not {}",
                    self.label, arr.kname
                ));
            }
        }
        if arr.members.is_empty() {
            return Some(format!("{} has no members", arr.kname));
        }
        // A faulty member whose address now answers as another disk: md no
        // longer uses it; the array is ours if a member md uses is ours.
        let mut replaced = None;
        let mut ours_in_use = false;
        for m in &arr.members {
            let is = |leg: &LegId| match (&m.devnum, &leg.devnum) {
                (Some(a), Some(b)) => a == b,
                // The member's disk is gone (md keeps its name) or the
                // record predates device numbers: by name.
                _ => m.kname == leg.kname,
            };
            let faulty = m.condition() == md::MemberCondition::Faulty;
            if let Some(leg) = self.iscsi.as_ref().filter(|l| is(l)) {
                let now = iscsi::wwid(sys, &m.kname);
                if let (Some(want), Some(now)) = (&leg.id, &now) {
                    if want != now {
                        let why = format!("member {} is SCSI disk {now}, recorded {want}", m.kname);
                        if !faulty {
                            return Some(why);
                        }
                        replaced = Some(why);
                        continue;
                    }
                }
                ours_in_use |= !faulty;
                continue;
            }
            if let Some(leg) = self.local.as_ref().filter(|l| is(l)) {
                let now = volume::identity(sys, &m.kname);
                if let (Some(want), Some(now)) = (&leg.id, &now) {
                    if want != now {
                        return Some(format!("member {} is {now}, recorded {want}", m.kname));
                    }
                }
                ours_in_use |= !faulty;
                continue;
            }
            return Some(format!(
                "member {} ({}) is not a leg of this attachment",
                m.kname,
                m.devnum.as_deref().unwrap_or("gone")
            ));
        }
        match replaced {
            Some(why) if !ours_in_use => Some(why),
            _ => None,
        }
    }
}

/// An array `mdadm --stop` stopped, whose disk may still be going.
#[derive(Debug)]
pub(super) struct Stopping {
    label: String,
    kname: String,
    /// Subscribed to udevd before the stop (None: no udev, or nothing stopped).
    udev: Option<Watcher>,
}

impl Engine<'_> {
    /// The array mdadm just built from `legs`: the one holding them (a
    /// device can be a member of one array only).
    pub(super) fn array_of_legs(&self, label: &str, legs: &[Leg]) -> Option<Array> {
        let want: Vec<String> = legs
            .iter()
            .filter_map(|l| match l {
                Leg::WriteMostly(p) | Leg::Normal(p) => self.kname_of(p),
                Leg::Missing => None,
            })
            .collect();
        if want.is_empty() {
            return None;
        }
        let holds = |a: &Array| want.iter().all(|w| a.member(w).is_some());
        if let Some(a) = md::by_label(&self.sys, label).filter(holds) {
            return Some(a);
        }
        md::arrays(&self.sys).into_iter().find(holds)
    }

    /// By device number: without udev LVM's links end at /dev/mapper
    /// nodes, whose names are not kernel names.
    fn kname_of(&self, p: &Path) -> Option<String> {
        volume::resolve(&self.sys, p).ok().map(|v| v.kname)
    }

    /// The array of an attachment whose record lacks its name (a crash
    /// right after `mdadm --build`): see [`Engine::find_expected`].
    pub(super) fn array_of(&self, a: &Attachment) -> Option<String> {
        self.find_expected(&Expected::of(&self.sys, a)?)
    }

    /// The array `expect` describes: the label's array if it is that one,
    /// else an array made of those legs only.
    pub(super) fn find_expected(&self, expect: &Expected) -> Option<String> {
        if let Some(arr) = md::by_label(&self.sys, &expect.label) {
            if expect.mismatch(&self.sys, &arr).is_none() {
                return Some(arr.kname);
            }
        }
        let legs: Vec<&str> = expect
            .iscsi
            .iter()
            .chain(expect.local.iter())
            .map(|l| l.kname.as_str())
            .collect();
        md::arrays(&self.sys)
            .into_iter()
            .find(|arr| {
                arr.members.iter().any(|m| legs.contains(&m.kname.as_str()))
                    && expect.mismatch(&self.sys, arr).is_none()
            })
            .map(|arr| arr.kname)
    }

    /// The attachment's array, verified to be its own. Gone, or what
    /// answers to its name is another array: an error, and the caller
    /// leaves that array alone.
    pub(super) fn our_array(&self, a: &Attachment) -> Result<(Array, Expected), MdError> {
        let label = a
            .mirror
            .as_ref()
            .map(|m| m.label.clone())
            .unwrap_or_default();
        let gone = || MdError::Gone {
            label: label.clone(),
        };
        let expect = Expected::of(&self.sys, a).ok_or_else(gone)?;
        let kname = a
            .mirror
            .as_ref()
            .and_then(|m| m.kname.clone())
            .or_else(|| self.array_of(a))
            .ok_or_else(gone)?;
        let arr = md::read_array(&self.sys, &kname).ok_or_else(gone)?;
        match expect.mismatch(&self.sys, &arr) {
            None => Ok((arr, expect)),
            Some(why) => Err(MdError::NotOurs {
                label: label.clone(),
                kname,
                why,
            }),
        }
    }

    /// `mdadm --stop` array `kname` if it is still what `expect` describes.
    /// The kernel and udev then remove its disk and links in the
    /// background; [`Engine::stop_end`] waits for that, so a detach can
    /// release the SCSI disk and log out meanwhile. Ok(None): nothing of
    /// ours to stop (another array has that name now: left alone).
    pub(super) fn stop_begin(
        &self,
        kname: &str,
        expect: &Expected,
    ) -> Result<Option<Stopping>, MdError> {
        let mut udev = None;
        if let Some(arr) = md::read_array(&self.sys, kname) {
            if let Some(why) = expect.mismatch(&self.sys, &arr) {
                tracing::warn!(label = %expect.label, array = kname, why, "not stopping an array that is not ours");
                return Ok(None);
            }
            // Subscribed before the stop, so its remove event cannot be missed.
            udev = self.udev_running().then(Watcher::udev);
            self.mdadm().stop(kname)?;
        }
        Ok(Some(Stopping {
            label: expect.label.clone(),
            kname: kname.to_string(),
            udev,
        }))
    }

    /// Wait until the stopped array's disk is gone (and udev has removed
    /// its links), then remove what nobody removed (no udev).
    pub(super) fn stop_end(&self, s: Stopping) -> Result<(), MdError> {
        let devpath = format!("DEVPATH=/devices/virtual/block/{}", s.kname);
        let udev_wait = self.limit(UDEV_WAIT).wait;
        match s
            .udev
            .map(|w| w.wait_event(udev_wait, &["ACTION=remove", &devpath]))
        {
            Some(Event::Seen) => {}
            // udevd is stuck: settle would wait as long again (the hotplug
            // script has 40 s in all); the stale links go below.
            Some(Event::Timeout) => {
                tracing::warn!(array = %s.kname, waited = ?udev_wait, "udev did not finish removing the array")
            }
            // Stopped earlier by someone else, or udev's events were lost.
            Some(Event::Lost) | None => self.settle(),
        }
        // The kernel drops a stopped array's disk asynchronously; without
        // udev nothing else waits for it before the stale nodes go.
        let gone = format!("/sys/block/{}", s.kname);
        let _ = Watcher::new().wait(self.limit(Duration::from_secs(5)).wait, || {
            (!self.sys.exists(&gone)).then_some(())
        });
        md::remove_stale_nodes(&self.sys, &s.label, &s.kname)
    }

    /// Stop and wait (see [`Engine::stop_begin`]).
    pub(super) fn stop_array(&self, kname: &str, expect: &Expected) -> Result<(), MdError> {
        match self.stop_begin(kname, expect)? {
            Some(s) => self.stop_end(s),
            None => Ok(()),
        }
    }
}
