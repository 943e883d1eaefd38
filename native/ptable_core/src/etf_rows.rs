//! Where each `{property, value}` pair of a chunk starts and ends, without decoding terms.
//!
//! A chunk is `:erlang.term_to_binary(pairs)` of a list of 2-tuples: the version byte 131,
//! then `LIST_EXT` (or `NIL_EXT` for no pairs). The change index hashes the bytes of each
//! pair and of its property, and the change log copies changed pairs byte for byte, so all
//! that is needed is each element's span. Every tag of the external term format that
//! `term_to_binary` writes (and the older ones `binary_to_term` still reads) is skipped by
//! its length fields; nothing is allocated from a claimed length, and a claimed count only
//! drives a loop that consumes at least one input byte per step, so a chunk costs time
//! linear in its length whatever it claims.
//!
//! Nesting is walked with an explicit stack (no recursion). A term in the last position of
//! its container (the tail of a list, the last element of a tuple) takes no stack frame, so
//! chains like `{1, {2, {3, ...}}}` cost nothing; other nesting deeper than [`MAX_DEPTH`]
//! is refused with [`EtfErrorKind::TooDeep`] (the persist then writes a full file, which
//! needs no walking).
//!
//! Refused as well: compressed terms (tag 80; chunks are never compressed by the wrapper,
//! and `etf::uncompressed_term` inflates legacy payloads), the old `FUN_EXT` (no longer
//! decoded by the VM since OTP 23), distribution-only tags (atom cache references) and
//! OTP 26's node-local encoding (`LOCAL_EXT`).

use crate::etf::{COMPRESSED, VERSION_MAGIC};
use std::fmt;
use std::ops::Range;

const NEW_FLOAT_EXT: u8 = 70;
const BIT_BINARY_EXT: u8 = 77;
const NEW_PID_EXT: u8 = 88;
const NEW_PORT_EXT: u8 = 89;
const NEWER_REFERENCE_EXT: u8 = 90;
const SMALL_INTEGER_EXT: u8 = 97;
const INTEGER_EXT: u8 = 98;
const FLOAT_EXT: u8 = 99;
const ATOM_EXT: u8 = 100;
const REFERENCE_EXT: u8 = 101;
const PORT_EXT: u8 = 102;
const PID_EXT: u8 = 103;
const SMALL_TUPLE_EXT: u8 = 104;
const LARGE_TUPLE_EXT: u8 = 105;
const NIL_EXT: u8 = 106;
const STRING_EXT: u8 = 107;
const LIST_EXT: u8 = 108;
const BINARY_EXT: u8 = 109;
const SMALL_BIG_EXT: u8 = 110;
const LARGE_BIG_EXT: u8 = 111;
const NEW_FUN_EXT: u8 = 112;
const EXPORT_EXT: u8 = 113;
const NEW_REFERENCE_EXT: u8 = 114;
const SMALL_ATOM_EXT: u8 = 115;
const MAP_EXT: u8 = 116;
const ATOM_UTF8_EXT: u8 = 118;
const SMALL_ATOM_UTF8_EXT: u8 = 119;
const V4_PORT_EXT: u8 = 120;

/// Deepest nesting walked (terms in the last position of their container do not count).
/// A frame is 16 bytes, so the walk's stack stays under 1 MiB.
pub const MAX_DEPTH: usize = 1 << 16;

/// What is wrong with a chunk, and at which byte offset it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtfError {
    pub kind: EtfErrorKind,
    pub offset: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtfErrorKind {
    /// The chunk does not start with the version byte 131.
    NoVersion,
    /// A compressed term (tag 80): inflate it first (`etf::uncompressed_term`).
    Compressed,
    /// The chunk's term is not a list (nor the empty list).
    NotAList,
    /// An element of the list is not a 2-tuple.
    NotAPair,
    /// The list's tail is not `[]`.
    ImproperList,
    /// Bytes follow the chunk's term.
    TrailingBytes,
    /// A term runs past the end of the input.
    Truncated,
    /// A tag this walker does not skip (see the module documentation).
    UnknownTag(u8),
    /// The node of a pid, port or reference is not an atom.
    NotAnAtom,
    /// A `NEW_FUN_EXT` whose `Size` field disagrees with its contents.
    BadFunSize,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl fmt::Display for EtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} at byte {}", self.kind, self.offset)
    }
}

impl std::error::Error for EtfError {}

type Walk<T> = std::result::Result<T, EtfError>;

fn error(kind: EtfErrorKind, offset: usize) -> EtfError {
    EtfError { kind, offset }
}

