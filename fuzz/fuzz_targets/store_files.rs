//! The directory store's file decoders (`tapestry_cluster::store::dir_format`)
//! on arbitrary bytes, as a damaged disk would hand them over: the event log,
//! a key file and the `state` file. Each must give a value or an error, never
//! a panic; what decodes must encode back to the same value; and the log
//! decoder's line offsets must lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapestry_cluster::store::dir_format::{
    decode_key_file, decode_lines, decode_log, decode_record, decode_state, encode_event,
    encode_key_file, encode_state,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = decode_log(data) {
        assert!(log.header_len <= log.consumed && log.consumed <= data.len());
        assert!(log.last_revision() >= log.compacted);
        let mut prev = log.compacted;
        for line in &log.lines {
            let end = line.offset + line.len;
            assert!(line.offset >= log.header_len && end < log.consumed);
            assert_eq!(data.get(end), Some(&b'\n'));
            if let Ok(ev) = &line.event {
                assert!(ev.revision() > prev, "records must be in sequence");
                prev = ev.revision();
                let again = encode_event(ev);
                let back = decode_record(again.strip_suffix(b"\n").unwrap_or(&again));
                assert_eq!(back.as_ref(), Ok(ev));
            }
        }
    }
    let (lines, consumed) = decode_lines(data, 0);
    assert!(consumed <= data.len());
    assert!(lines.iter().all(|l| l.offset + l.len < consumed));
    if let Ok((rev, value)) = decode_key_file(data) {
        assert_eq!(decode_key_file(&encode_key_file(rev, value)), Ok((rev, value)));
    }
    if let Ok(state) = decode_state(data) {
        assert!(state.compacted <= state.revision);
        assert_eq!(decode_state(&encode_state(&state)), Ok(state));
    }
});
