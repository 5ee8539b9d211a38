//! The flow file on disk (tmpfs, in the agent's state directory): opened or
//! created, its header checked, and mapped shared so that the pipeline's flow
//! table mirror (`tapestry_dataplane`'s `tables/flow_file.rs`) writes straight into
//! pages that outlive the process.
//!
//! A file that cannot be trusted (wrong size, magic, version, capacity, header
//! checksum) is never read nor overwritten: it is renamed aside to
//! `NAME.bad-SECONDS-NANOS` and a fresh one is created, and the caller is told why
//! (it logs it and counts `flow_file_discarded`). A fresh file is made under a
//! temporary name and renamed into place, so a half-made one is never found.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tapestry_dataplane::{
    check_flow_file, flow_file_len, init_flow_file, FlowFileError, FlowMemory,
};

use crate::sys::SharedMapping;

/// A mapped flow file: the pipeline's [`FlowMemory`].
pub struct FlowFile {
    map: SharedMapping,
}

impl FlowMemory for FlowFile {
    fn bytes(&mut self) -> &mut [u8] {
        self.map.bytes_mut()
    }
}

/// What [`open`] found.
#[derive(Debug)]
pub enum Opened {
    /// No file: a fresh one was made.
    Fresh,
    /// A file with a valid header, to restore from.
    Existing,
    /// A file that could not be trusted, moved aside; a fresh one was made.
    Discarded { why: Discard, moved_to: PathBuf },
}

/// Why a flow file was moved aside.
#[derive(Debug, thiserror::Error)]
pub enum Discard {
    #[error("{0}")]
    Header(#[from] FlowFileError),
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
}

/// Opens the flow file at `path` for a table of `capacity` flows: see the module
/// docs. An error means no flow file could be made at all (the agent then runs
/// without one).
pub fn open(path: &Path, capacity: usize) -> io::Result<(FlowFile, Opened)> {
    let len = flow_file_len(capacity);
    let opened = match try_existing(path, capacity, len) {
        Ok(Some(map)) => return Ok((FlowFile { map }, Opened::Existing)),
        Ok(None) => Opened::Fresh,
        Err(why) => Opened::Discarded {
            why,
            moved_to: move_aside(path)?,
        },
    };
    let tmp = path.with_extension("tmp");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    file.set_len(len as u64)?;
    let mut map = SharedMapping::map(&file, len)?;
    init_flow_file(map.bytes_mut(), capacity);
    fs::rename(&tmp, path)?;
    Ok((FlowFile { map }, opened))
}

/// The existing file, mapped, if its header checks; `None` if there is none.
fn try_existing(
    path: &Path,
    capacity: usize,
    len: usize,
) -> Result<Option<SharedMapping>, Discard> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let got = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    if got != len {
        return Err(FlowFileError::Length { got, want: len }.into());
    }
    let mut map = map_file(&file, len)?;
    check_flow_file(map.bytes_mut(), capacity)?;
    Ok(Some(map))
}

fn map_file(file: &File, len: usize) -> io::Result<SharedMapping> {
    SharedMapping::map(file, len)
}

/// Renames `path` to `path.bad-SECONDS-NANOS`; returns the new name.
fn move_aside(path: &Path) -> io::Result<PathBuf> {
    #[allow(clippy::disallowed_methods)] // a file name, not a data-plane clock
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".bad-{}-{:09}", t.as_secs(), t.subsec_nanos()));
    let to = path.with_file_name(name);
    fs::rename(path, &to)?;
    Ok(to)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;

    const CAP: usize = 64;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("tapestry-flowfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn aside(d: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".bad-"))
            .collect();
        v.sort();
        v
    }

    /// Writes through one mapping, reopens: the bytes are there (what a killed
    /// process leaves is what the next one maps).
    #[test]
    fn fresh_then_existing_keeps_what_was_written() {
        let d = dir("keep");
        let path = d.join("flows");
        let (mut f, o) = open(&path, CAP).unwrap();
        assert!(matches!(o, Opened::Fresh));
        let at = tapestry_dataplane::flow_file_len(CAP) - 1;
        f.bytes()[at] = 0x42;
        drop(f);
        let (mut f, o) = open(&path, CAP).unwrap();
        assert!(matches!(o, Opened::Existing));
        assert_eq!(f.bytes()[at], 0x42);
        assert!(aside(&d).is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    fn discarded(name: &str, damage: impl FnOnce(&Path)) -> String {
        let d = dir(name);
        let path = d.join("flows");
        drop(open(&path, CAP).unwrap());
        damage(&path);
        let before = fs::read(&path).unwrap();
        let (mut f, o) = open(&path, CAP).unwrap();
        let Opened::Discarded { why, moved_to } = o else {
            panic!("{name}: not discarded: {o:?}");
        };
        // Moved aside untouched, and the new file is empty and valid.
        assert_eq!(aside(&d), vec![moved_to.clone()]);
        assert_eq!(
            fs::read(&moved_to).unwrap(),
            before,
            "{name}: kept as found"
        );
        assert_eq!(check_flow_file(f.bytes(), CAP), Ok(()));
        assert!(
            f.bytes()[64..].iter().all(|b| *b == 0),
            "{name}: started empty"
        );
        fs::remove_dir_all(&d).unwrap();
        why.to_string()
    }

    #[test]
    fn truncated_corrupt_and_other_version_files_are_moved_aside() {
        let truncate = |p: &Path| {
            let f = OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(100).unwrap();
        };
        assert!(discarded("truncated", truncate).contains("100 bytes"));
        let corrupt = |p: &Path| {
            let mut b = fs::read(p).unwrap();
            b[17] ^= 0xff; // the capacity, under the header checksum
            fs::write(p, b).unwrap();
        };
        assert!(discarded("corrupt", corrupt).contains("checksum"));
        let garbage = |p: &Path| {
            let n = fs::metadata(p).unwrap().len() as usize;
            fs::write(p, vec![0xa5u8; n]).unwrap();
        };
        assert!(discarded("garbage", garbage).contains("magic"));
        let empty = |p: &Path| fs::write(p, b"").unwrap();
        assert!(discarded("empty", empty).contains("0 bytes"));
    }

    #[test]
    fn files_of_another_version_or_capacity_are_moved_aside() {
        // The version field changed (the header checksum then fails too; a
        // consistent header of another version is refused by name in the
        // dataplane's `flow_file` tests).
        let version = |p: &Path| {
            let mut b = fs::read(p).unwrap();
            b[8] = 2;
            fs::write(p, b).unwrap();
        };
        assert!(!discarded("version", version).is_empty());
        // A file made for another table size.
        let d = dir("capacity");
        let path = d.join("flows");
        drop(open(&path, CAP * 2).unwrap());
        let (_f, o) = open(&path, CAP).unwrap();
        let Opened::Discarded { why, .. } = o else {
            panic!("not discarded");
        };
        assert!(why.to_string().contains("bytes"), "{why}");
        assert_eq!(aside(&d).len(), 1);
        fs::remove_dir_all(&d).unwrap();
    }
}
