//! Lab scenarios: compiled on the host, run as root inside the lab VM, one VM
//! per scenario (`tests/lab/lab.sh`, `make test`). They drive the real kernel
//! (iSCSI initiator, tgt and LIO targets, md, LVM) and never fake it: a
//! scenario that cannot do something for real fails.
//!
//! Every scenario is named `lab_*`, calls [`fixture::Lab::start`] first (which
//! refuses to run outside the lab VM) and brands what it creates with `lab`.
#![allow(clippy::tests_outside_test_module)]

mod fixture;
mod scenarios;
#[path = "../support/schema.rs"]
mod schema;
