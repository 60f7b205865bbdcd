#![no_main]
//! `DeleteService`'s request bytes (see lb-server/tests/hostile/wire.rs for the input format).
use lb_fuzz::wire::{run, Rpc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    run(Rpc::DeleteService, data);
});
