//! Arbitrary scripts of operations on an engine with a small config (see the crate docs of
//! `mcp_stream_fuzz` for the script): connections opened, bytes fed in any split, output taken
//! in part or not at all, publishes, time moving on, toggles, shutdown. No panic; after every
//! step the driver's connections are exactly the engine's; closing everything at the end
//! brings every connection counter back to 0.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_stream_fuzz::Driver;

fuzz_target!(|data: &[u8]| {
    Driver::run_script(data);
});
