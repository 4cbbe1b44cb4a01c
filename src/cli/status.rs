//! `iscsimple status [--json | --watch [--interval S]]`.
use std::io::{IsTerminal, Write};
use std::time::Duration;

use iscsimple::cluster;
use iscsimple::metrics;
use iscsimple::state::{Durable, Store};
use iscsimple::status::{self, Report};
use iscsimple::sysfs::Sys;

use super::{load_config, CmdResult, Failure};

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// One JSON object instead of the table (schema: doc/status.schema.json).
    #[arg(long, conflicts_with_all = ["watch", "prometheus"])]
    pub json: bool,
    /// Prometheus metrics (text format) instead of the table; `watch` can
    /// write the same to a file for node_exporter.
    #[arg(long, conflicts_with = "watch")]
    pub prometheus: bool,
    /// Redraw every --interval seconds with a progress bar per resync, until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between redraws with --watch.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 1.0,
        requires = "watch"
    )]
    pub interval: f64,
}

/// The metrics: the report and what `watch` counted.
pub(crate) fn metrics(config: &iscsimple::config::Config) -> Result<String, Failure> {
    let r = report(config)?;
    Ok(metrics::render(
        &r,
        &metrics::Counters::load(&config.run_dir),
    ))
}

fn report(config: &iscsimple::config::Config) -> Result<Report, Failure> {
    let mut r = status::report(
        &Sys::default(),
        &Store::new(&config.run_dir),
        &Durable::new(&config.state_dir),
    )
    .map_err(Failure::failed)?;
    name_xen_domains(&mut r);
    store(config, &mut r);
    Ok(r)
}

/// The disks' store: whether it answers, and its records.
fn store(config: &iscsimple::config::Config, r: &mut Report) {
    let records = cluster::open(
        config,
        &Store::new(&config.run_dir).lock_dir(),
        Duration::from_secs(2),
    );
    let (error, disks) = match records.all() {
        Ok(d) => (None, d.iter().map(status::DiskStatus::from).collect()),
        Err(e) => (Some(e.to_string()), Vec::new()),
    };
    r.store = Some(status::StoreStatus {
        store: records.describe(),
        host: cluster::host_id(config.cluster.host_id.as_deref()),
        error,
    });
    r.disks = disks;
}

/// Xen holders record domain ids; xenstore knows their names while they run.
fn name_xen_domains(r: &mut Report) {
    let mut xs = None;
    for v in r
        .attachments
        .iter_mut()
        .flat_map(|a| a.vms.iter_mut())
        .filter(|v| v.hypervisor == "xen" && v.name.is_none())
    {
        if xs.is_none() {
            match iscsimple::xen::xenstore::Xenstore::open() {
                Ok(x) => xs = Some(x),
                Err(_) => return,
            }
        }
        if let Some(x) = xs.as_mut() {
            v.name = x
                .read(
                    iscsimple::xen::xenstore::Tx::NONE,
                    &format!("/local/domain/{}/name", v.domain),
                )
                .ok()
                .flatten();
        }
    }
}

pub(crate) fn run(args: Args, config: Option<&std::path::Path>) -> CmdResult {
    let config = load_config(config)?;
    if args.json {
        let r = report(&config)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(Failure::failed)?
        );
        return Ok(());
    }
    if args.prometheus {
        print!("{}", metrics(&config)?);
        return Ok(());
    }
    if !args.watch {
        print!("{}", report(&config)?.text());
        return Ok(());
    }
    if !(args.interval.is_finite() && (0.1..=3600.0).contains(&args.interval)) {
        return Err(Failure::input(anyhow::anyhow!(
            "status: --interval must be between 0.1 and 3600 seconds"
        )));
    }
    let tty = std::io::stdout().is_terminal();
    let mut out = std::io::stdout();
    loop {
        let r = report(&config)?;
        let mut screen = String::new();
        // Home and clear on a terminal; one block after another elsewhere.
        if tty {
            screen.push_str("\x1b[H\x1b[2J");
        }
        screen.push_str(&format!(
            "iscsimple status, every {}s (Ctrl-C ends)\n\n{}",
            args.interval,
            r.text()
        ));
        let bars = r.progress(40);
        if !bars.is_empty() {
            screen.push_str(&format!("\nresync\n{bars}"));
        }
        if !tty {
            screen.push('\n');
        }
        // A closed pipe (`| head`) ends the watch.
        if out
            .write_all(screen.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs_f64(args.interval));
    }
}
