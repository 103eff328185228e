//! Feeds arbitrary bytes to both frame decoders, whole and split at every chunk size the
//! input suggests. The decoder must never panic, hang or buffer beyond a frame.
#![no_main]

use drmesh_protocol::codec::decode_exact;
use drmesh_protocol::{AgentMessage, CoordinatorMessage, FrameDecoder, MAX_FRAME_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_exact::<AgentMessage>(data);
    let _ = decode_exact::<CoordinatorMessage>(data);
    let chunk = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut dec = FrameDecoder::new();
    for piece in data.chunks(chunk) {
        dec.push(piece);
        loop {
            match dec.next_frame::<AgentMessage>() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(dec.buffered() <= MAX_FRAME_SIZE + 4 + chunk);
    }
    let _ = dec.finish();
});
