//! Decoding records (what consumers and the storage time index do) must fail
//! cleanly, never panic or allocate without bound, on any batch that passes
//! produce validation. The input's header fields are kept except the length,
//! magic and CRC, which are fixed up so the fuzzer reaches the record decoder.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use runnel_records::batch::{HEADER_LEN, validate_produced};

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let mut batch = data.to_vec();
    let len = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&len.to_be_bytes());
    batch[16] = 2;
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    if validate_produced(&batch).is_ok() {
        let _ = runnel_records::decode_records(Bytes::from(batch));
    }
});
