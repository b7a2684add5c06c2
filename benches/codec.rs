//! Throughput of the codec's hot paths: what one core can parse, unmask and validate.
//!
//! `cargo bench --bench codec -- --measurement-time 3 --warm-up-time 1` for a quick run.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use wsloop::proto::frame::{encode_frame, FrameHeader, OpCode, Parsed, Role, MAX_HEADER_LEN};
use wsloop::proto::handshake::{header_storage, parse_request, HandshakeLimits, ParseStatus};
use wsloop::proto::mask::apply_mask;
use wsloop::proto::utf8::Utf8Validator;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const KIB64: usize = 64 << 10;

fn masked_frame(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut wire = vec![0u8; len + MAX_HEADER_LEN];
    let n = encode_frame(&mut wire, true, OpCode::Binary, &payload, Some(KEY)).expect("sized for the frame");
    wire.truncate(n);
    wire
}

/// Parse a client frame's header and unmask its payload in place, as a server does for
/// every frame. Unmasking twice is the identity, so the buffer can be reused.
fn frame_parse_unmask(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_parse_unmask");
    for len in [16usize, 1 << 10, KIB64] {
        let mut wire = masked_frame(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| {
                let Ok(Parsed::Complete(hdr, hlen)) = FrameHeader::parse(black_box(&wire), Role::Server, 0) else {
                    unreachable!("a complete masked frame")
                };
                let end = hlen + hdr.payload_len as usize;
                apply_mask(&mut wire[hlen..end], hdr.mask.unwrap_or_default(), 0);
                black_box(&wire);
            })
        });
    }
    group.finish();
}

fn mask_only(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_mask");
    let mut buf = vec![0x5au8; KIB64];
    group.throughput(Throughput::Bytes(KIB64 as u64));
    group.bench_function("64KiB", |b| b.iter(|| apply_mask(black_box(&mut buf), KEY, 0)));
    // The same bytes starting one past a word boundary, as a payload after a 6-byte header.
    let mut buf = vec![0x5au8; KIB64 + 1];
    group.bench_function("64KiB_unaligned", |b| b.iter(|| apply_mask(black_box(&mut buf[1..]), KEY, 0)));
    group.finish();
}

fn utf8(c: &mut Criterion) {
    let mut group = c.benchmark_group("utf8_validate");
    let ascii: Vec<u8> = b"Hello, WebSocket! ".iter().copied().cycle().take(KIB64).collect();
    let mut multi = "κόσμε 𝄞 中文 Grüße ".repeat(KIB64 / 16).into_bytes();
    multi.truncate(KIB64);
    while std::str::from_utf8(&multi).is_err() {
        multi.pop();
    }
    for (name, text) in [("ascii_64KiB", &ascii), ("multibyte_64KiB", &multi)] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                v.feed(black_box(text)).and_then(|_| v.finish()).expect("valid text");
            })
        });
    }
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let request = b"GET /chat?room=a HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    let limits = HandshakeLimits::default();
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(request.len() as u64));
    group.bench_function("parse_request", |b| {
        b.iter(|| {
            let mut headers = header_storage();
            let parsed = parse_request(black_box(request), &mut headers, &limits);
            assert!(matches!(parsed, Ok(ParseStatus::Complete(_, n)) if n == request.len()));
        })
    });
    group.finish();
}

criterion_group!(benches, frame_parse_unmask, mask_only, utf8, handshake);
criterion_main!(benches);
