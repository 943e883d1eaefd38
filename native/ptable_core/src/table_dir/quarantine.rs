//! Moving corrupt files aside as evidence, under names that sort by the time they were moved.

use super::{remove_if_present, TableDir, STABLE};
use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::writer::Stamp;
use std::io;
use std::path::{Path, PathBuf};

/// Quarantined files a persist keeps unless told otherwise (core callers and tests: the NIF
/// always passes the Elixir option, whose default is the user-facing one).
pub const DEFAULT_MAX_QUARANTINED: usize = 5;
const QUARANTINE_MARK: &str = ".corrupt-";

/// Moves a corrupt `path` aside to `<name>.corrupt-<UTC timestamp>` in the same directory,
/// deletes the oldest quarantined files beyond `max_quarantined`, and fsyncs the directory.
/// Returns the new path. The caller holds the directory lock.
pub(super) fn quarantine_file(
    fs: &dyn Fs,
    dir: &TableDir,
    path: &Path,
    max_quarantined: usize,
) -> Result<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(STABLE);
    let stamp = utc_compact(Stamp::now(0).created_unix_us);
    let mut target = dir.root().join(format!("{name}{QUARANTINE_MARK}{stamp}"));
    let mut n = 1;
    while fs.metadata(&target).is_ok() {
        target = dir
            .root()
            .join(format!("{name}{QUARANTINE_MARK}{stamp}-{n}"));
        n += 1;
    }
    fs.rename(path, &target).map_err(|e| Error::io(&e, path))?;
    let mut quarantined = quarantined_files(fs, dir)?;
    // Oldest first: names carry sortable timestamps.
    quarantined.sort_by(|a, b| quarantine_stamp(a).cmp(quarantine_stamp(b)).then(a.cmp(b)));
    let excess = quarantined.len().saturating_sub(max_quarantined.max(1));
    for old in &quarantined[..excess] {
        remove_if_present(fs, &dir.root().join(old));
    }
    fs.sync_dir(dir.root())
        .map_err(|e| Error::io(&e, dir.root()))?;
    Ok(target)
}

/// Names of the quarantined files of the table directory.
pub fn quarantined_files(fs: &dyn Fs, dir: &TableDir) -> Result<Vec<String>> {
    let names = match fs.read_dir(dir.root()) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&e, dir.root())),
    };
    Ok(names
        .into_iter()
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n.contains(QUARANTINE_MARK))
        .collect())
}

fn quarantine_stamp(name: &str) -> &str {
    name.split_once(QUARANTINE_MARK).map_or("", |(_, s)| s)
}

/// `YYYYMMDDTHHMMSS.ffffffZ` for a Unix time in microseconds (proleptic Gregorian, UTC).
pub fn utc_compact(unix_us: i64) -> String {
    let secs = unix_us.div_euclid(1_000_000);
    let micros = unix_us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{micros:06}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}
