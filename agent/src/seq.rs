//! The batch sequence number, strictly increasing across agent restarts.
//!
//! Writing the counter to disk on every batch would cost an fsync per poll, so
//! the agent reserves blocks: the file holds a high-water mark that no issued
//! number reaches, and is rewritten (atomically, fsynced) only when a block is
//! used up. After a crash the agent starts at the mark, so numbers may skip
//! ahead but never repeat; the collector relies on that to deduplicate.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Numbers reserved per disk write.
pub const BLOCK: u64 = 1024;

pub struct Sequence {
    path: PathBuf,
    next: u64,
    reserved_until: u64,
}

impl Sequence {
    /// Opens (or creates) the sequence file at `path`.
    pub fn open(path: &Path) -> io::Result<Sequence> {
        let next = match fs::read_to_string(path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: {:?} is not a sequence number",
                        path.display(),
                        text.trim()
                    ),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
            Err(e) => return Err(e),
        };
        let mut seq = Sequence {
            path: path.to_owned(),
            next,
            reserved_until: next,
        };
        seq.reserve()?;
        Ok(seq)
    }

    /// The number the next `take` returns.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// The next number; touches the disk once per [`BLOCK`] numbers.
    pub fn take(&mut self) -> io::Result<u64> {
        if self.next >= self.reserved_until {
            self.reserve()?;
        }
        let n = self.next;
        self.next += 1;
        Ok(n)
    }

    fn reserve(&mut self) -> io::Result<()> {
        let mark = self.next + BLOCK;
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            writeln!(f, "{mark}")?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            // Make the rename itself durable.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.reserved_until = mark;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_increase_across_reopen_without_repeating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq");
        let mut s = Sequence::open(&path).unwrap();
        let a: Vec<u64> = (0..5).map(|_| s.take().unwrap()).collect();
        assert_eq!(a, vec![1, 2, 3, 4, 5]);
        drop(s); // as if killed: nothing flushed on drop
        let mut s = Sequence::open(&path).unwrap();
        let b = s.take().unwrap();
        assert!(b > 5, "{b}");
    }

    #[test]
    fn crossing_a_block_keeps_counting() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Sequence::open(&dir.path().join("seq")).unwrap();
        let mut last = 0;
        for _ in 0..(BLOCK * 2 + 3) {
            let n = s.take().unwrap();
            assert!(n > last);
            last = n;
        }
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_restart_from_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seq");
        fs::write(&path, "garbage").unwrap();
        assert!(Sequence::open(&path).is_err());
    }
}
