//! An in-memory [`Fs`] that knows what a power cut may leave behind, and can fail any call.
//!
//! Model (conservative POSIX):
//!
//! * Files and directories are inodes. A directory maps names to inodes.
//! * Per file: the durable bytes, plus the data operations since its last `sync` (each write:
//!   offset and bytes). `create` of an existing name unlinks the old inode and links a new
//!   one, as `StdFs` does (it never truncates or follows what was there). `write_all`
//!   writes at the handle's cursor and advances it, `write_all_at` writes at an offset and
//!   leaves the cursor alone (like `pwrite`).
//! * Per directory: the durable entry map, plus the entry operations since its last
//!   `sync_dir` (link = create/mkdir, rename, unlink). Each operation records the inode it
//!   concerns, so a rename that reaches the disk links exactly the inode that was renamed,
//!   and one that does not leaves the old names as they were.
//! * `sync` makes a file's data durable (not its name); `sync_dir` makes a directory's
//!   entries durable (not the data of the files they name).
//!
//! While recording, the state after every mutating call is kept, so a test can crash after
//! any of them (see `crash.rs`). A fault plan makes the n-th call fail with an errno; the call
//! log says which call (kind and path) that was.

use ptable_core::fs::{not_a_regular_file, EntryMeta, Fs, LockGuard, ReadFile, WriteFile};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub type Ino = usize;
pub const ROOT: Ino = 0;

const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const ENOTDIR: i32 = 20;
const EISDIR: i32 = 21;
const EINVAL: i32 = 22;
const EXDEV: i32 = 18;

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// A change to a file's bytes not yet made durable.
#[derive(Clone, Debug)]
pub enum DataOp {
    Write { offset: u64, bytes: Vec<u8> },
}