/// One element of a chunk: the bytes of the whole `{property, value}` tuple (from its tag)
/// and of its property, as slices of the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair<'a> {
    /// Offset of the pair's first byte in the chunk.
    pub offset: usize,
    /// Offset of the property's first byte in the chunk.
    pub property_offset: usize,
    pub bytes: &'a [u8],
    pub property: &'a [u8],
}

impl Pair<'_> {
    /// The pair's and its property's byte ranges in the chunk.
    pub fn spans(&self) -> (Range<usize>, Range<usize>) {
        (
            self.offset..self.offset + self.bytes.len(),
            self.property_offset..self.property_offset + self.property.len(),
        )
    }
}

/// Pending terms of one enclosing container, and for a `NEW_FUN_EXT` the offset where its
/// `Size` says it ends ([`NO_END`] otherwise).
#[derive(Debug, Clone, Copy)]
struct Frame {
    remaining: u64,
    end: usize,
}

const NO_END: usize = usize::MAX;

/// Reusable walking state: the stack is kept between terms so that walking a chunk
/// allocates once at most.
#[derive(Debug, Default)]
struct Walker {
    stack: Vec<Frame>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Walk<u8> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| error(EtfErrorKind::Truncated, self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Walk<[u8; N]> {
        let end = self.checked_end(N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self) -> Walk<u64> {
        Ok(u64::from(u16::from_be_bytes(self.array()?)))
    }

    fn u32(&mut self) -> Walk<u64> {
        Ok(u64::from(u32::from_be_bytes(self.array()?)))
    }

    /// The offset `n` bytes ahead, if the input has them.
    fn checked_end(&self, n: u64) -> Walk<usize> {
        usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| error(EtfErrorKind::Truncated, self.pos))
    }

    fn skip(&mut self, n: u64) -> Walk<()> {
        self.pos = self.checked_end(n)?;
        Ok(())
    }

    /// Skips the atom naming the node of a pid, port or reference.
    fn skip_node(&mut self) -> Walk<()> {
        let at = self.pos;
        let len = match self.u8()? {
            ATOM_EXT | ATOM_UTF8_EXT => self.u16()?,
            SMALL_ATOM_EXT | SMALL_ATOM_UTF8_EXT => u64::from(self.u8()?),
            _ => return Err(error(EtfErrorKind::NotAnAtom, at)),
        };
        self.skip(len)
    }

    /// Reads one term's tag and fixed part, skipping a leaf entirely. Returns how many
    /// terms follow as its contents and, for a `NEW_FUN_EXT`, where it must end.
    fn term_header(&mut self) -> Walk<(u64, usize)> {
        let at = self.pos;
        let none = |n: u64| Ok((n, NO_END));
        match self.u8()? {
            SMALL_INTEGER_EXT => self.skip(1).and(none(0)),
            INTEGER_EXT => self.skip(4).and(none(0)),
            FLOAT_EXT => self.skip(31).and(none(0)),
            NEW_FLOAT_EXT => self.skip(8).and(none(0)),
            ATOM_EXT | ATOM_UTF8_EXT | STRING_EXT => {
                let n = self.u16()?;
                self.skip(n).and(none(0))
            }
            SMALL_ATOM_EXT | SMALL_ATOM_UTF8_EXT => {
                let n = u64::from(self.u8()?);
                self.skip(n).and(none(0))
            }
            BINARY_EXT => {
                let n = self.u32()?;
                self.skip(n).and(none(0))
            }
            BIT_BINARY_EXT => {
                let n = self.u32()?;
                self.skip(n + 1).and(none(0))
            }
            SMALL_BIG_EXT => {
                let n = u64::from(self.u8()?);
                self.skip(n + 1).and(none(0))
            }
            LARGE_BIG_EXT => {
                let n = self.u32()?;
                self.skip(n + 1).and(none(0))
            }
            NIL_EXT => none(0),
            SMALL_TUPLE_EXT => none(u64::from(self.u8()?)),
            LARGE_TUPLE_EXT => none(self.u32()?),
            MAP_EXT => none(2 * self.u32()?),
            // The elements, then the tail.
            LIST_EXT => none(self.u32()? + 1),
            PID_EXT => self.skip_node().and(self.skip(9)).and(none(0)),
            NEW_PID_EXT => self.skip_node().and(self.skip(12)).and(none(0)),
            PORT_EXT => self.skip_node().and(self.skip(5)).and(none(0)),
            NEW_PORT_EXT => self.skip_node().and(self.skip(8)).and(none(0)),
            V4_PORT_EXT => self.skip_node().and(self.skip(12)).and(none(0)),
            REFERENCE_EXT => self.skip_node().and(self.skip(5)).and(none(0)),
            NEW_REFERENCE_EXT => {
                let ids = self.u16()?;
                self.skip_node()?;
                self.skip(1 + 4 * ids).and(none(0))
            }
            NEWER_REFERENCE_EXT => {
                let ids = self.u16()?;
                self.skip_node()?;
                self.skip(4 + 4 * ids).and(none(0))
            }
            // Module, function, arity.
            EXPORT_EXT => none(3),
            NEW_FUN_EXT => {
                // `Size` counts itself and everything after it.
                let size = self.u32()?;
                let end = (self.pos - 4)
                    .checked_add(usize::try_from(size).unwrap_or(usize::MAX))
                    .filter(|&end| end <= self.bytes.len() && size >= 29)
                    .ok_or_else(|| error(EtfErrorKind::BadFunSize, at))?;
                // Arity, Uniq, Index.
                self.skip(1 + 16 + 4)?;
                let free = self.u32()?;
                // Module, OldIndex, OldUniq, Pid, then the free variables.
                Ok((4 + free, end))
            }
            COMPRESSED => Err(error(EtfErrorKind::Compressed, at)),
            tag => Err(error(EtfErrorKind::UnknownTag(tag), at)),
        }
    }
}

impl Walker {
    /// The offset just past the term that starts at `start`.
    fn skip_term(&mut self, bytes: &[u8], start: usize) -> Walk<usize> {
        let mut cursor = Cursor { bytes, pos: start };
        let stack = &mut self.stack;
        stack.clear();
        stack.push(Frame {
            remaining: 1,
            end: NO_END,
        });
        loop {
            while let Some(&Frame { remaining: 0, end }) = stack.last() {
                if end != NO_END && end != cursor.pos {
                    return Err(error(EtfErrorKind::BadFunSize, cursor.pos));
                }
                stack.pop();
            }
            let Some(top) = stack.last_mut() else {
                return Ok(cursor.pos);
            };
            top.remaining -= 1;
            if top.remaining == 0 && top.end == NO_END {
                // The term about to be read is the container's last: once it is read, the
                // container is, so its frame can go now (this keeps tail chains flat).
                stack.pop();
            }
            let (contents, end) = cursor.term_header()?;
            if contents > 0 || end != NO_END {
                if stack.len() >= MAX_DEPTH {
                    return Err(error(EtfErrorKind::TooDeep, cursor.pos));
                }
                stack.push(Frame {
                    remaining: contents,
                    end,
                });
            }
        }
    }

