//! Any bytes a client sends as "batches" must be accepted or refused with a
//! `BatchError`, never panic, and accepted batches must re-validate after the
//! leader stamps its offset and epoch.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use runnel_records::batch::{Batches, set_base_offset, set_partition_leader_epoch, validate};

fuzz_target!(|data: &[u8]| {
    if let Ok(batches) = Batches::validate_all(Bytes::copy_from_slice(data)) {
        for (header, batch) in batches {
            assert_eq!(header.total_len(), batch.len());
            let mut stamped = batch.to_vec();
            set_base_offset(&mut stamped, 1234);
            set_partition_leader_epoch(&mut stamped, 7);
            let again = validate(&stamped).expect("stamping keeps a batch valid");
            assert_eq!(again.base_offset, 1234);
        }
    }
});
