use std::fs;
use std::path::{Path, PathBuf};

use super::plan::{steps, Action, Source};
use super::{attaching, spec_lun, Walk};
use crate::config::Config;
use crate::disk::copies::Asked;
use crate::disk::{key_of, AttachOptions, Engine};
use crate::runner::recording::RecordingRunner;
use crate::spec::Spec;
use crate::sysfs::Sys;
use crate::volume::Volume;

const TARGET: &str = "iqn.2024-01.lab:t";

fn spec(s: &str) -> Spec {
    s.parse().expect("spec")
}

fn local() -> PathBuf {
    PathBuf::from("/dev/labvg/vm1")
}

/// The step list of each kind of attach: one list, checks first, the
/// iSCSI leg before the mirror, the source leg built, the other added.
#[test]
fn each_kind_of_attach_has_its_steps_in_order() {
    let o = AttachOptions::default();
    let leg = || Action::IscsiLeg {
        target: spec(&format!("lun1@{TARGET}")).target.expect("target"),
        lun: 1,
    };
    let check = || Action::CheckLocal(local());
    let out = |l: Option<&str>| Action::HandOut {
        label: l.map(String::from),
    };
    let build = |leg, bitmap| Action::Build {
        label: "vm1".into(),
        leg,
        bitmap,
    };
    let add = |leg| Action::Add {
        label: "vm1".into(),
        leg,
    };
    let mirror = spec(&format!("lun1@{TARGET}+vm1"));
    let l = Some(local());
    let l = l.as_deref();
    // A plain LUN.
    assert_eq!(
        steps(&spec(&format!("lun1@{TARGET}")), None, false, o),
        vec![leg(), out(None)]
    );
    // A mirror: built from the LUN (with a bitmap), the local leg added.
    assert_eq!(
        steps(&mirror, l, false, o),
        vec![
            check(),
            leg(),
            build(Source::Iscsi, true),
            add(Source::Local(local())),
            out(Some("vm1"))
        ]
    );
    // Its local leg the source (newer data): built from it, the LUN added.
    assert_eq!(
        steps(&mirror, l, true, o),
        vec![
            check(),
            leg(),
            build(Source::Local(local()), false),
            add(Source::Iscsi),
            out(Some("vm1"))
        ]
    );
    // The local leg MISSING.
    assert_eq!(
        steps(&mirror, None, false, o),
        vec![leg(), build(Source::Iscsi, false), out(Some("vm1"))]
    );
    // The target MISSING.
    assert_eq!(
        steps(&spec("MISSING+vm1"), l, false, o),
        vec![
            check(),
            build(Source::Local(local()), false),
            out(Some("vm1"))
        ]
    );
    // An incoming migration, and a caller holding the local leg back.
    for (opts, bitmap) in [
        (
            AttachOptions {
                defer_local: true,
                ..o
            },
            false,
        ),
        (
            AttachOptions {
                hold_local: true,
                ..o
            },
            true,
        ),
    ] {
        assert_eq!(
            steps(&mirror, l, false, opts),
            vec![
                check(),
                leg(),
                build(Source::Iscsi, bitmap),
                Action::LocalLater {
                    local: local(),
                    deferred: opts.defer_local
                },
                out(Some("vm1"))
            ],
            "{opts:?}"
        );
    }
}

/// A host under `r` with the label table and a logged-in session 1 to
/// TARGET on SCSI host 7 whose LUN 1 is disk sda (16 MiB), already there.
fn host(r: &Path) -> Config {
    let table = r.join("labels.conf");
    fs::write(&table, "vm1 /dev/labvg/vm1\nnolocal MISSING\n").expect("w");
    let dev = r.join("sys/devices/platform/host7/session1");
    fs::create_dir_all(&dev).expect("mkdir");
    let class = r.join("sys/class/iscsi_session/session1");
    fs::create_dir_all(&class).expect("mkdir");
    fs::write(class.join("targetname"), format!("{TARGET}\n")).expect("w");
    fs::write(class.join("state"), "LOGGED_IN\n").expect("w");
    std::os::unix::fs::symlink(&dev, class.join("device")).expect("link");
    let scsi = r.join("sys/bus/scsi/devices/7:0:0:1");
    fs::create_dir_all(scsi.join("block/sda")).expect("mkdir");
    fs::write(scsi.join("type"), "0\n").expect("w");
    let block = r.join("sys/class/block/sda");
    fs::create_dir_all(&block).expect("mkdir");
    fs::write(block.join("size"), "32768\n").expect("w");
    fs::write(block.join("dev"), "8:0\n").expect("w");
    fs::create_dir_all(r.join("sys/block/sda/device")).expect("mkdir");
    fs::write(r.join("sys/block/sda/device/wwid"), "naa.lun1\n").expect("w");
    fs::create_dir_all(r.join("dev")).expect("mkdir");
    fs::write(r.join("dev/sda"), "").expect("w");
    fs::create_dir_all(r.join("sys/class/scsi_host/host7")).expect("mkdir");
    Config {
        label_table: table,
        state_dir: r.join("var/lib/iscsimple"),
        run_dir: r.join("run/iscsimple"),
        ..Config::default()
    }
}

