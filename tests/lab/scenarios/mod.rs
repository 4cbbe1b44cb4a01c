//! One file per behaviour.
mod attach;
mod chap;
mod crash;
mod demo;
mod doctor;
mod lab_fixture;
mod libvirt;
mod migration;
mod mirror;
mod package;
mod persist;
mod refusals;
mod resilience;
mod seed_flow;
mod status;
mod xen_hotplug;
mod xen_smoke;
