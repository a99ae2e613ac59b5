//! PROXY protocol headers (v1 and v2) on arbitrary bytes: parsing never panics; a
//! complete header's length is within the input and the bounds; every strict prefix of
//! it is partial; bytes after it do not change it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::proxy::{parse, Parsed, V1_MAX_LEN, V2_HEAD_LEN, V2_MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let Ok(Parsed::Complete { header, len }) = parse(data) else {
        return;
    };
    assert!(len <= data.len());
    match header.version {
        1 => assert!(len <= V1_MAX_LEN),
        2 => assert!(len <= V2_HEAD_LEN + V2_MAX_PAYLOAD),
        v => panic!("version {v}"),
    }
    for n in 0..len {
        assert_eq!(parse(&data[..n]), Ok(Parsed::Partial), "prefix of {n}");
    }
    assert_eq!(parse(&data[..len]), Ok(Parsed::Complete { header, len }));
});