impl DataOp {
    /// Applies the first `keep` bytes of this operation (all of it for `usize::MAX`).
    pub fn apply(&self, buf: &mut Vec<u8>, keep: usize) {
        match self {
            DataOp::Write { offset, bytes } => {
                let bytes = &bytes[..keep.min(bytes.len())];
                let start = *offset as usize;
                let end = start + bytes.len();
                if buf.len() < end {
                    buf.resize(end, 0);
                }
                buf[start..end].copy_from_slice(bytes);
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            DataOp::Write { bytes, .. } => bytes.len(),
        }
    }

    pub fn offset(&self) -> u64 {
        match self {
            DataOp::Write { offset, .. } => *offset,
        }
    }
}

/// A change to a directory's entries not yet made durable.
#[derive(Clone, Debug)]
pub enum EntryOp {
    /// `create` of a new name or `create_dir`.
    Link {
        name: OsString,
        ino: Ino,
    },
    Rename {
        from: OsString,
        to: OsString,
        ino: Ino,
    },
    Unlink {
        name: OsString,
        ino: Ino,
    },
}

impl EntryOp {
    /// Applies this operation to an entry map as it would be found after a crash.
    pub fn apply(&self, map: &mut BTreeMap<OsString, Ino>) {
        match self {
            EntryOp::Link { name, ino } => {
                map.insert(name.clone(), *ino);
            }
            EntryOp::Rename { from, to, ino } => {
                // Only the name that pointed at the renamed inode goes away; the target name
                // now points at that inode (whatever it pointed at before is unlinked).
                if map.get(from) == Some(ino) {
                    map.remove(from);
                }
                map.insert(to.clone(), *ino);
            }
            EntryOp::Unlink { name, ino } => {
                if map.get(name) == Some(ino) {
                    map.remove(name);
                }
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct FileNode {
    pub durable: Vec<u8>,
    pub pending: Vec<DataOp>,
    pub current: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct DirNode {
    pub durable: BTreeMap<OsString, Ino>,
    pub pending: Vec<EntryOp>,
    pub current: BTreeMap<OsString, Ino>,
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    File(FileNode),
    Dir(DirNode),
}

#[derive(Clone, Debug)]
pub struct Node {
    pub kind: NodeKind,
    pub mtime_us: u64,
}

/// Everything on the simulated disk, durable or not.
#[derive(Clone, Debug)]
pub struct State {
    pub nodes: Vec<Node>,
    /// A logical clock for modification times (microseconds after a fixed epoch).
    pub clock: u64,
}

impl Default for State {
    fn default() -> Self {
        State {
            nodes: vec![Node {
                kind: NodeKind::Dir(DirNode::default()),
                mtime_us: 0,
            }],
            clock: 0,
        }
    }
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    pub fn file(&self, ino: Ino) -> Option<&FileNode> {
        match &self.nodes[ino].kind {
            NodeKind::File(f) => Some(f),
            NodeKind::Dir(_) => None,
        }
    }

    pub fn dir(&self, ino: Ino) -> Option<&DirNode> {
        match &self.nodes[ino].kind {
            NodeKind::Dir(d) => Some(d),
            NodeKind::File(_) => None,
        }
    }

    fn file_mut(&mut self, ino: Ino) -> &mut FileNode {
        match &mut self.nodes[ino].kind {
            NodeKind::File(f) => f,
            NodeKind::Dir(_) => panic!("inode {ino} is a directory"),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> &mut DirNode {
        match &mut self.nodes[ino].kind {
            NodeKind::Dir(d) => d,
            NodeKind::File(_) => panic!("inode {ino} is a file"),
        }
    }

    /// Resolves an absolute path through the current (not necessarily durable) entries.
    pub fn lookup(&self, path: &Path) -> io::Result<Ino> {
        let mut ino = ROOT;
        for comp in path.components() {
            match comp {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => {
                    let dir = self.dir(ino).ok_or_else(|| errno(ENOTDIR))?;
                    ino = *dir.current.get(name).ok_or_else(|| errno(ENOENT))?;
                }
                // The protocol never builds such paths; refuse rather than guess.
                Component::ParentDir | Component::Prefix(_) => return Err(errno(EINVAL)),
            }
        }
        Ok(ino)
    }

    /// The directory holding `path`, and the last component.
    fn parent_of(&self, path: &Path) -> io::Result<(Ino, OsString)> {
        let name = path.file_name().ok_or_else(|| errno(EINVAL))?;
        let parent = path.parent().ok_or_else(|| errno(EINVAL))?;
        let ino = self.lookup(parent)?;
        if self.dir(ino).is_none() {
            return Err(errno(ENOTDIR));
        }
        Ok((ino, name.to_os_string()))
    }

    fn new_node(&mut self, kind: NodeKind) -> Ino {
        let mtime_us = self.tick();
        self.nodes.push(Node { kind, mtime_us });
        self.nodes.len() - 1
    }

    fn entry_op(&mut self, dir: Ino, op: EntryOp) {
        let now = self.tick();
        self.nodes[dir].mtime_us = now;
        let d = self.dir_mut(dir);
        op.apply(&mut d.current);
        d.pending.push(op);
    }

    fn data_op(&mut self, ino: Ino, op: DataOp) {
        let now = self.tick();
        self.nodes[ino].mtime_us = now;
        let f = self.file_mut(ino);
        op.apply(&mut f.current, usize::MAX);
        f.pending.push(op);
    }

    /// Makes everything durable, as after a clean shutdown.
    pub fn sync_everything(&mut self) {
        for node in &mut self.nodes {
            match &mut node.kind {
                NodeKind::File(f) => {
                    f.durable = f.current.clone();
                    f.pending.clear();
                }
                NodeKind::Dir(d) => {
                    d.durable = d.current.clone();
                    d.pending.clear();
                }
            }
        }
    }

    /// The current bytes of the file at `path`.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let ino = self.lookup(path).ok()?;
        self.file(ino).map(|f| f.current.clone())
    }

    /// The current names in the directory at `path`.
    pub fn names(&self, path: &Path) -> Vec<String> {
        match self.lookup(path).ok().and_then(|ino| self.dir(ino)) {
            Some(d) => d
                .current
                .keys()
                .map(|n| n.to_string_lossy().into_owned())
                .collect(),
            None => Vec::new(),
        }
    }
}

/// Kinds of calls, for the call log and fault plans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallKind {
    Create,
    Open,
    OpenAppend,
    Read,
    WriteAll,
    WriteAt,
    Sync,
    Rename,
    RemoveFile,
    CreateDir,
    SyncDir,
    ReadDir,
    Metadata,
    TryLock,
}

impl CallKind {
    /// True for calls that change the (simulated) disk.
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            CallKind::Open
                | CallKind::OpenAppend
                | CallKind::Read
                | CallKind::ReadDir
                | CallKind::Metadata
        )
    }
}

#[derive(Clone, Debug)]
pub struct Call {
    pub kind: CallKind,
    pub path: PathBuf,
    /// The name of the thread that made the call (`ptable_writer`, `ptable_reader`, ...).
    pub thread: Option<String>,
}

#[derive(Default)]
struct Shared {
    state: State,
    locks: BTreeSet<PathBuf>,
    recording: bool,
    /// (description of the call, state after it), one per mutating call while recording.
    history: Vec<(String, State)>,
    calls: Vec<Call>,
    /// Fail call number `.0` (counting every call, reads included) with errno `.1`.
    fault: Option<(usize, i32)>,
    fired: Option<(Call, i32)>,
}

/// The simulated filesystem; clones share the same disk.
#[derive(Clone, Default)]
pub struct SimFs {
    shared: Arc<Mutex<Shared>>,
}

impl SimFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// A filesystem whose disk is `state` (its pending changes included).
    pub fn from_state(state: State) -> Self {
        let fs = Self::default();
        fs.lock().state = state;
        fs
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panicking test thread must not hide the state from the next assertion.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state.clone()
    }

    pub fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.lock().state)
    }

