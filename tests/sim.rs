//! The simulator (src/sim): random sequences of attach, detach, heal,
//! watch, kills, interleavings and host events against a modelled host,
//! with invariants checked after every step.
//!
//! `SIM_SEEDS=N` (default 20000) sequences from `SIM_FROM` (default 0);
//! `SIM_SEED=S` replays one seed and prints what each step did.
// Inside a test module: the crate lints tests_outside_test_module.
#[cfg(test)]
mod simulation {
    use std::time::Instant;

    use iscsimple::sim;

    fn env(k: &str) -> Option<u64> {
        std::env::var(k).ok().and_then(|v| v.parse().ok())
    }

    #[test]
    fn invariants_hold_over_random_sequences() {
        sim::setup();
        if let Some(seed) = env("SIM_SEED") {
            let ops = sim::sequence(seed);
            match sim::run(seed, &ops) {
                Some(f) => panic!("\n{}", sim::shrink(f)),
                None => {
                    let mut w = sim::World::new();
                    for op in &ops {
                        w.step(op);
                    }
                    for t in &w.trace {
                        println!("  - {t}");
                    }
                    println!("seed {seed}: {} steps, every invariant holds", ops.len());
                    return;
                }
            }
        }
        let count = env("SIM_SEEDS").unwrap_or(20_000);
        let from = env("SIM_FROM").unwrap_or(0);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let start = Instant::now();
        let (failure, steps) = sim::explore(from, count, threads);
        if let Some(f) = failure {
            panic!("\n{f}");
        }
        for ((call, outcome), n) in sim::stats() {
            println!("  {call:>7} {outcome:<8} {n}");
        }
        println!(
            "sim: {count} sequences ({steps} steps) from seed {from}, every invariant held, {:.1}s on {threads} threads",
            start.elapsed().as_secs_f64()
        );
    }
}
