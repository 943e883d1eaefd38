//! Version 1 files (property_table's format): one payload of term bytes, checked by the MD5
//! trailer that follows it. Read and copied, never written.

use super::{Chunk, FileHeader, TableFile};
use crate::error::{Error, Reason, Result};
use crate::format::{LEGACY_HEADER_LEN, LEGACY_TRAILER_LEN, MAX_LEGACY_PAYLOAD_LEN};
use crate::fs::WriteFile;
use md5::{Digest, Md5};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Reads the rest of a legacy header, after the prefix: returns the header, the offset of
/// the payload and the length the file must have.
pub(super) fn read_header(file: &mut impl Read, path: &Path) -> Result<(FileHeader, u64, u64)> {
    let bad_file = || Error::new(Reason::BadFile, path);
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::io(&e, path))?;
    let payload_len = u64::from_be_bytes(len);
    if payload_len > MAX_LEGACY_PAYLOAD_LEN {
        return Err(bad_file());
    }
    let expected = (LEGACY_HEADER_LEN as u64 + LEGACY_TRAILER_LEN as u64)
        .checked_add(payload_len)
        .ok_or_else(bad_file)?;
    Ok((
        FileHeader::Legacy { payload_len },
        LEGACY_HEADER_LEN as u64,
        expected,
    ))
}

impl TableFile {
    /// Checks the legacy payload's MD5 through the read buffer.
    pub(super) fn verify_legacy(&mut self, payload_len: u64) -> Result<()> {
        let mut md5 = Md5::new();
        self.stream(payload_len, |piece| {
            md5.update(piece);
            Ok(())
        })?;
        self.check_md5(md5).map(|_| ())
    }

    /// Reads the legacy MD5 trailer and checks it against `md5`; returns the trailer.
    fn check_md5(&mut self, md5: Md5) -> Result<[u8; LEGACY_TRAILER_LEN]> {
        let mut stored = [0u8; LEGACY_TRAILER_LEN];
        self.file
            .read_exact(&mut stored)
            .map_err(|e| Error::io(&e, &self.path))?;
        if md5.finalize().as_slice() == stored {
            Ok(stored)
        } else {
            Err(Error::new(Reason::BadChecksum, &self.path))
        }
    }

    /// The payload as the file's single chunk, as [`next_chunk`](Self::next_chunk) returns it.
    pub(super) fn next_legacy_chunk<B, F>(
        &mut self,
        payload_len: u64,
        alloc: F,
    ) -> Result<Option<Chunk<B>>>
    where
        B: AsMut<[u8]>,
        F: FnOnce(usize) -> Option<B>,
    {
        if self.cursor.done {
            return Ok(None);
        }
        let len = usize::try_from(payload_len).map_err(|_| self.bad_file())?;
        if self.check_before_reading(payload_len) {
            self.verify_legacy(payload_len)?;
            self.file
                .seek(SeekFrom::Start(self.payload_start))
                .map_err(|e| Error::io(&e, &self.path))?;
        }
        let mut data = alloc(len).ok_or_else(|| self.out_of_memory())?;
        self.file
            .read_exact(data.as_mut())
            .map_err(|e| Error::io(&e, &self.path))?;
        let mut md5 = Md5::new();
        md5.update(data.as_mut());
        self.check_md5(md5)?;
        self.cursor.done = true;
        Ok(Some(Chunk { data, rows: None }))
    }

    /// The legacy branch of [`copy_to`](Self::copy_to): the file byte for byte.
    pub(super) fn copy_legacy_to(
        &mut self,
        payload_len: u64,
        out: &mut dyn WriteFile,
        out_path: &Path,
    ) -> Result<()> {
        let out_err = |e: std::io::Error| Error::io(&e, out_path);
        // A large payload is checked before any of it is written: a file that fails
        // its MD5 (a hole that claims 256 MiB, say) costs no writes.
        if self.check_before_reading(payload_len) {
            self.verify_legacy(payload_len)?;
        }
        let mut md5 = Md5::new();
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&e, &self.path))?;
        let mut head = [0u8; LEGACY_HEADER_LEN];
        self.file
            .read_exact(&mut head)
            .map_err(|e| Error::io(&e, &self.path))?;
        out.write_all(&head).map_err(out_err)?;
        self.stream(payload_len, |piece| {
            md5.update(piece);
            out.write_all(piece).map_err(out_err)
        })?;
        let trailer = self.check_md5(md5)?;
        out.write_all(&trailer).map_err(out_err)?;
        Ok(())
    }
}