    /// Starts recording: the current state is crash point 0.
    pub fn start_recording(&self) {
        let mut s = self.lock();
        s.recording = true;
        let state = s.state.clone();
        s.history = vec![("start".to_string(), state)];
    }

    /// Stops recording and returns the states after each mutating call (index 0: before).
    pub fn take_history(&self) -> Vec<(String, State)> {
        let mut s = self.lock();
        s.recording = false;
        std::mem::take(&mut s.history)
    }

    /// Number of crash points recorded so far (used to mark when a call returned).
    pub fn history_len(&self) -> usize {
        self.lock().history.len()
    }

    /// Fails call number `index` (see [`calls`](Self::calls)) with `code`.
    pub fn inject_fault(&self, index: usize, code: i32) {
        let mut s = self.lock();
        s.fault = Some((index, code));
        s.fired = None;
    }

    /// Whether a lock guard for `path` is alive.
    pub fn is_locked(&self, path: &Path) -> bool {
        self.lock().locks.contains(path)
    }

    pub fn clear_fault(&self) {
        self.lock().fault = None;
    }

    /// The call that failed by injection, if one did.
    pub fn fired(&self) -> Option<(Call, i32)> {
        self.lock().fired.clone()
    }

    /// Every call made so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn reset_calls(&self) {
        self.lock().calls.clear();
    }

    /// Logs a call and fails it if the fault plan says so.
    fn enter(s: &mut Shared, kind: CallKind, path: &Path) -> io::Result<()> {
        let index = s.calls.len();
        let call = Call {
            kind,
            path: path.to_path_buf(),
            thread: std::thread::current().name().map(str::to_owned),
        };
        s.calls.push(call.clone());
        match s.fault {
            Some((at, code)) if at == index => {
                s.fired = Some((call, code));
                Err(errno(code))
            }
            _ => Ok(()),
        }
    }

    fn record(s: &mut Shared, what: String) {
        if s.recording {
            let state = s.state.clone();
            s.history.push((what, state));
        }
    }
}

struct SimWriteFile {
    fs: SimFs,
    ino: Ino,
    path: PathBuf,
    cursor: u64,
}

impl SimWriteFile {
    fn write(&mut self, kind: CallKind, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.fs.lock();
        let fault = SimFs::enter(&mut s, kind, &self.path);
        // A failing write may still have written part of the data (a short write, then the
        // error): keep the first half.
        let keep = if fault.is_ok() {
            buf.len()
        } else {
            buf.len() / 2
        };
        if keep > 0 {
            s.state.data_op(
                self.ino,
                DataOp::Write {
                    offset,
                    bytes: buf[..keep].to_vec(),
                },
            );
            let what = format!("{kind:?} {} @{offset}+{keep}", self.path.display());
            SimFs::record(&mut s, what);
        }
        if kind == CallKind::WriteAll {
            self.cursor += keep as u64;
        }
        fault
    }
}