    /// The pair (a 2-tuple) starting at `start`, and the offset of its value.
    fn pair_at<'a>(&mut self, bytes: &'a [u8], start: usize) -> Walk<Pair<'a>> {
        let header_len = match bytes.get(start..) {
            Some([SMALL_TUPLE_EXT, 2, ..]) => 2,
            Some([LARGE_TUPLE_EXT, 0, 0, 0, 2, ..]) => 5,
            _ => return Err(error(EtfErrorKind::NotAPair, start)),
        };
        let property_start = start + header_len;
        let property_end = self.skip_term(bytes, property_start)?;
        let end = self.skip_term(bytes, property_end)?;
        Ok(Pair {
            offset: start,
            property_offset: property_start,
            bytes: &bytes[start..end],
            property: &bytes[property_start..property_end],
        })
    }
}

/// The pairs of a chunk, in order. The iterator yields an error (and then stops) at the
/// first element that is not a well-formed pair, and after the last pair checks that the
/// list ends with `[]` and nothing follows it: a chunk is well formed only when the
/// iterator ran to its end without an error.
#[derive(Debug)]
pub struct Pairs<'a> {
    chunk: &'a [u8],
    pos: usize,
    left: u64,
    claimed: u64,
    /// The chunk is a `LIST_EXT` (whose tail must follow the last element).
    is_list: bool,
    done: bool,
    walker: Walker,
}

/// Starts walking `chunk`, the external term format of a list of `{property, value}` pairs.
pub fn pairs(chunk: &[u8]) -> Walk<Pairs<'_>> {
    let (left, pos, is_list) = match chunk {
        [VERSION_MAGIC, NIL_EXT, ..] => (0, 2, false),
        [VERSION_MAGIC, LIST_EXT, n0, n1, n2, n3, ..] => {
            (u64::from(u32::from_be_bytes([*n0, *n1, *n2, *n3])), 6, true)
        }
        [VERSION_MAGIC, LIST_EXT, ..] => return Err(error(EtfErrorKind::Truncated, 2)),
        [VERSION_MAGIC, COMPRESSED, ..] => return Err(error(EtfErrorKind::Compressed, 1)),
        [VERSION_MAGIC, ..] => return Err(error(EtfErrorKind::NotAList, 1)),
        _ => return Err(error(EtfErrorKind::NoVersion, 0)),
    };
    Ok(Pairs {
        chunk,
        pos,
        left,
        claimed: left,
        is_list,
        done: false,
        walker: Walker::default(),
    })
}

