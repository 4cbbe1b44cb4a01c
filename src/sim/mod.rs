//! A simulated host for the engine (`sim` feature), after stratisd's
//! `SimEngine` and FoundationDB's simulator: the engine runs unchanged
//! against a modelled kernel and programs ([`model`]), under a virtual
//! clock, while a scheduler ([`sched`]) draws random sequences of calls,
//! kills, interleavings and host events from a seed and checks invariants
//! after every step. It proves the orchestration's logic over many paths;
//! what the kernel does is proven in the lab.
pub mod model;
pub mod sched;
pub mod world;

pub use model::{Host, Model, Violation};
pub use sched::{explore, run, sequence, setup, shrink, stats, Failure, Op};
pub use world::World;
