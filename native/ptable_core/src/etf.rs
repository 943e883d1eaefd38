//! The one part of Erlang's external term format that restore handles itself. A term
//! written with `term_to_binary(term, compressed: level)`, as property_table writes its
//! files, is tag 80, the uncompressed size and a zlib stream; `enif_binary_to_term`
//! decodes only uncompressed terms, so such a payload is inflated here first.

use std::borrow::Cow;

/// Every external term starts with this version byte.
pub(crate) const VERSION_MAGIC: u8 = 131;
/// `COMPRESSED`: a 4-byte big-endian uncompressed size, then a zlib stream of the term.
pub(crate) const COMPRESSED: u8 = 80;
/// Deflate cannot expand data more than about 1032 times, so a larger claimed size is a
/// lie; checking it keeps a damaged header from asking for gigabytes.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// `term` unchanged when it is not a compressed external term; otherwise the same term
/// uncompressed (version byte, then the inflated bytes). `None` when a compressed term's
/// size is implausible or its zlib stream is damaged, truncated or of another size than it
/// claims. Memory grows with the output actually inflated (at most about twice it), never
/// with the size a damaged header claims.
pub fn uncompressed_term(term: &[u8]) -> Option<Cow<'_, [u8]>> {
    let [VERSION_MAGIC, COMPRESSED, s0, s1, s2, s3, stream @ ..] = term else {
        return Some(Cow::Borrowed(term));
    };
    let size = u32::from_be_bytes([*s0, *s1, *s2, *s3]);
    if u64::from(size) > MAX_DEFLATE_RATIO * (stream.len() as u64 + 1) {
        return None;
    }
    let size = usize::try_from(size).ok()?;
    let mut out = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(stream, size).ok()?;
    if out.len() != size {
        return None;
    }
    out.insert(0, VERSION_MAGIC);
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// `term_to_binary([{["net", "eth0"], List.duplicate(:up, 20)}], compressed: 6)` and
    /// the same term uncompressed, from Erlang/OTP 25.
    const ERLANG_COMPRESSED: &str = "835000000089789CCB61606060CC60CA01524CB94082392FB50444B3A4\
        966418648184455218984A0B684C64650100F14D2079";
    const ERLANG_PLAIN: &str = "836C0000000168026C000000026D000000036E65746D000000046574683\
        06A6C00000014640002757064000275706400027570640002757064000275706400027570640002757064\
        0002757064000275706400027570640002757064000275706400027570640002757064000275706400027\
        57064000275706400027570640002757064000275706A6A";

    #[test]
    fn inflates_what_erlang_compressed() {
        let compressed = hex(ERLANG_COMPRESSED);
        let plain = hex(ERLANG_PLAIN);
        assert_eq!(uncompressed_term(&compressed).as_deref(), Some(&plain[..]));
        // An uncompressed term comes back as it is, without a copy.
        assert!(matches!(uncompressed_term(&plain), Some(Cow::Borrowed(p)) if p == &plain[..]));
        assert!(matches!(uncompressed_term(&[]), Some(Cow::Borrowed(&[]))));
    }

    #[test]
    fn refuses_damaged_compressed_terms() {
        let good = hex(ERLANG_COMPRESSED);
        let with_size = |size: u32| {
            let mut t = good.clone();
            t[2..6].copy_from_slice(&size.to_be_bytes());
            t
        };
        assert_eq!(
            uncompressed_term(&with_size(0x88)),
            None,
            "claims one byte less"
        );
        assert_eq!(
            uncompressed_term(&with_size(0x8A)),
            None,
            "claims one byte more"
        );
        assert_eq!(
            uncompressed_term(&with_size(u32::MAX)),
            None,
            "implausible size"
        );
        for cut in 6..good.len() {
            assert_eq!(uncompressed_term(&good[..cut]), None, "truncated at {cut}");
        }
        // A flipped bit is caught (zlib's own checks, adler32 of the output) or changes
        // nothing (an unused padding bit): never other bytes.
        let plain = hex(ERLANG_PLAIN);
        for i in 6..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                let out = uncompressed_term(&bad);
                assert!(
                    out.is_none() || out.as_deref() == Some(&plain[..]),
                    "bit {bit} of byte {i}"
                );
            }
        }
        // A header with no room for the size is not a compressed term at all.
        assert!(matches!(
            uncompressed_term(&[131, 80, 0]),
            Some(Cow::Borrowed(_))
        ));
    }
}
