//! `iscsimple generate-assets DIR` (hidden): the man pages and shell
//! completions, generated from the same clap definitions as `--help` so
//! that they cannot drift apart. `make assets` runs it; `make install` and
//! the Debian package ship DIR's files.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

use super::{CmdResult, Failure};

/// Arguments of `generate-assets`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Output directory (man/ and completions/ are made in it).
    pub dir: PathBuf,
}

/// Sections of iscsimple(8) that `--help` has no room for; roff text.
const EXTRA: &str = r#".SH "EXIT STATUS"
.TP
.B 0
success (doctor: every check passed or does not apply)
.TP
.B 1
the operation failed, and what this call did was rolled back (doctor: a check failed)
.TP
.B 2
bad usage or input (unknown label, unusable local volume, malformed spec, table or config); nothing was changed
.SH FILES
.TP
.I /etc/iscsimple/iscsimple.toml
configuration (every key optional; a missing file means defaults)
.TP
.I /etc/xen/scripts/block-iscsimple-tab.conf
label table: LABEL DEVICE lines naming the local leg of each mirror
.TP
.I /etc/xen/scripts/block-iscsimple
Xen block hotplug script (disk = [ 'script=block-iscsimple,vdev=xvda,access=w,target=SPEC' ])
.TP
.I /etc/libvirt/hooks/qemu.d/iscsimple
libvirt qemu hook (disks listed in the domain metadata)
.TP
.I /run/iscsimple
what is attached now, holders, locks
.TP
.I /var/lib/iscsimple
local volumes' records (LUN, disk size, newer data), open records, write-intent bitmaps (kept across reboots)
.SH LOGGING
On a terminal, logs go to stderr (\fB\-v\fR, \fB\-q\fR). Without one (run by xl, libvirt or systemd) they go to journald, with the spec and domain as fields (\fBjournalctl \-t iscsimple DOMAIN=vm1\fR), or to syslog (facility daemon, tag iscsimple) where journald does not run. Standard output carries only the result.
.SH "SEE ALSO"
.BR iscsiadm (8),
.BR mdadm (8),
.BR lvm.conf (5),
.BR mdadm.conf (5),
.BR xl-disk-configuration (5),
/usr/share/doc/iscsimple/README.md
"#;

fn man(cmd: &clap::Command, dir: &Path, extra: bool) -> std::io::Result<()> {
    let m = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("iscsimple {}", env!("CARGO_PKG_VERSION")));
    let mut f = fs::File::create(dir.join(m.get_filename()))?;
    m.render_title(&mut f)?;
    m.render_name_section(&mut f)?;
    m.render_synopsis_section(&mut f)?;
    m.render_description_section(&mut f)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        m.render_options_section(&mut f)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        m.render_subcommands_section(&mut f)?;
    }
    if extra {
        f.write_all(EXTRA.as_bytes())?;
    }
    if cmd.get_version().is_some() {
        m.render_version_section(&mut f)?;
    }
    f.flush()
}

fn generate(dir: &Path) -> std::io::Result<()> {
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mans = dir.join("man");
    fs::create_dir_all(&mans)?;
    man(&cmd, &mans, true)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man(sub, &mans, false)?;
    }
    let comps = dir.join("completions");
    fs::create_dir_all(&comps)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "iscsimple", &comps)?;
    }
    Ok(())
}

pub(crate) fn run(args: Args) -> CmdResult {
    generate(&args.dir).map_err(|e| {
        Failure::failed(
            anyhow::Error::from(e).context(format!("generate-assets {}", args.dir.display())),
        )
    })
}
