//! One file per behaviour.
mod attach;
mod chap;
mod demo;
mod lab_fixture;
mod mirror;
mod refusals;
mod seed_flow;
