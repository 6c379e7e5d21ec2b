//! Readings committed but not yet in the samples B-tree.
//!
//! Why: samples are keyed by `(point, ts)`, so every point has its own
//! newest leaf page, and a transaction that stores one reading of each of
//! 50,000 points writes 50,000 pages to the WAL at commit: at 200,000
//! readings/s that commit was half of the writer's time. Instead, each
//! transaction appends its readings to the `staging` table as one blob
//! (a few dense pages) and keeps them here, in memory; the samples of one
//! slice of the points (a sixteenth) are moved into the B-tree per
//! transaction, so each point's leaf is written once every sixteen
//! transactions, with sixteen transactions' worth of its readings.
//!
//! Readers see pending readings through [`SharedPending`] (history queries
//! merge them with what the B-tree has), so nothing is hidden while it waits.
//! A crash loses nothing: `staging` is replayed into samples at open.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// Slices of the points, one moved to samples per transaction.
pub const SLICES: usize = 16;

/// Pending readings beyond which more than one slice is moved per
/// transaction, so memory stays bounded under any load.
pub const MAX_PENDING: usize = 1_000_000;

/// One reading as the samples table stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub ts: i64,
    pub value: Option<f64>,
    pub text: Option<Box<str>>,
    pub bad: Option<Box<str>>,
}

impl Sample {
    /// A good numeric reading (what rollups and bucketed history use).
    pub fn good_value(&self) -> Option<f64> {
        self.value.filter(|_| self.bad.is_none())
    }
}

/// Hashing for point ids, which SQLite hands out (not chosen by a client):
/// SipHash's guard against chosen keys buys nothing here, and the writer
/// hashes every reading it takes in.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // The low bits of a product depend only on the low bits of the id,
        // and a slice's ids share theirs (id % SLICES); the table picks
        // buckets by the low bits, so bring the well-mixed high bits down.
        self.0.rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: mixes the id into the high bits.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

pub type Slice = HashMap<i64, Vec<Sample>, BuildHasherDefault<IdHasher>>;

/// Pending readings by point, in arrival order per point.
#[derive(Debug)]
pub struct Pending {
    slices: Vec<Slice>,
    /// The slices being moved by the transaction in progress, by index:
    /// still visible to readers until that transaction has committed.
    moving: Vec<(usize, Slice)>,
    /// Readings in `moving`.
    moving_len: usize,
    len: usize,
    /// Committed moves so far: a reader that saw it change knows readings
    /// went from here into samples meanwhile.
    moves: u64,
}

pub type SharedPending = Arc<RwLock<Pending>>;

/// Reads `p` (a panic elsewhere while it was held leaves it usable).
pub fn read(p: &SharedPending) -> std::sync::RwLockReadGuard<'_, Pending> {
    p.read().unwrap_or_else(|e| e.into_inner())
}

pub fn write(p: &SharedPending) -> std::sync::RwLockWriteGuard<'_, Pending> {
    p.write().unwrap_or_else(|e| e.into_inner())
}

pub fn slice_of(point: i64) -> usize {
    (point as u64 % SLICES as u64) as usize
}

impl Default for Pending {
    fn default() -> Self {
        Pending::new()
    }
}

impl Pending {
    pub fn new() -> Pending {
        Pending {
            slices: vec![Slice::default(); SLICES],
            moving: Vec::new(),
            moving_len: 0,
            len: 0,
            moves: 0,
        }
    }

    /// Readings waiting, including those being moved.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// Readings waiting that no transaction is moving yet.
    pub fn waiting(&self) -> usize {
        self.len - self.moving_len
    }

    /// Adds committed readings.
    pub fn add(&mut self, readings: impl IntoIterator<Item = (i64, Sample)>) {
        for (point, s) in readings {
            self.slices[slice_of(point)]
                .entry(point)
                .or_default()
                .push(s);
            self.len += 1;
        }
    }

    /// Slice `k`'s readings, for the transaction that is about to move it
    /// to insert them (by reference: it holds a read lock meanwhile, and
    /// only the writer changes pending readings).
    pub fn slice(&self, k: usize) -> &Slice {
        &self.slices[k]
    }