impl<'a> Pairs<'a> {
    /// The number of pairs the list's header claims (not checked until the end is reached;
    /// never use it to size an allocation).
    pub fn claimed_len(&self) -> u64 {
        self.claimed
    }

    fn finish(&mut self) -> Walk<()> {
        let end = if self.is_list {
            match self.chunk.get(self.pos) {
                Some(&NIL_EXT) => self.pos + 1,
                Some(_) => return Err(error(EtfErrorKind::ImproperList, self.pos)),
                None => return Err(error(EtfErrorKind::Truncated, self.pos)),
            }
        } else {
            self.pos
        };
        if end != self.chunk.len() {
            return Err(error(EtfErrorKind::TrailingBytes, end));
        }
        Ok(())
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Walk<Pair<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.left == 0 {
            self.done = true;
            return self.finish().err().map(Err);
        }
        self.left -= 1;
        match self.walker.pair_at(self.chunk, self.pos) {
            Ok(pair) => {
                self.pos = pair.offset + pair.bytes.len();
                Some(Ok(pair))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Walks a whole chunk: its pairs, or the first error.
pub fn all_pairs(chunk: &[u8]) -> Walk<Vec<Pair<'_>>> {
    pairs(chunk)?.collect()
}

/// `bytes` must be exactly one `{property, value}` tuple (as the change log stores each
/// upserted pair): the pair, with its property.
pub fn single_pair(bytes: &[u8]) -> Walk<Pair<'_>> {
    let pair = Walker::default().pair_at(bytes, 0)?;
    if pair.bytes.len() != bytes.len() {
        return Err(error(EtfErrorKind::TrailingBytes, pair.bytes.len()));
    }
    Ok(pair)
}

/// The offset just past the one term starting at `start` of `bytes` (no version byte).
pub fn term_end(bytes: &[u8], start: usize) -> Walk<usize> {
    Walker::default().skip_term(bytes, start)
}

/// Appends the external term format of the list of `pairs` (each a `{property, value}`
/// tuple's bytes, as [`Pair::bytes`]) to `out`, exactly as `term_to_binary` writes such a
/// list: the version byte, then `[]` when there are none, else `LIST_EXT`, the count, the
/// pairs and `[]`. `None` (with `out` unchanged) for more than `u32::MAX` pairs.
pub fn encode_list<'p>(
    pairs: impl ExactSizeIterator<Item = &'p [u8]>,
    out: &mut Vec<u8>,
) -> Option<()> {
    u32::try_from(pairs.len()).ok()?;
    let mut list = ListWriter::start(out);
    for pair in pairs {
        list.push(out, pair);
    }
    list.finish(out)
}

/// A list written as [`encode_list`] writes it, one pair at a time, for a caller that
/// learns the count only at the end.
pub struct ListWriter {
    start: usize,
    count: u64,
}

impl ListWriter {
    /// Appends the list's head to `out`, its count to be filled in by `finish`.
    pub fn start(out: &mut Vec<u8>) -> Self {
        let start = out.len();
        out.extend_from_slice(&[VERSION_MAGIC, LIST_EXT, 0, 0, 0, 0]);
        ListWriter { start, count: 0 }
    }

    /// Appends one pair's bytes.
    pub fn push(&mut self, out: &mut Vec<u8>, pair: &[u8]) {
        out.extend_from_slice(pair);
        self.count += 1;
    }

    /// Ends the list (`[]` alone when it has no pair). `None`, with `out` as before
    /// `start`, for more than `u32::MAX` pairs.
    pub fn finish(self, out: &mut Vec<u8>) -> Option<()> {
        let Ok(count) = u32::try_from(self.count) else {
            out.truncate(self.start);
            return None;
        };
        if count == 0 {
            out.truncate(self.start + 1);
        } else if let Some(head) = out.get_mut(self.start + 2..self.start + 6) {
            head.copy_from_slice(&count.to_be_bytes());
        }
        out.push(NIL_EXT);
        Some(())
    }
}

#[cfg(test)]
mod tests;
