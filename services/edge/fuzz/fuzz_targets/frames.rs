//! A connection's bytes, as the edge reads them: length-prefixed frames,
//! each parsed (header, schema guard, `kafka-protocol` decode). Any input
//! must end in frames, a clean end of stream or an error — never a panic, a
//! hang or an allocation sized by a length or count the input claims.
#![no_main]

use futures::executor::block_on;
use libfuzzer_sys::fuzz_target;
use runnel_edge::frame::{parse_request, read_frame};

/// Small enough that the fuzzer reaches the "frame too large" path.
const MAX_FRAME: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    // Every frame consumes at least 4 bytes, so this ends.
    while let Ok(Some(frame)) = block_on(read_frame(&mut reader, MAX_FRAME)) {
        assert!(frame.len() <= MAX_FRAME);
        let _ = parse_request(frame);
    }
});