    /// Starts moving slice `k`, once its readings are in the transaction:
    /// they stay visible until [`Pending::moved`] (committed) or
    /// [`Pending::not_moved`] (rolled back).
    pub fn start_moving(&mut self, k: usize) {
        let slice = std::mem::take(&mut self.slices[k]);
        self.moving_len += slice.values().map(Vec::len).sum::<usize>();
        self.moving.push((k, slice));
    }

    /// The moving readings are in samples now.
    pub fn moved(&mut self) {
        self.moves += 1;
        self.len -= self.moving_len;
        self.moving_len = 0;
        self.moving.clear();
    }

    /// The move was rolled back: the readings wait again.
    pub fn not_moved(&mut self) {
        self.moving_len = 0;
        for (k, mut old) in std::mem::take(&mut self.moving) {
            // Older than anything added since: keep arrival order.
            for (p, mut v) in std::mem::take(&mut self.slices[k]) {
                old.entry(p).or_default().append(&mut v);
            }
            self.slices[k] = old;
        }
    }

    /// Where `point`'s readings can be: its slice being moved, if it is,
    /// then its slice.
    fn slices_of(&self, point: i64) -> impl Iterator<Item = &Vec<Sample>> {
        let k = slice_of(point);
        self.moving
            .iter()
            .filter(move |(j, _)| *j == k)
            .map(|(_, s)| s)
            .chain(std::iter::once(&self.slices[k]))
            .filter_map(move |s| s.get(&point))
    }

    /// `point`'s newest waiting reading (of equal times, the last to arrive,
    /// as the catalogue keeps it).
    pub fn newest(&self, point: i64) -> Option<&Sample> {
        self.slices_of(point)
            .flatten()
            .fold(None, |best: Option<&Sample>, s| match best {
                Some(b) if b.ts > s.ts => Some(b),
                _ => Some(s),
            })
    }

    /// `point`'s pending readings with `from <= ts < to`, in time order;
    /// of several with one time, the first to arrive (as samples keeps).
    pub fn range(&self, point: i64, from: i64, to: i64) -> Vec<Sample> {
        let mut out: Vec<Sample> = self
            .slices_of(point)
            .flatten()
            .filter(|s| s.ts >= from && s.ts < to)
            .cloned()
            .collect();
        out.sort_by_key(|s| s.ts); // stable: arrival order within one time
        out.dedup_by_key(|s| s.ts);
        out
    }
}

/// Merges `stored` (from samples, in time order, unique times) with
/// `pending` (from [`Pending::range`]); where both have a time, the stored
/// one wins, as it would when the pending one is moved.
pub fn merge<T>(stored: Vec<T>, pending: Vec<T>, ts: impl Fn(&T) -> i64) -> Vec<T> {
    if pending.is_empty() {
        return stored;
    }
    let mut out = Vec::with_capacity(stored.len() + pending.len());
    let mut p = pending.into_iter().peekable();
    for s in stored {
        while let Some(x) = p.next_if(|x| ts(x) < ts(&s)) {
            out.push(x);
        }
        p.next_if(|x| ts(x) == ts(&s));
        out.push(s);
    }
    out.extend(p);
    out
}

/// Each store file's pending readings, for readers opened by path.
static REGISTRY: Mutex<Vec<(PathBuf, Weak<RwLock<Pending>>)>> = Mutex::new(Vec::new());