impl WriteFile for SimWriteFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let offset = self.cursor;
        self.write(CallKind::WriteAll, buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write(CallKind::WriteAt, buf, offset)
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.fs.lock();
        SimFs::enter(&mut s, CallKind::Sync, &self.path)?;
        let f = s.state.file_mut(self.ino);
        f.durable = f.current.clone();
        f.pending.clear();
        SimFs::record(&mut s, format!("sync {}", self.path.display()));
        Ok(())
    }
}

struct SimReadFile {
    fs: SimFs,
    path: PathBuf,
    data: Arc<Vec<u8>>,
    pos: u64,
}

impl Read for SimReadFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        SimFs::enter(&mut self.fs.lock(), CallKind::Read, &self.path)?;
        let start = (self.pos as usize).min(self.data.len());
        let n = buf.len().min(self.data.len() - start);
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SimReadFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => (self.data.len() as u64).checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| errno(EINVAL))?;
        Ok(self.pos)
    }
}

impl ReadFile for SimReadFile {
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.data.len() as u64)
    }
}

struct SimLock {
    fs: SimFs,
    path: PathBuf,
}

impl LockGuard for SimLock {}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.fs.lock().locks.remove(&self.path);
    }
}

fn name_str(name: &OsStr) -> String {
    name.to_string_lossy().into_owned()
}

