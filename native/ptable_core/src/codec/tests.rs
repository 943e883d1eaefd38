use super::decompress::SIZE_CHECK_WINDOW;
use super::pool::{ContextPool, POOLED_CONTEXTS, POOLED_CONTEXT_BYTES};
use super::*;
use zstd::zstd_safe::{CCtx, CParameter, InBuffer, OutBuffer};

fn chunks() -> Vec<Vec<u8>> {
    (0..4u32)
        .map(|c| {
            (0..50_000u32)
                .flat_map(|i| ((i * (c + 1)) % 251).to_le_bytes())
                .collect()
        })
        .chain(std::iter::once(Vec::new()))
        .collect()
}

/// Decodes `frames` in order with `d`, as the reader does: straight into each chunk's
/// buffer, or (`staged`) first checked with `decompresses_to`, as the reader does for a
/// frame whose size is out of proportion to its stored bytes.
fn decode_all(
    d: &mut Decompressor,
    frames: &[(Vec<u8>, usize)],
    staged: bool,
) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for (stored, len) in frames {
        if staged && !d.decompresses_to(stored, *len as u64) {
            return None;
        }
        let mut buf = vec![0u8; *len];
        if !d.decompress_exact(stored, &mut buf) {
            return None;
        }
        out.push(buf);
    }
    Some(out)
}

#[test]
fn every_level_round_trips_in_order_and_after_a_reset() {
    let raw = chunks();
    for level in 0..=9u8 {
        let mut c = Compressor::new(level).unwrap();
        assert!(writes_codec(level, c.codec()));
        let frames: Vec<(Vec<u8>, usize)> = raw
            .iter()
            .map(|r| {
                let mut stored = Vec::new();
                c.compress_into(r, &mut stored).unwrap();
                (stored, r.len())
            })
            .collect();
        if level > 0 {
            let stored: usize = frames.iter().map(|f| f.0.len()).sum();
            assert!(stored < raw.iter().map(Vec::len).sum::<usize>() / 4);
        }
        let mut d = Decompressor::for_codec(c.codec()).unwrap();
        for staged in [false, true, false] {
            assert_eq!(decode_all(&mut d, &frames, staged).as_ref(), Some(&raw));
            d.reset();
        }
        // A wrong length is refused, one byte short or one too many, in any frame.
        for (frame, delta) in [(0, -1), (0, 1), (2, -1), (2, 1)] {
            for staged in [false, true] {
                d.reset();
                let mut wrong = frames.clone();
                wrong[frame].1 = wrong[frame].1.checked_add_signed(delta).unwrap();
                let what = format!("level {level} frame {frame} {delta:+} staged {staged}");
                assert_eq!(decode_all(&mut d, &wrong, staged), None, "{what}");
            }
        }
    }
}

/// Feeds `raw` to `cctx` as one flushed chunk of a stream.
fn flush_chunk(cctx: &mut CCtx, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(raw.len()) + 64);
    let mut input = InBuffer::around(raw);
    let mut output = OutBuffer::around(&mut out);
    let end = zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush;
    while cctx.compress_stream2(&mut output, &mut input, end).unwrap() != 0 {}
    out
}

#[test]
fn pooled_contexts_left_mid_stream_come_back_reset() {
    // A persist or restore that failed half way drops its context in the middle of a
    // zstd frame (and with its own settings); the next file must start afresh. A pool
    // of this test's own, so that no other test takes the context in between.
    let raw = chunks();
    let cctxs = ContextPool::new();
    let mut cctx = cctxs.cctx().unwrap();
    cctx.set_parameter(CParameter::CompressionLevel(19))
        .unwrap();
    let first = flush_chunk(&mut cctx, &raw[0]);
    cctxs.give(cctx, 0);

    let dctxs = ContextPool::new();
    let mut dctx = dctxs.limited_dctx().unwrap();
    let mut out = vec![0u8; raw[0].len()];
    let mut input = InBuffer::around(&first);
    dctx.decompress_stream(&mut OutBuffer::around(&mut out[..]), &mut input)
        .unwrap();
    dctxs.give(dctx, 0);

    // Both come back: a new stream through them round trips.
    let mut cctx = cctxs.cctx().unwrap();
    assert!(cctxs.take().is_none());
    let again = flush_chunk(&mut cctx, &raw[1]);
    let mut dctx = dctxs.limited_dctx().unwrap();
    assert!(dctxs.take().is_none());
    let mut out = vec![0u8; raw[1].len()];
    let mut output = OutBuffer::around(&mut out[..]);
    dctx.decompress_stream(&mut output, &mut InBuffer::around(&again))
        .unwrap();
    assert_eq!(output.pos(), raw[1].len());
    assert_eq!(out, raw[1]);
}

#[test]
fn only_small_contexts_are_pooled_and_only_a_few() {
    let pool = ContextPool::new();
    pool.give(usize::MAX, POOLED_CONTEXT_BYTES + 1);
    assert!(pool.take().is_none());
    for i in 0..POOLED_CONTEXTS + 3 {
        pool.give(i, POOLED_CONTEXT_BYTES);
    }
    let kept = std::iter::from_fn(|| pool.take()).count();
    assert_eq!(kept, POOLED_CONTEXTS);
}

#[test]
fn independent_frames_are_still_read() {
    let raw = chunks();
    let mut d = Decompressor::for_codec(CODEC_ZSTD).unwrap();
    for r in &raw {
        let stored = zstd::bulk::compress(r, 3).unwrap();
        let mut out = vec![0u8; r.len()];
        assert!(d.decompress_exact(&stored, &mut out));
        assert_eq!(&out, r);
    }
}

#[test]
fn size_check_in_bounded_memory() {
    // Sizes around multiples of the check's window, and a chunk compressing 30000:1.
    for len in [
        0usize,
        1,
        SIZE_CHECK_WINDOW,
        SIZE_CHECK_WINDOW + 1,
        8 << 20,
        24 << 20,
    ] {
        let raw = vec![0u8; len];
        let n = len as u64;
        let independent = zstd::bulk::compress(&raw, 3).unwrap();
        let mut d = Decompressor::for_codec(CODEC_ZSTD).unwrap();
        assert!(d.decompresses_to(&independent, n), "len {len}");
        assert!(!d.decompresses_to(&independent, n + 1), "len {len}");
        if len > 0 {
            assert!(!d.decompresses_to(&independent, n - 1), "len {len}");
            let cut = &independent[..independent.len() - 1];
            assert!(!d.decompresses_to(cut, n), "len {len}");
        }
        for level in 0..=9u8 {
            let mut c = Compressor::new(level).unwrap();
            let mut stored = Vec::new();
            c.compress_into(&raw, &mut stored).unwrap();
            let mut d = Decompressor::for_codec(c.codec()).unwrap();
            let mut check = |stored: &[u8], claim: u64| {
                d.reset();
                d.decompresses_to(stored, claim)
            };
            assert!(check(&stored, n), "len {len} level {level}");
            assert!(!check(&stored, n + 1), "len {len} level {level}");
            assert!(!check(&stored, u64::MAX), "len {len} level {level}");
            if len > 0 {
                assert!(!check(&stored, n - 1), "len {len} level {level}");
                let cut = &stored[..stored.len() - 1];
                assert!(!check(cut, n), "len {len} level {level}");
            }
        }
    }
}

#[test]
fn unknown_codec_is_refused() {
    assert!(Decompressor::for_codec(9).is_none());
}