fn key(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Makes `pending` the pending readings of the store at `path`.
pub fn register(path: &Path, pending: &SharedPending) {
    let mut r = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    r.retain(|(_, w)| w.strong_count() > 0);
    r.push((key(path), Arc::downgrade(pending)));
}

/// The pending readings of the store at `path`, when its writer runs in
/// this process. (Another process, such as `report` or sqlite3 on a file a
/// collector is writing, sees what has reached samples: all of it once the
/// writer has stopped, which moves everything; after a crash, at the next open.)
pub fn lookup(path: &Path) -> Option<SharedPending> {
    let k = key(path);
    let r = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    r.iter()
        .rev()
        .filter(|(p, _)| *p == k)
        .find_map(|(_, w)| w.upgrade())
}

/// Encodes readings as one staging blob.
pub fn encode(readings: &[(i64, Sample)], out: &mut Vec<u8>) {
    let text = |out: &mut Vec<u8>, t: &str| {
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(t.as_bytes());
    };
    for (point, s) in readings {
        out.extend_from_slice(&point.to_le_bytes());
        out.extend_from_slice(&s.ts.to_le_bytes());
        let flags = u8::from(s.value.is_some())
            | u8::from(s.text.is_some()) << 1
            | u8::from(s.bad.is_some()) << 2;
        out.push(flags);
        if let Some(v) = s.value {
            out.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(t) = &s.text {
            text(out, t);
        }
        if let Some(b) = &s.bad {
            text(out, b);
        }
    }
}

/// Decodes a staging blob; `None` if it is damaged.
pub fn decode(mut bytes: &[u8]) -> Option<Vec<(i64, Sample)>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    fn int(bytes: &mut &[u8]) -> Option<i64> {
        Some(i64::from_le_bytes(take(bytes, 8)?.try_into().ok()?))
    }
    fn text(bytes: &mut &[u8]) -> Option<Box<str>> {
        let len = u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?) as usize;
        Some(std::str::from_utf8(take(bytes, len)?).ok()?.into())
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let point = int(&mut bytes)?;
        let ts = int(&mut bytes)?;
        let flags = take(&mut bytes, 1)?[0];
        let value = if flags & 1 != 0 {
            Some(f64::from_le_bytes(take(&mut bytes, 8)?.try_into().ok()?))
        } else {
            None
        };
        let text_ = if flags & 2 != 0 {
            Some(text(&mut bytes)?)
        } else {
            None
        };
        let bad = if flags & 4 != 0 {
            Some(text(&mut bytes)?)
        } else {
            None
        };
        out.push((
            point,
            Sample {
                ts,
                value,
                text: text_,
                bad,
            },
        ));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ts: i64, v: f64) -> Sample {
        Sample {
            ts,
            value: Some(v),
            text: None,
            bad: None,
        }
    }

    #[test]
    fn staging_blobs_read_back_as_written() {
        let readings = vec![
            (7, s(1, 20.5)),
            (
                9,
                Sample {
                    ts: 2,
                    value: None,
                    text: Some("on_battery".into()),
                    bad: None,
                },
            ),
            (
                -1,
                Sample {
                    ts: 3,
                    value: None,
                    text: None,
                    bad: Some("no reply within 1s".into()),
                },
            ),
        ];
        let mut blob = Vec::new();
        encode(&readings, &mut blob);
        assert_eq!(decode(&blob), Some(readings));
        assert_eq!(
            decode(&blob[..blob.len() - 1]),
            None,
            "a cut blob is damage"
        );
    }

    #[test]
    fn a_moving_slice_stays_visible_until_committed_and_returns_if_rolled_back() {
        let mut p = Pending::new();
        let point = SLICES as i64 + 3; // slice 3
        p.add([(point, s(10, 1.0)), (point, s(20, 2.0))]);
        assert_eq!(p.slice(3)[&point].len(), 2);
        p.start_moving(3);
        assert_eq!(p.waiting(), 0);
        assert_eq!(p.range(point, 0, 100).len(), 2, "visible while moving");
        p.add([(point, s(30, 3.0))]);
        p.not_moved();
        let ts: Vec<i64> = p.range(point, 0, 100).iter().map(|s| s.ts).collect();
        assert_eq!(ts, vec![10, 20, 30]);
        assert_eq!(p.len(), 3);
        p.start_moving(3);
        p.moved();
        assert!(p.is_empty());
        assert!(p.range(point, 0, 100).is_empty());
    }

    #[test]
    fn a_range_is_in_time_order_and_the_first_of_one_time_wins() {
        let mut p = Pending::new();
        p.add([
            (1, s(30, 3.0)),
            (1, s(10, 1.0)),
            (1, s(10, 9.0)),
            (1, s(99, 0.0)),
        ]);
        let r = p.range(1, 0, 99);
        assert_eq!(r, vec![s(10, 1.0), s(30, 3.0)]);
    }

    #[test]
    fn merging_keeps_time_order_and_prefers_what_is_stored() {
        let stored = vec![(1, 'a'), (3, 'a'), (5, 'a')];
        let pending = vec![(0, 'p'), (3, 'p'), (4, 'p'), (9, 'p')];
        let m = merge(stored, pending, |x| x.0);
        assert_eq!(
            m,
            vec![(0, 'p'), (1, 'a'), (3, 'a'), (4, 'p'), (5, 'a'), (9, 'p')]
        );
    }
}
