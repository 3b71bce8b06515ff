//! One request of an API key and version the edge serves, chosen by the
//! first two input bytes; the third says whether the edge gets a well-formed
//! request header (so the rest is all body) or the raw bytes after the
//! fixed header fields. Parsing must refuse or accept, never panic or
//! allocate by an unchecked count; an accepted request must be of the API
//! and version asked for. The first byte indexes `SUPPORTED`, whose order
//! is kept (new APIs go at the end) so saved inputs keep their meaning.
#![no_main]

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::RequestHeader;
use kafka_protocol::protocol::{Encodable, StrBytes};
use libfuzzer_sys::fuzz_target;
use runnel_edge::frame::{Parsed, SUPPORTED, parse_request};

fuzz_target!(|data: &[u8]| {
    let [pick, v, mode, rest @ ..] = data else {
        return;
    };
    let (api, min, max) = SUPPORTED[*pick as usize % SUPPORTED.len()];
    let span = (max - min + 1) as u8;
    let version = min + (v % span) as i16;
    let mut frame = BytesMut::new();
    if mode & 1 == 0 {
        frame.put_i16(api as i16);
        frame.put_i16(version);
        frame.put_i32(1);
    } else {
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(1)
            .with_client_id(Some(StrBytes::from_static_str("fuzz")));
        if header
            .encode(&mut frame, api.request_header_version(version))
            .is_err()
        {
            return;
        }
    }
    frame.extend_from_slice(rest);
    if let Ok(Parsed::Request {
        api: got,
        version: got_version,
        ..
    }) = parse_request(frame.freeze())
    {
        assert_eq!((got, got_version), (api, version));
    }
});
