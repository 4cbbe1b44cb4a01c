//! One file per behaviour.
mod attach;
mod bench;
mod chap;
mod crash;
mod demo;
mod lab_fixture;
mod libvirt;
mod migration;
mod mirror;
mod persist;
mod refusals;
mod resilience;
mod seed_flow;
mod xen_hotplug;
mod xen_smoke;
