//! Two nodes syncing through their sessions (`blazedb_sync::fuzz::sessions`): the input picks
//! the steps (local writes, deliveries, duplicated messages, dropped connections, the clock,
//! a third node's operations, mode changes, barriers); then the run heals and both nodes
//! must hold the same operations, every one merged once, with no session closed in error
//! and every cursor at the peer's head.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blazedb_sync::fuzz::sessions(data);
});
