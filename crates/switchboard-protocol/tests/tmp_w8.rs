use bytes::BytesMut;
use switchboard_protocol::{
    Role,
    codec::Encoder,
    deflate::DeflateParams,
    frame::{FrameHeader, OpCode},
};
#[test]
fn dump() {
    let p = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 8,
        client_max_window_bits: 8,
    };
    let mut enc = Encoder::new(Role::Server, Some(p), 0);
    let mut all = Vec::new();
    let mut payloads = Vec::new();
    let mut seed = 12345u64;
    for m in 0..50 {
        // Data with repeats at all distances up to 400.
        let mut data = Vec::new();
        for _ in 0..(2000 + m * 37) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (seed >> 33) as usize;
            if data.len() > 300 && r % 3 == 0 {
                let d = 1 + r % 300;
                let l = 3 + (r >> 10) % 20;
                for _ in 0..l {
                    let b = data[data.len() - d];
                    data.push(b);
                }
            } else {
                data.push(b'a' + (r % 26) as u8);
            }
        }
        let mut out = BytesMut::new();
        enc.encode(OpCode::Binary, &data, &mut out);
        let (h, n) = FrameHeader::parse(&out).unwrap().unwrap();
        all.extend_from_slice(&out[n..n + h.len as usize]);
        all.extend_from_slice(&[0, 0, 0xff, 0xff]);
        payloads.extend_from_slice(&data);
    }
    std::fs::write("/tmp/w8.deflate", &all).unwrap();
    std::fs::write("/tmp/w8.raw", &payloads).unwrap();
}
