//! Runs the `sessions` fuzz target's body (`blazedb_sync::fuzz::sessions`: two nodes, their
//! sessions, faults, then healing and convergence checks) on random byte strings, so that
//! `cargo test` exercises it without cargo-fuzz.
//!
//! 2,000 inputs normally, 100,000 with `BLAZEDB_LONG=1`; the seed is fixed, so a failure
//! reproduces, and the failing input is printed (feed it to `cargo fuzz run sessions` too).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::panic::{AssertUnwindSafe, catch_unwind};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn inputs() -> usize {
    if std::env::var("BLAZEDB_LONG").is_ok_and(|v| v == "1") {
        100_000
    } else {
        2_000
    }
}

/// A random input: mostly short runs, some long ones; biased towards the steps that move
/// things (deliveries and rounds) so that streams get somewhere between faults.
fn input(rng: &mut StdRng) -> Vec<u8> {
    let len = if rng.random_bool(0.8) {
        rng.random_range(1..64)
    } else {
        rng.random_range(64..400)
    };
    (0..len)
        .map(|_| {
            if rng.random_bool(0.4) {
                // A delivery, a round or a both-sides round, with a random parameter.
                let step = [2u8, 3, 6, 7, 15][rng.random_range(0..5)];
                step | (rng.random::<u8>() & 0xF0)
            } else {
                rng.random()
            }
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn two_nodes_converge_whatever_the_steps() {
    let mut rng = StdRng::seed_from_u64(0x5e55_1025);
    for n in 0..inputs() {
        let data = input(&mut rng);
        if catch_unwind(AssertUnwindSafe(|| blazedb_sync::fuzz::sessions(&data))).is_err() {
            panic!("input {n} failed: {}", hex(&data));
        }
    }
}

#[test]
fn empty_and_tiny_inputs_do_nothing_wrong() {
    blazedb_sync::fuzz::sessions(&[]);
    for b in 0..=255u8 {
        blazedb_sync::fuzz::sessions(&[b]);
        blazedb_sync::fuzz::sessions(&[0, b]);
        blazedb_sync::fuzz::sessions(&[7, b, b]);
    }
}