/// What attach did, as the plan words it: the commands it ran, and the
/// LUN scan (a sysfs write) if it wrote one.
fn done(r: &Path, runner: &RecordingRunner) -> Vec<String> {
    let mut v: Vec<String> = runner
        .calls()
        .into_iter()
        .filter(|c| !c.starts_with("mdadm --version"))
        .collect();
    if let Ok(s) = fs::read_to_string(r.join("sys/class/scsi_host/host7/scan")) {
        v.insert(0, format!("echo '{s}' > /sys/class/scsi_host/host7/scan"));
    }
    v
}

/// The plan's lines that are commands or sysfs writes, with the values
/// attach learns on the way filled in (the LUN's disk and size), without
/// their notes (a bitmap file, where the platform supports one: not on a
/// fake host).
fn commands(plan: &[String]) -> Vec<String> {
    plan.iter()
        .map(|l| l.split(" (").next().unwrap_or(l))
        .filter(|l| {
            ["mdadm ", "iscsiadm ", "udevadm ", "echo "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(|l| {
            l.replace("ISCSI_DEV", "/dev/sda")
                .replace("LUN_KIB", "16384")
        })
        .collect()
}

/// The steps' commands up to and including the array's build: what
/// attach gets to do on a fake host, which has no md.
fn to_build(cmds: Vec<String>) -> Vec<String> {
    let n = cmds
        .iter()
        .position(|c| c.starts_with("mdadm --build"))
        .map_or(cmds.len(), |i| i + 1);
    cmds.into_iter().take(n).collect()
}

fn engine<'a>(r: &Path, c: &'a Config, runner: &'a RecordingRunner) -> Engine<'a> {
    Engine {
        sys: Sys::new(r),
        ..Engine::new(c, runner)
    }
}

/// The dry run and attach cannot drift: for the same inputs, attach with
/// a recording runner runs, in order, exactly the commands and sysfs
/// writes the plan lists (placeholders filled in). A plain LUN and a
/// mirror with its local leg MISSING go through the whole of attach; a
/// mirror and one with its target MISSING through its checks and its walk
/// of the same step list (their local volume built by hand: a fake host
/// has no block device to resolve). The fake host has no md, so the
/// mirrors end at the check of the array they built.
#[test]
fn attach_does_what_the_plan_lists() {
    let opts = AttachOptions::default();
    // A plain LUN: the session and disk are shared, nothing is run.
    let d = tempfile::tempdir().expect("tempdir");
    let c = host(d.path());
    let runner = RecordingRunner::new();
    let e = engine(d.path(), &c, &runner);
    let plain = spec(&format!("lun1@{TARGET}"));
    let plan = e.plan(&plain, opts).expect("plan");
    assert_eq!(
        plan,
        vec![
            format!("reuse session 1 to {TARGET}"),
            "use the SCSI device 7:0:0:1 of LUN 1, already there".to_string(),
            format!(
                "wait for the block device of LUN 1 (uevents, {}s)",
                c.timeouts.device.as_secs()
            ),
            "hand out the LUN's block device".to_string(),
        ]
    );
    assert_eq!(e.attach(&plain).expect("attach"), PathBuf::from("/dev/sda"));
    assert_eq!(done(d.path(), &runner), commands(&plan), "{plan:#?}");

    // A mirror with its local leg MISSING: built from the LUN alone.
    let d = tempfile::tempdir().expect("tempdir");
    let c = host(d.path());
    let runner = RecordingRunner::new();
    let e = engine(d.path(), &c, &runner);
    let mirror = spec(&format!("lun1@{TARGET}+nolocal"));
    let plan = e.plan(&mirror, opts).expect("plan");
    assert_eq!(plan.last().expect("lines"), "hand out /dev/md/nolocal");
    let err = e.attach(&mirror).expect_err("no array in a fake sysfs");
    assert_eq!(err.step, crate::disk::Step::Build, "{err}");
    let did = to_build(done(d.path(), &runner));
    assert!(did.last().expect("ran").starts_with("mdadm --build"));
    assert_eq!(did, to_build(commands(&plan)), "{plan:#?}");

    // A mirror, and one with its target MISSING: with the local volume.
    for (s, last) in [
        (
            format!("lun1@{TARGET}+vm1"),
            "mdadm /dev/md/vm1 --add /dev/labvg/vm1",
        ),
        ("MISSING+vm1".to_string(), "hand out /dev/md/vm1"),
    ] {
        let d = tempfile::tempdir().expect("tempdir");
        let c = host(d.path());
        fs::create_dir_all(d.path().join("dev/labvg")).expect("mkdir");
        fs::write(d.path().join("dev/labvg/vm1"), "").expect("w");
        let runner = RecordingRunner::new();
        let e = engine(d.path(), &c, &runner);
        let s = spec(&s);
        let v = Volume {
            path: local(),
            kname: "dm-0".into(),
            size: 32 << 20,
            devnum: "253:0".into(),
            id: "dm:LVM-vm1".into(),
        };
        let verdict = e
            .judge_copies(&Asked {
                spec: &s,
                local: Some(&v),
                lun: spec_lun(&s),
                lun_size: None,
                defer_local: false,
            })
            .expect("verdict");
        let list = steps(&s, Some(&v.path), verdict.trust_local, opts);
        // What the dry run prints (it needs no local volume) is this list.
        let plan = e.plan(&s, opts).expect("plan");
        assert_eq!(
            plan,
            list.iter().flat_map(|a| e.lines(a)).collect::<Vec<_>>()
        );
        assert!(plan.contains(&last.to_string()), "{plan:#?}");
        e.take_checks(&list, Some(&v)).expect("checks");
        let walk = Walk {
            spec: &s,
            key: &key_of(&s),
            opts,
            local: Some(&v),
            open: None,
        };
        let mut att = attaching(&s, Some(local()), Some(&v));
        let err = e
            .take_steps(&walk, &list, &mut att, verdict, &mut Vec::new())
            .expect_err("no array in a fake sysfs");
        assert_eq!(err.0, crate::disk::Step::Build, "{}", err.1);
        let did = done(d.path(), &runner);
        assert!(did.last().expect("ran").starts_with("mdadm --build"));
        let want: Vec<String> = to_build(commands(&plan))
            .into_iter()
            .map(|l| l.replace("RECORDED_KIB", &(v.size / 1024).to_string()))
            .collect();
        assert_eq!(did, want, "{plan:#?}");
    }
}

/// On the simulated host (`--features sim`) attach runs to its end for
/// every kind of spec, a first login and LUN scan included.
#[cfg(feature = "sim")]
mod simulated {
    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use crate::config::Config;
    use crate::disk::{key_of, AttachOptions, Engine};
    use crate::runner::{Cmd, Output, Program, RunError, Runner};
    use crate::sim::model::{set_caller, Caller, Local, Lun, Target};
    use crate::sim::{Host, Model};
    use crate::spec::Spec;
    use crate::state::{LocalCopy, LunId, Newer};
    use crate::sysfs::{Kernel, Sys};

    const T: &str = "iqn.2024-01.sim:t1";
    const MIB: u64 = 1 << 20;

    /// The modelled kernel and programs, keeping the commands run and the
    /// attribute writes made through them, in order.
    #[derive(Debug)]
    struct Writes {
        host: Host,
        done: Mutex<Vec<String>>,
    }

    impl Kernel for Writes {
        fn read(&self, p: &Path) -> Option<String> {
            self.host.read(p)
        }
        fn list(&self, p: &Path) -> Vec<String> {
            self.host.list(p)
        }
        fn exists(&self, p: &Path) -> bool {
            self.host.exists(p)
        }
        fn opens(&self, p: &Path) -> bool {
            self.host.opens(p)
        }
        fn canonical(&self, p: &Path) -> Option<PathBuf> {
            Kernel::canonical(&self.host, p)
        }
        fn read_link(&self, p: &Path) -> Option<PathBuf> {
            self.host.read_link(p)
        }
        fn write(&self, p: &Path, value: &str) -> io::Result<()> {
            // As a shell would take it: quoted when it has blanks.
            let shown = if value.contains(' ') {
                format!("'{value}'")
            } else {
                value.to_string()
            };
            let line = format!("echo {shown} > {}", p.display());
            self.done.lock().expect("lock").push(line);
            self.host.write(p, value)
        }
        fn block_dev(&self, p: &Path) -> io::Result<Option<(u64, u64)>> {
            self.host.block_dev(p)
        }
        fn open_exclusive(&self, p: &Path) -> io::Result<()> {
            self.host.open_exclusive(p)
        }
        fn flush(&self, p: &Path) -> io::Result<()> {
            self.host.flush(p)
        }
        fn remove(&self, p: &Path) -> io::Result<()> {
            self.host.remove(p)
        }
        fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
            self.host.symlink(target, link)
        }
        fn boot_id(&self) -> String {
            self.host.boot_id()
        }
    }

    impl Runner for Writes {
        fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
            self.done.lock().expect("lock").push(cmd.display());
            self.host.run(cmd)
        }
        fn verify(&self, programs: &[Program]) -> Result<(), RunError> {
            self.host.verify(programs)
        }
        fn spawn_self_detached(&self, args: &[String]) -> Result<u32, RunError> {
            self.host.spawn_self_detached(args)
        }
    }

    /// A host with target T (LUN 1, 16 MiB), local volume /dev/vg/a
    /// (20 MiB) and the label table `vm1 /dev/vg/a`, `nolocal MISSING`.
    fn host(root: &Path) -> (Host, Config) {
        let mut model = Model {
            boot: 1,
            next_sid: 1,
            next_write: 1,
            root: root.to_path_buf(),
            ..Model::default()
        };
        model.targets.insert(
            T.into(),
            Target {
                iqn: T.into(),
                up: true,
                slow: false,
                chap: None,
            },
        );
        model.luns = vec![Lun {
            target: T.into(),
            lun: 1,
            wwid: "naa.611".into(),
            size: 16 * MIB,
            data: Default::default(),
        }];
        model.asked.insert((T.into(), 1));
        model.locals.insert(
            "a".into(),
            Local {
                name: "a".into(),
                minor: 0,
                uuid: "LVM-sima".into(),
                size: 20 * MIB,
                data: Default::default(),
                busy: false,
            },
        );
        std::fs::write(root.join("labels.conf"), "vm1 /dev/vg/a\nnolocal MISSING\n")
            .expect("table");
        // The bitmap file depends on the file system (FIBMAP): left out.
        let toml = format!(
            "label_table = \"{r}/labels.conf\"\nstate_dir = \"{r}/var/lib/iscsimple\"\nrun_dir = \"{r}/run/iscsimple\"\n\
             [discovery]\nportals = [\"127.0.0.1\"]\n\
             [md]\nbitmap = false\nsync_speed_min = 1000\nsync_speed_max = 90000\n",
            r = root.display()
        );
        let file = root.join("iscsimple.toml");
        std::fs::write(&file, toml).expect("config");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let config = Config::load(Some(&file)).expect("config");
        (Host::new(model), config)
    }

    /// Attach with a fresh host after its dry run: the plan's commands and
    /// sysfs writes (placeholders filled from the record and the model) and
    /// what attach ran and wrote, in order.
    fn run(s: &str, opts: AttachOptions, newer: bool) -> (Vec<String>, Vec<String>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (host, config) = host(dir.path());
        let kernel = Arc::new(Writes {
            host: host.clone(),
            done: Mutex::new(Vec::new()),
        });
        let sys = Sys::modelled(dir.path(), kernel.clone());
        let e = Engine::new(&config, kernel.as_ref()).with_sys(sys);
        let spec: Spec = s.parse().expect("spec");
        if newer {
            // The local volume's record: it holds writes the LUN lacks.
            e.durable
                .set_copy(&LocalCopy {
                    local_id: "dm:LVM-sima".into(),
                    local: "/dev/vg/a".into(),
                    label: "vm1".into(),
                    spec: s.to_string(),
                    lun: Some(LunId {
                        target: T.into(),
                        lun: 1,
                        wwid: Some("naa.611".into()),
                    }),
                    size: Some(16 * MIB),
                    newer: Some(Newer {
                        since: 0,
                        reason: "iSCSI leg faulty".into(),
                        spec: s.to_string(),
                    }),
                    behind: None,
                    clean_at: None,
                })
                .expect("record");
        }
        let plan = e.plan(&spec, opts).expect("plan");
        // Whom the model holds to its invariants.
        set_caller(Caller {
            spec: Some(spec.to_string()),
            op: "attach",
            specs: Vec::new(),
        });
        let device = e.attach_with(&spec, opts).expect("attach");
        assert_eq!(host.model().violations, vec![], "{s}");
        let a = e
            .store
            .load(&key_of(&spec))
            .expect("load")
            .expect("recorded");
        assert_eq!(a.device.as_ref(), Some(&device));
        assert_eq!(
            plan.last().expect("lines"),
            &match &spec.label {
                Some(l) => format!("hand out /dev/md/{l}"),
                None => "hand out the LUN's block device".to_string(),
            }
        );
        let mut fill: Vec<(&str, String)> = vec![("PORTAL", "127.0.0.1:3260".into())];
        if let Some(i) = &a.iscsi {
            fill.push(("ISCSI_DEV", format!("/dev/{}", i.kname)));
            fill.push(("LUN_KIB", (i.size / 1024).to_string()));
        }
        if let Some(m) = &a.mirror {
            fill.push(("mdN", m.kname.clone().expect("built")));
            fill.push(("RECORDED_KIB", (m.size.expect("sized") / 1024).to_string()));
        }
        let scsi_host = host.model().sessions.values().map(|s| s.host).next();
        if let Some(h) = scsi_host {
            fill.push(("hostN", format!("host{h}")));
        }
        let want = super::commands(&plan)
            .into_iter()
            .map(|l| fill.iter().fold(l, |l, (k, v)| l.replace(k, v)))
            .collect();
        let did = kernel
            .done
            .lock()
            .expect("lock")
            .iter()
            .filter(|c| !c.starts_with("mdadm --version"))
            .cloned()
            .collect();
        (want, did)
    }

    /// The dry run and attach cannot drift: on the simulated host, for a
    /// plain LUN, a mirror (and one migrating in: its local leg joins
    /// later; and one whose local leg holds newer data: built from it, the
    /// LUN added), a mirror whose local leg is MISSING and one whose target
    /// is MISSING, attach runs exactly the commands and sysfs writes its
    /// plan lists, in order, and breaks none of the model's invariants.
    #[test]
    fn attach_runs_what_its_plan_lists() {
        let plain = AttachOptions::default();
        let migrating = AttachOptions {
            defer_local: true,
            ..plain
        };
        let mirror = format!("lun1@{T}+vm1");
        for (s, opts, newer, add) in [
            (format!("lun1@{T}"), plain, false, None),
            (mirror.clone(), plain, false, Some("--add /dev/vg/a")),
            (mirror.clone(), migrating, false, None),
            (mirror, plain, true, Some("--add --write-mostly /dev/sd")),
            (format!("lun1@{T}+nolocal"), plain, false, None),
            ("MISSING+vm1".to_string(), plain, false, None),
        ] {
            let (want, did) = run(&s, opts, newer);
            assert_eq!(did, want, "{s} {opts:?} newer: {newer}");
            assert_eq!(
                did.iter().any(|c| c.contains("sync_speed_max")),
                s.contains('+')
            );
            let added = did.iter().find(|c| c.contains(" --add "));
            assert_eq!(added.is_some(), add.is_some(), "{did:#?}");
            if let (Some(c), Some(a)) = (added, add) {
                assert!(c.contains(a), "{c}");
            }
        }
    }
}