impl Fs for SimFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let mut s = self.lock();
        SimFs::enter(&mut s, CallKind::Create, path)?;
        let (parent, name) = s.state.parent_of(path)?;
        let existing = s
            .state
            .dir(parent)
            .and_then(|d| d.current.get(&name))
            .copied();
        match existing {
            Some(ino) if s.state.file(ino).is_none() => return Err(not_a_regular_file()),
            // As StdFs does: the old entry is unlinked (never written through), then a new
            // inode is linked under its name; each a directory change of its own.
            Some(old) => {
                s.state.entry_op(
                    parent,
                    EntryOp::Unlink {
                        name: name.clone(),
                        ino: old,
                    },
                );
                SimFs::record(&mut s, format!("unlink {}", path.display()));
            }
            None => {}
        }
        let ino = s.state.new_node(NodeKind::File(FileNode::default()));
        s.state.entry_op(parent, EntryOp::Link { name, ino });
        SimFs::record(&mut s, format!("create {}", path.display()));
        Ok(Box::new(SimWriteFile {
            fs: self.clone(),
            ino,
            path: path.to_path_buf(),
            cursor: 0,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        let mut s = self.lock();
        SimFs::enter(&mut s, CallKind::Open, path)?;
        let ino = s.state.lookup(path)?;
        let data = match s.state.file(ino) {
            Some(f) => Arc::new(f.current.clone()),
            None => return Err(not_a_regular_file()),
        };
        Ok(Box::new(SimReadFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            data,
            pos: 0,
        }))
    }

    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WriteFile>> {
        let mut s = self.lock();
        SimFs::enter(&mut s, CallKind::OpenAppend, path)?;
        let ino = s.state.lookup(path)?;
        let Some(file) = s.state.file(ino) else {
            return Err(not_a_regular_file());
        };
        let cursor = file.current.len() as u64;
        Ok(Box::new(SimWriteFile {
            fs: self.clone(),
            ino,
            path: path.to_path_buf(),
            cursor,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        SimFs::enter(&mut s, CallKind::Rename, from)?;
        let (from_dir, from_name) = s.state.parent_of(from)?;
        let (to_dir, to_name) = s.state.parent_of(to)?;
        if from_dir != to_dir {
            // The protocol renames only within a directory; a cross-directory rename would
            // need its own crash model.
            return Err(errno(EXDEV));
        }
        let ino = s.state.lookup(from)?;
        if s.state.file(ino).is_none() {
            return Err(errno(EISDIR));
        }
        if let Ok(target) = s.state.lookup(to) {
            if s.state.file(target).is_none() {
                return Err(errno(EISDIR));
            }
        }
        s.state.entry_op(
            from_dir,
            EntryOp::Rename {
                from: from_name,
                to: to_name,
                ino,
            },
        );
        SimFs::record(
            &mut s,
            format!("rename {} -> {}", from.display(), to.display()),
        );
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        SimFs::enter(&mut s, CallKind::RemoveFile, path)?;
        let (parent, name) = s.state.parent_of(path)?;
        let ino = s.state.lookup(path)?;
        if s.state.file(ino).is_none() {
            return Err(errno(EISDIR));
        }
        s.state.entry_op(parent, EntryOp::Unlink { name, ino });
        SimFs::record(&mut s, format!("unlink {}", path.display()));
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        SimFs::enter(&mut s, CallKind::CreateDir, path)?;
        let (parent, name) = s.state.parent_of(path)?;
        if s.state
            .dir(parent)
            .is_some_and(|d| d.current.contains_key(&name))
        {
            return Err(errno(EEXIST));
        }
        let ino = s.state.new_node(NodeKind::Dir(DirNode::default()));
        s.state.entry_op(parent, EntryOp::Link { name, ino });
        SimFs::record(&mut s, format!("mkdir {}", path.display()));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        SimFs::enter(&mut s, CallKind::SyncDir, path)?;
        let ino = s.state.lookup(path)?;
        if s.state.dir(ino).is_none() {
            return Err(errno(ENOTDIR));
        }
        let d = s.state.dir_mut(ino);
        d.durable = d.current.clone();
        d.pending.clear();
        SimFs::record(&mut s, format!("sync_dir {}", path.display()));
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut s = self.lock();
        SimFs::enter(&mut s, CallKind::ReadDir, path)?;
        let ino = s.state.lookup(path)?;
        match s.state.dir(ino) {
            Some(d) => Ok(d.current.keys().cloned().collect()),
            None => Err(errno(ENOTDIR)),
        }
    }

    fn metadata(&self, path: &Path) -> io::Result<EntryMeta> {
        let mut s = self.lock();
        SimFs::enter(&mut s, CallKind::Metadata, path)?;
        let ino = s.state.lookup(path)?;
        let node = &s.state.nodes[ino];
        let (is_dir, len) = match &node.kind {
            NodeKind::File(f) => (false, f.current.len() as u64),
            NodeKind::Dir(_) => (true, 0),
        };
        Ok(EntryMeta {
            is_dir,
            len,
            modified: sim_time(node.mtime_us),
        })
    }

    fn try_lock(&self, path: &Path) -> io::Result<Box<dyn LockGuard>> {
        let mut s = self.lock();
        SimFs::enter(&mut s, CallKind::TryLock, path)?;
        let (parent, name) = s.state.parent_of(path)?;
        match s.state.lookup(path) {
            Ok(ino) if s.state.file(ino).is_none() => return Err(not_a_regular_file()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let ino = s.state.new_node(NodeKind::File(FileNode::default()));
                s.state.entry_op(parent, EntryOp::Link { name, ino });
                SimFs::record(&mut s, format!("create lock {}", path.display()));
            }
            Err(e) => return Err(e),
        }
        if !s.locks.insert(path.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }
}

/// A short description of a directory tree's current entries (for failure messages).
pub fn describe(state: &State, path: &Path) -> String {
    fn walk(state: &State, ino: Ino, prefix: &str, out: &mut String) {
        if let Some(d) = state.dir(ino) {
            for (name, child) in &d.current {
                let name = format!("{prefix}/{}", name_str(name));
                match state.file(*child) {
                    Some(f) => out.push_str(&format!("{name} ({} bytes) ", f.current.len())),
                    None => {
                        out.push_str(&format!("{name}/ "));
                        walk(state, *child, &name, out);
                    }
                }
            }
        }
    }
    let mut out = String::new();
    if let Ok(ino) = state.lookup(path) {
        walk(state, ino, "", &mut out);
    }
    out
}

/// A wall-clock time from a simulated modification time (for comparisons in tests).
pub fn sim_time(mtime_us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_micros(mtime_us)
}
