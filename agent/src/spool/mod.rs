//! The agent's store-and-forward spool: every batch is written here before it
//! is published and stays until the collector confirms it is stored (or, in
//! `confirm = "broker"` mode, until the broker's PUBACK).
//!
//! An append-only log of segment files (`record` has the format), one ack
//! file per segment listing the records that are done, and an in-memory index
//! of each record's state. Why not SQLite or redb: the access pattern is a
//! queue (append at the head, delete whole files at the tail), which a log
//! does with one `write` per burst of batches and no write amplification on the small
//! flash of an edge box; and after damage a log can say exactly which records
//! it lost and keep the rest, where a damaged database file is all or nothing.
//!
//! Durability: a record is written before it is published, so a SIGKILL
//! loses nothing. The batches of one burst of polls go in one `write`: the
//! kernel's cost of appending to a file is mostly per call, not per byte.
//! Against power loss, the spool is checked twice per `sync_interval`
//! ([`Spool::sync_check`]) and the active segment fsynced if it holds a batch
//! written before the previous check that is still unconfirmed: a batch is on
//! disk within `sync_interval` unless it was confirmed first (or after every
//! write when the interval is zero). A confirmed batch is safe at the
//! collector and needs no fsync; so when segments fill and are confirmed
//! within the kernel's writeback delay (about 30 s), as at a busy site on a
//! healthy link, their pages are deleted before they are ever written to the
//! flash of an edge box. Ack files are never fsynced: a lost ack only
//! means a batch is sent again, and the collector stores a repeated batch once.

pub mod record;

use record::{Damage, RecordInfo};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A batch to write: its payload owned (on its way from the publisher, see
/// `link::OutBatch`) or borrowed.
#[derive(Debug, Clone)]
pub struct NewRecord<P> {
    pub seq: u64,
    pub polled_at: i64,
    pub readings: u32,
    pub payload: P,
}

/// What [`Spool::append_all`] did.
#[derive(Debug)]
pub struct Appended {
    /// Per batch: written (true), or dropped by the bound or lost to an error.
    pub kept: Vec<bool>,
    /// Batches lost because the disk refused them.
    pub lost: usize,
    pub error: Option<SpoolError>,
}

/// What to do when a new batch does not fit within `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Delete the oldest segment (the usual choice: recent readings matter most).
    DropOldest,
    /// Keep what is spooled and drop the new batch.
    DropNewest,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_age: Duration,
    pub on_full: OnFull,
    /// Zero: fsync after every record.
    pub sync_interval: Duration,
}

impl Limits {
    /// Segments are an eighth of the bound (at most 8 MiB), so dropping the
    /// oldest frees space without losing more than needed.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).clamp(4096, 8 << 20)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting to be published.
    Unsent,
    /// Handed to the MQTT client (or queued to be), no PUBACK yet.
    Sending,
    /// The broker has it; waiting for the collector's confirmation.
    Delivered,
    /// Confirmed (or refused for good): only kept until its segment goes.
    Done,
}

#[derive(Debug, Clone)]
struct Entry {
    info: RecordInfo,
    state: State,
    /// When it was last delivered to the broker.
    delivered_at: Option<Instant>,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    entries: Vec<Entry>,
    /// Entries not yet done.
    pending: usize,
    pending_bytes: u64,
    size: u64,
    /// Open for appending acks, created on first use.
    acks: Option<File>,
    /// Acks not yet written: they go to the file at the next sync, so a
    /// confirmation costs no system call of its own. Losing them (a crash)
    /// only means those batches are sent again after the restart.
    unwritten_acks: Vec<u8>,
}

impl Segment {
    fn ack_path(&self) -> PathBuf {
        self.path.with_extension("ack")
    }

    fn newest_polled(&self) -> Option<i64> {
        self.entries.iter().map(|e| e.info.polled_at).max()
    }

    fn find(&self, seq: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&seq, |e| e.info.seq).ok()
    }
}

/// What was found on disk at start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub pending_batches: u64,
    /// Highest sequence number on disk, pending or not.
    pub last_seq: Option<u64>,
    pub discarded_records: u64,
    pub discarded_bytes: u64,
    /// One line per damaged stretch, for the log.
    pub damage: Vec<String>,
}

/// Counters for the status topic and `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub appended: u64,
    /// Dropped by a bound before ever being sent: lost for sure.
    pub dropped_batches: u64,
    pub dropped_readings: u64,
    /// Dropped after being sent but before the confirmation came: most of
    /// these reached the collector, but nobody can promise it.
    pub dropped_unconfirmed: u64,
    pub discarded_records: u64,
    pub discarded_bytes: u64,
    pub refused_batches: u64,
    /// fsyncs of segments: few while the collector confirms promptly.
    pub syncs: u64,
}

/// A record to publish from the backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    segment: u64,
    index: usize,
}

pub struct Spool {
    dir: PathBuf,
    limits: Limits,
    /// Oldest first; the last one is written to.
    segments: VecDeque<Segment>,
    active: File,
    /// Leading entries of the active segment that are on disk, or done and so
    /// in no need of it.
    synced: usize,
    /// Entries of the active segment at the previous [`Spool::sync_check`]:
    /// those after it are given until the next check to be confirmed.
    checked: usize,
    /// Records encoded but not yet written, and their entries (with the
    /// index of the batch in the call), while `append_all` runs.
    staged: Vec<(usize, Entry)>,
    next_id: u64,
    pub counters: Counters,
    /// When the most recently delivered of the confirmed batches was delivered.
    latest_confirmed_delivery: Option<Instant>,
    buf: Vec<u8>,
    /// The segment the backlog is being read from.
    reader: Option<(u64, File)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {0}: {1}")]
    Dir(PathBuf, io::Error),
    #[error("spool file {0}: {1}")]
    File(PathBuf, io::Error),
}

impl Spool {
    /// Opens the spool in `dir`, reading back what a previous run left and
    /// discarding (and reporting) what is damaged. Appends go to a new segment.
    pub fn open(dir: &Path, limits: Limits) -> Result<(Spool, OpenReport), SpoolError> {
        fs::create_dir_all(dir).map_err(|e| SpoolError::Dir(dir.to_owned(), e))?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(|e| SpoolError::Dir(dir.to_owned(), e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
            })
            .collect();
        ids.sort_unstable();
        let mut report = OpenReport::default();
        let mut segments = VecDeque::new();
        for id in &ids {
            let path = segment_path(dir, *id);
            let bytes = fs::read(&path).map_err(|e| SpoolError::File(path.clone(), e))?;
            let scan = record::scan(&bytes);
            for d in &scan.damage {
                report.discarded_bytes += u64::from(d.bytes);
                report.damage.push(describe(&path, d, scan.bad_header));
            }
            // A damaged stretch held at least one record (a torn tail, one).
            report.discarded_records += scan.damage.len() as u64;
            let done = read_acks(&path.with_extension("ack"));
            let mut seg = Segment {
                id: *id,
                path,
                entries: Vec::with_capacity(scan.records.len()),
                pending: 0,
                pending_bytes: 0,
                size: bytes.len() as u64,
                acks: None,
                unwritten_acks: Vec::new(),
            };
            // Sequence numbers only grow, but a damaged file could repeat
            // one; the index needs them strictly increasing.
            let mut last = None;
            for info in scan.records {
                if last.is_some_and(|l| info.seq <= l) {
                    continue;
                }
                last = Some(info.seq);
                report.last_seq = report.last_seq.max(Some(info.seq));
                let state = if done.binary_search(&info.offset).is_ok() {
                    State::Done
                } else {
                    seg.pending += 1;
                    seg.pending_bytes += u64::from(info.len);
                    State::Unsent
                };
                seg.entries.push(Entry {
                    info,
                    state,
                    delivered_at: None,
                });
            }
            if seg.pending == 0 {
                remove_segment(&seg);
                continue;
            }
            report.pending_batches += seg.pending as u64;
            segments.push_back(seg);
        }
        report.segments = segments.len();
        let next_id = ids.last().map_or(1, |l| l + 1);
        let (active, seg) = new_segment(dir, next_id)?;
        segments.push_back(seg);
        let spool = Spool {
            dir: dir.to_owned(),
            limits,
            segments,
            active,
            synced: 0,
            checked: 0,
            staged: Vec::new(),
            next_id: next_id + 1,
            counters: Counters {
                discarded_records: report.discarded_records,
                discarded_bytes: report.discarded_bytes,
                ..Counters::default()
            },
            latest_confirmed_delivery: None,
            buf: Vec::with_capacity(4096),
            reader: None,
        };
        Ok((spool, report))
    }

    /// Writes a batch. Returns false when it was dropped (full, `drop_newest`).
    pub fn append(
        &mut self,
        seq: u64,
        polled_at: i64,
        readings: u32,
        payload: &[u8],
    ) -> Result<bool, SpoolError> {
        let out = self.append_all(&[NewRecord {
            seq,
            polled_at,
            readings,
            payload,
        }]);
        match out.error {
            Some(e) => Err(e),
            None => Ok(out.kept[0]),
        }
    }

    /// Writes batches in order, in one `write` unless a segment fills or the
    /// bound is reached on the way. A failed write loses the batches it held
    /// (they are not kept, and the error says so); those before are kept.
    pub fn append_all<P: AsRef<[u8]>>(&mut self, records: &[NewRecord<P>]) -> Appended {
        let mut out = Appended {
            kept: vec![false; records.len()],
            lost: 0,
            error: None,
        };
        self.buf.clear();
        self.staged.clear();
        for (i, r) in records.iter().enumerate() {
            let payload = r.payload.as_ref();
            let len = record::encoded_len(payload) as u64;
            let staged_bytes = self.buf.len() as u64;
            let active = self.active_segment();
            let segment_full = active.size + staged_bytes + len > self.limits.segment_bytes()
                && !(active.entries.is_empty() && self.staged.is_empty());
            let over_bound = self.total_bytes() + staged_bytes + len > self.limits.max_bytes;
            if segment_full || over_bound {
                // Rotating or dropping works on what is on disk: write first.
                if let Err(e) = self.write_staged(&mut out) {
                    out.error.get_or_insert(e);
                }
                let room = self.make_room(len, r.readings).and_then(|room| {
                    if room
                        && self.active_segment().size + len > self.limits.segment_bytes()
                        && !self.active_segment().entries.is_empty()
                    {
                        self.rotate()?;
                    }
                    Ok(room)
                });
                match room {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        // The disk refuses: the rest of the burst is lost too.
                        out.lost += records.len() - i;
                        out.error.get_or_insert(e);
                        break;
                    }
                }
            }
            let offset = (self.active_segment().size + self.buf.len() as u64) as u32;
            record::encode(&mut self.buf, r.seq, r.polled_at, r.readings, payload);
            self.staged.push((
                i,
                Entry {
                    info: RecordInfo {
                        offset,
                        len: len as u32,
                        seq: r.seq,
                        polled_at: r.polled_at,
                        readings: r.readings,
                    },
                    state: State::Unsent,
                    delivered_at: None,
                },
            ));
        }
        if let Err(e) = self.write_staged(&mut out) {
            out.error.get_or_insert(e);
        }
        // "0s": every batch kept is on disk before it is sent.
        if self.limits.sync_interval.is_zero() && out.kept.contains(&true) {
            if let Err(e) = self.sync() {
                out.error.get_or_insert(e);
            }
        }
        out
    }

    /// Writes the staged records to the active segment in one call and
    /// indexes them.
    fn write_staged(&mut self, out: &mut Appended) -> Result<(), SpoolError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        // At the segment's known end, not the file's cursor: bytes a failed
        // write left behind are overwritten rather than shifting every
        // later record away from the offset the index gives it.
        let at = self.active_segment().size;
        if let Err(e) = self.active.write_all_at(&self.buf, at) {
            out.lost += self.staged.len();
            self.staged.clear();
            self.buf.clear();
            // Partly written bytes would read back as damage after a crash;
            // start afresh. The write's error is the one to report: if the
            // new segment fails too, the next write goes over these bytes.
            let path = self.active_segment().path.clone();
            if let Err(r) = self.rotate() {
                tracing::warn!(error = %r, "cannot start a new spool segment after a failed write");
            }
            return Err(SpoolError::File(path, e));
        }
        let seg = self.segments.back_mut().expect("active segment");
        seg.size += self.buf.len() as u64;
        for (i, entry) in self.staged.drain(..) {
            seg.pending += 1;
            seg.pending_bytes += u64::from(entry.info.len);
            seg.entries.push(entry);
            out.kept[i] = true;
            self.counters.appended += 1;
        }
        self.buf.clear();
        Ok(())
    }

    /// Frees space for `len` more bytes by the configured policy; false if
    /// the new record must be dropped instead.
    fn make_room(&mut self, len: u64, readings: u32) -> Result<bool, SpoolError> {
        while self.total_bytes() + len > self.limits.max_bytes {
            let can_drop_old = self.segments.len() > 1;
            if self.limits.on_full == OnFull::DropNewest || !can_drop_old {
                if self.limits.on_full == OnFull::DropOldest
                    && !self.active_segment().entries.is_empty()
                {
                    // Only the active segment is left: start a new one so
                    // the old can go.
                    self.rotate()?;
                    continue;
                }
                self.counters.dropped_batches += 1;
                self.counters.dropped_readings += u64::from(readings);
                return Ok(false);
            }
            self.drop_oldest("the spool is full");
        }
        Ok(true)
    }

    fn drop_oldest(&mut self, why: &str) {
        let Some(seg) = self.segments.pop_front() else {
            return;
        };
        let (mut batches, mut readings, mut unconfirmed) = (0u64, 0u64, 0u64);
        for e in &seg.entries {
            match e.state {
                State::Unsent => {
                    batches += 1;
                    readings += u64::from(e.info.readings);
                }
                State::Sending | State::Delivered => unconfirmed += 1,
                State::Done => {}
            }
        }
        self.counters.dropped_batches += batches;
        self.counters.dropped_readings += readings;
        self.counters.dropped_unconfirmed += unconfirmed;
        if batches + unconfirmed > 0 {
            tracing::warn!(segment = %seg.path.display(), batches, readings, sent_but_unconfirmed = unconfirmed,
                "{why}: dropping the oldest batches");
        }
        remove_segment(&seg);
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        // A waiting batch is not left behind unsynced, however recent: the
        // periodic check only looks at the active segment.
        self.write_acks();
        if self.waiting_unsynced(self.active_segment().entries.len()) {
            self.fsync_active()?;
        }
        let (file, seg) = new_segment(&self.dir, self.next_id)?;
        self.next_id += 1;
        self.active = file;
        self.segments.push_back(seg);
        self.synced = 0;
        self.checked = 0;
        // The previous active segment may be all done already.
        self.remove_finished();
        Ok(())
    }

    /// Writes every segment's buffered acks.
    fn write_acks(&mut self) {
        for seg in self.segments.iter_mut() {
            write_acks(seg);
        }
    }

    fn active_segment(&self) -> &Segment {
        self.segments.back().expect("active segment")
    }

    /// Flushes the active segment to the disk if anything was written since,
    /// and writes the confirmations recorded since the last call.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.write_acks();
        if self.synced < self.active_segment().entries.len() {
            self.fsync_active()?;
        }
        Ok(())
    }

    fn fsync_active(&mut self) -> Result<(), SpoolError> {
        self.active
            .sync_data()
            .map_err(|e| SpoolError::File(self.active_segment().path.clone(), e))?;
        self.counters.syncs += 1;
        self.synced = self.active_segment().entries.len();
        Ok(())
    }

    /// Whether one of the active segment's entries before `upto` is neither
    /// on disk nor confirmed.
    fn waiting_unsynced(&self, upto: usize) -> bool {
        let entries = &self.active_segment().entries;
        entries[self.synced.min(upto)..upto.min(entries.len())]
            .iter()
            .any(|e| e.state != State::Done)
    }

    /// How often [`Spool::sync_check`] is to be called: twice per
    /// `sync_interval`, so that a batch is on disk within one interval.
    pub fn check_period(&self) -> Duration {
        if self.limits.sync_interval.is_zero() {
            Duration::from_secs(1) // every write is synced; this is for the acks
        } else {
            (self.limits.sync_interval / 2).max(Duration::from_millis(50))
        }
    }

    /// Writes the confirmations, and fsyncs the active segment if a batch
    /// written before the previous check is neither on disk nor confirmed.
    /// Those written since get until the next check: on a healthy link they
    /// are confirmed well within it.
    pub fn sync_check(&mut self) -> Result<(), SpoolError> {
        self.write_acks();
        if self.waiting_unsynced(self.checked) {
            self.fsync_active()?;
        } else {
            // Everything up to the first waiting batch is confirmed and
            // never needs the disk.
            let entries = &self.active_segment().entries;
            self.synced += entries[self.synced.min(entries.len())..]
                .iter()
                .position(|e| e.state != State::Done)
                .unwrap_or(entries.len().saturating_sub(self.synced));
        }
        self.checked = self.active_segment().entries.len();
        Ok(())
    }

    /// Periodic upkeep: the age bound.
    pub fn maintain(&mut self, now_ms: i64) -> Result<(), SpoolError> {
        let max_age = self.limits.max_age.as_millis() as i64;
        while self.segments.len() > 1
            && self.segments[0]
                .newest_polled()
                .is_some_and(|t| now_ms - t > max_age)
        {
            self.drop_oldest("batches older than spool.max_age");
        }
        Ok(())
    }

    /// Highest sequence number written (this run or before).
    pub fn last_seq(&self) -> Option<u64> {
        self.segments
            .iter()
            .rev()
            .find_map(|s| s.entries.last())
            .map(|e| e.info.seq)
    }

    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    pub fn pending_batches(&self) -> u64 {
        self.segments.iter().map(|s| s.pending as u64).sum()
    }

    pub fn pending_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.pending_bytes).sum()
    }

    /// Poll time of the oldest batch not yet done.
    pub fn oldest_pending(&self) -> Option<i64> {
        self.segments
            .iter()
            .flat_map(|s| s.entries.iter())
            .find(|e| e.state != State::Done)
            .map(|e| e.info.polled_at)
    }

    fn locate(&self, seq: u64) -> Option<(usize, usize)> {
        // Segments hold increasing, disjoint runs of sequence numbers.
        let si = self
            .segments
            .partition_point(|s| s.entries.last().is_some_and(|e| e.info.seq < seq));
        let seg = self.segments.get(si)?;
        Some((si, seg.find(seq)?))
    }

    pub fn state(&self, seq: u64) -> Option<State> {
        let (si, i) = self.locate(seq)?;
        Some(self.segments[si].entries[i].state)
    }

    /// Moves a batch to `state` (not `Done`: see [`Spool::finish`]); a
    /// finished or unknown batch is left alone.
    pub fn set_state(&mut self, seq: u64, state: State) {
        debug_assert!(state != State::Done);
        if let Some((si, i)) = self.locate(seq) {
            let e = &mut self.segments[si].entries[i];
            if e.state != State::Done {
                e.state = state;
                e.delivered_at = (state == State::Delivered).then(Instant::now);
            }
        }
    }

    /// Marks every batch with a sequence number in `first..=last` done,
    /// records it on disk, and deletes segments that are all done.
    /// Returns how many were pending.
    pub fn finish(&mut self, first: u64, last: u64) -> u64 {
        let mut finished = 0;
        let start = self
            .segments
            .partition_point(|s| s.entries.last().is_some_and(|e| e.info.seq < first));
        for seg in self.segments.iter_mut().skip(start) {
            if seg.entries.first().is_some_and(|e| e.info.seq > last) {
                break;
            }
            let from = seg.entries.partition_point(|e| e.info.seq < first);
            for e in seg.entries[from..].iter_mut() {
                if e.info.seq > last {
                    break;
                }
                if e.state != State::Done {
                    if let Some(t) = e.delivered_at {
                        if self.latest_confirmed_delivery.is_none_or(|l| t > l) {
                            self.latest_confirmed_delivery = Some(t);
                        }
                    }
                    e.state = State::Done;
                    seg.pending -= 1;
                    seg.pending_bytes -= u64::from(e.info.len);
                    finished += 1;
                    let offset = e.info.offset.to_le_bytes();
                    seg.unwritten_acks.extend_from_slice(&offset);
                    seg.unwritten_acks
                        .extend_from_slice(&record::checksum(&offset).to_le_bytes());
                }
            }
            if seg.unwritten_acks.len() >= ACK_BUFFER {
                write_acks(seg);
            }
        }
        if finished > 0 {
            self.remove_finished();
        }
        finished
    }

    fn remove_finished(&mut self) {
        let last = self.segments.len() - 1;
        let mut i = 0;
        self.segments.retain(|s| {
            let keep = i == last || s.pending > 0;
            i += 1;
            if !keep {
                remove_segment(s);
            }
            keep
        });
    }

    /// Every batch in `from` states back to `Unsent`, to be sent again.
    /// `older_than` limits `Delivered` ones to those delivered that long ago.
    pub fn resend(&mut self, from: &[State], older_than: Option<Duration>) -> u64 {
        let mut n = 0;
        for e in self.segments.iter_mut().flat_map(|s| s.entries.iter_mut()) {
            if from.contains(&e.state)
                && (e.state != State::Delivered
                    || older_than.is_none_or(|d| e.delivered_at.is_none_or(|t| t.elapsed() >= d)))
            {
                e.state = State::Unsent;
                n += 1;
            }
        }
        n
    }

    /// Delivered batches the collector has overtaken: it confirmed a batch
    /// delivered more than `grace` after them, and batches reach it in the
    /// order they were delivered, so these were lost on the way (a broker
    /// that forgot them, a collector not yet subscribed). Back to `Unsent`.
    pub fn resend_overtaken(&mut self, grace: Duration) -> u64 {
        let Some(latest) = self.latest_confirmed_delivery else {
            return 0;
        };
        let mut n = 0;
        for e in self.segments.iter_mut().flat_map(|s| s.entries.iter_mut()) {
            if e.state == State::Delivered && e.delivered_at.is_some_and(|t| t + grace < latest) {
                e.state = State::Unsent;
                n += 1;
            }
        }
        n
    }

    /// The oldest unsent batch at or after `cursor`, with its position; or,
    /// if there is none, the end position, so that the next search starts
    /// there instead of walking everything again.
    pub fn next_unsent(&self, cursor: Option<Cursor>) -> (Cursor, Option<u64>) {
        let start = cursor.map_or(0, |c| c.segment);
        for seg in self.segments.iter().filter(|s| s.id >= start) {
            let from = match cursor {
                Some(c) if c.segment == seg.id => c.index.min(seg.entries.len()),
                _ => 0,
            };
            if let Some(i) = seg.entries[from..]
                .iter()
                .position(|e| e.state == State::Unsent)
            {
                let index = from + i;
                let at = Cursor {
                    segment: seg.id,
                    index,
                };
                return (at, Some(seg.entries[index].info.seq));
            }
        }
        let last = self.active_segment();
        let end = Cursor {
            segment: last.id,
            index: last.entries.len(),
        };
        (end, None)
    }

    /// Reads a batch's payload back from disk (checksum verified).
    pub fn payload(&mut self, seq: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        let Some((si, i)) = self.locate(seq) else {
            return Ok(None);
        };
        let seg = &self.segments[si];
        let info = seg.entries[i].info;
        // A backlog is read segment by segment: keep the file open.
        if self.reader.as_ref().is_none_or(|(id, _)| *id != seg.id) {
            let f = File::open(&seg.path).map_err(|e| SpoolError::File(seg.path.clone(), e))?;
            self.reader = Some((seg.id, f));
        }
        let (_, f) = self.reader.as_ref().expect("opened above");
        let mut bytes = vec![0; info.len as usize];
        f.read_exact_at(&mut bytes, u64::from(info.offset))
            .map_err(|e| SpoolError::File(seg.path.clone(), e))?;
        Ok(record::payload(&bytes).map(<[u8]>::to_vec))
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.seg"))
}

fn new_segment(dir: &Path, id: u64) -> Result<(File, Segment), SpoolError> {
    let path = segment_path(dir, id);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| SpoolError::File(path.clone(), e))?;
    f.write_all(record::MAGIC)
        .and_then(|()| f.sync_all())
        .map_err(|e| SpoolError::File(path.clone(), e))?;
    // The new name must survive a power loss too.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    let seg = Segment {
        id,
        path,
        entries: Vec::new(),
        pending: 0,
        pending_bytes: 0,
        size: record::MAGIC.len() as u64,
        acks: None,
        unwritten_acks: Vec::new(),
    };
    Ok((f, seg))
}

fn remove_segment(seg: &Segment) {
    // The ack file first: a crash in between leaves a segment without acks
    // (resent, harmless) rather than acks without their segment.
    let _ = fs::remove_file(seg.ack_path());
    if let Err(e) = fs::remove_file(&seg.path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(file = %seg.path.display(), error = %e, "cannot delete spool segment");
        }
    }
}

/// Acks buffered beyond this are written at once rather than at the next sync.
const ACK_BUFFER: usize = 4096;

/// Appends a segment's buffered acks to its ack file.
fn write_acks(seg: &mut Segment) {
    if seg.unwritten_acks.is_empty() {
        return;
    }
    let mut write = || -> io::Result<()> {
        if seg.acks.is_none() {
            seg.acks = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(seg.ack_path())?,
            );
        }
        seg.acks
            .as_mut()
            .expect("opened")
            .write_all(&seg.unwritten_acks)
    };
    if let Err(e) = write() {
        // Only costs a resend after a restart.
        tracing::warn!(file = %seg.ack_path().display(), error = %e, "cannot record confirmations");
    }
    seg.unwritten_acks.clear();
}

impl Drop for Spool {
    /// A clean stop keeps every confirmation, synced or not.
    fn drop(&mut self) {
        self.write_acks();
    }
}

/// Offsets of the records an ack file marks done, sorted. Entries are
/// `offset u32 | crc u32`; a torn or damaged entry is ignored (its batch is
/// sent again).
fn read_acks(path: &Path) -> Vec<u32> {
    let Ok(bytes) = fs::read(path) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = bytes
        .chunks_exact(8)
        .filter_map(|c| {
            let (off, crc) = c.split_at(4);
            (record::checksum(off).to_le_bytes() == crc)
                .then(|| u32::from_le_bytes([off[0], off[1], off[2], off[3]]))
        })
        .collect();
    out.sort_unstable();
    out
}

fn describe(path: &Path, d: &Damage, bad_header: bool) -> String {
    let what = if bad_header {
        "no valid header; whole file discarded"
    } else if d.tail {
        "torn tail (interrupted write) discarded"
    } else {
        "damaged bytes discarded"
    };
    format!(
        "{}: {} bytes at offset {}: {what}",
        path.display(),
        d.bytes,
        d.offset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_bytes: u64) -> Limits {
        Limits {
            max_bytes,
            max_age: Duration::from_secs(3600),
            on_full: OnFull::DropOldest,
            sync_interval: Duration::from_secs(1),
        }
    }

    fn payload(seq: u64) -> Vec<u8> {
        format!("{{\"v\":1,\"seq\":{seq},\"pad\":\"{}\"}}", "r".repeat(200)).into_bytes()
    }

    fn fill(spool: &mut Spool, seqs: std::ops::RangeInclusive<u64>) {
        for s in seqs {
            assert!(spool.append(s, 1_000 * s as i64, 2, &payload(s)).unwrap());
        }
    }

    fn pending_seqs(spool: &Spool) -> Vec<u64> {
        let mut out = Vec::new();
        let mut cursor = None;
        while let (c, Some(seq)) = spool.next_unsent(cursor) {
            out.push(seq);
            cursor = Some(Cursor {
                index: c.index + 1,
                ..c
            });
        }
        out
    }

    #[test]
    fn batches_survive_a_restart_until_finished() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, report) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        assert_eq!(report, OpenReport::default());
        fill(&mut s, 1..=10);
        assert_eq!(s.finish(1, 4), 4);
        s.sync().unwrap();
        std::mem::forget(s); // as if killed: no destructor runs
        let (mut s, report) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        assert_eq!(report.pending_batches, 6);
        assert_eq!(report.last_seq, Some(10));
        assert_eq!(pending_seqs(&s), (5..=10).collect::<Vec<_>>());
        let p = s.payload(7).unwrap().unwrap();
        assert_eq!(p, payload(7));
        assert_eq!(s.finish(0, 100), 6);
        drop(s);
        let (_, report) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        assert_eq!(report.pending_batches, 0);
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(
            files, 1,
            "finished segments are deleted; only the new active one is left"
        );
    }

    #[test]
    fn confirmations_reach_the_disk_at_the_next_sync_or_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        fill(&mut s, 1..=6);
        s.sync().unwrap();
        assert_eq!(s.finish(1, 2), 2);
        // Killed before the next sync: those two are sent again (at least
        // once, never lost).
        std::mem::forget(s);
        let (mut s, report) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        assert_eq!(pending_seqs(&s), (1..=6).collect::<Vec<_>>());
        assert_eq!(report.pending_batches, 6);
        assert_eq!(s.finish(1, 3), 3);
        drop(s); // a clean stop writes them
        let (s, _) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        assert_eq!(pending_seqs(&s), (4..=6).collect::<Vec<_>>());
    }

    #[test]
    fn a_burst_is_kept_in_order_across_segments_and_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 * 1024; // segments of 8 KiB: a burst spans many
        let (mut s, _) = Spool::open(dir.path(), limits(max)).unwrap();
        let payloads: Vec<Vec<u8>> = (1..=600).map(payload).collect();
        let burst: Vec<NewRecord<&Vec<u8>>> = payloads
            .iter()
            .zip(1u64..)
            .map(|(p, seq)| NewRecord {
                seq,
                polled_at: 1_000 * seq as i64,
                readings: 2,
                payload: p,
            })
            .collect();
        let out = s.append_all(&burst);
        assert!(out.error.is_none());
        assert!(s.total_bytes() <= max, "{} > {max}", s.total_bytes());
        let kept = pending_seqs(&s);
        assert_eq!(*kept.last().unwrap(), 600, "the newest are kept");
        assert_eq!(kept, (kept[0]..=600).collect::<Vec<_>>(), "no holes");
        assert_eq!(s.counters.dropped_batches, 600 - kept.len() as u64);
        assert_eq!(s.payload(kept[0]).unwrap().unwrap(), payload(kept[0]));
        assert_eq!(s.payload(600).unwrap().unwrap(), payload(600));
        std::mem::forget(s); // killed: what was written is on disk
        let (mut s, report) = Spool::open(dir.path(), limits(max)).unwrap();
        assert_eq!(report.discarded_records, 0, "{:?}", report.damage);
        assert_eq!(pending_seqs(&s), kept);
        assert_eq!(s.payload(599).unwrap().unwrap(), payload(599));
    }

    #[test]
    fn only_batches_left_waiting_unconfirmed_are_forced_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        fill(&mut s, 1..=3);
        s.finish(1, 3);
        s.sync_check().unwrap();
        s.sync_check().unwrap();
        assert_eq!(s.counters.syncs, 0, "confirmed batches need no fsync");

        fill(&mut s, 4..=5);
        s.finish(5, 5);
        s.sync_check().unwrap();
        assert_eq!(s.counters.syncs, 0, "4 was written since the last check");
        s.sync_check().unwrap();
        assert_eq!(s.counters.syncs, 1, "4 still waits a check later");
        s.sync_check().unwrap();
        assert_eq!(s.counters.syncs, 1, "nothing new since");

        fill(&mut s, 6..=6);
        s.sync_check().unwrap();
        s.finish(6, 6);
        s.sync_check().unwrap();
        assert_eq!(s.counters.syncs, 1, "6 was confirmed in time");

        fill(&mut s, 7..=7);
        s.sync().unwrap();
        assert_eq!(s.counters.syncs, 2, "a stop syncs whatever is written");
    }

    #[test]
    fn when_full_the_oldest_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 * 1024;
        let (mut s, _) = Spool::open(dir.path(), limits(max)).unwrap();
        fill(&mut s, 1..=2000);
        assert!(s.total_bytes() <= max, "{} > {max}", s.total_bytes());
        let kept = pending_seqs(&s);
        assert_eq!(*kept.last().unwrap(), 2000, "the newest are kept");
        assert_eq!(
            kept,
            (kept[0]..=2000).collect::<Vec<_>>(),
            "what is kept has no holes"
        );
        let dropped = 2000 - kept.len() as u64;
        assert!(dropped > 0);
        assert_eq!(s.counters.dropped_batches, dropped);
        assert_eq!(s.counters.dropped_readings, dropped * 2);
    }

    #[test]
    fn drop_newest_keeps_what_is_spooled() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = limits(64 * 1024);
        l.on_full = OnFull::DropNewest;
        let (mut s, _) = Spool::open(dir.path(), l).unwrap();
        let mut accepted = 0;
        for seq in 1..=2000 {
            if s.append(seq, 0, 1, &payload(seq)).unwrap() {
                accepted += 1;
            }
        }
        assert_eq!(pending_seqs(&s), (1..=accepted).collect::<Vec<_>>());
        assert_eq!(s.counters.dropped_batches, 2000 - accepted);
    }

    #[test]
    fn batches_older_than_the_age_bound_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), limits(64 * 1024)).unwrap();
        // Old enough to span several segments, then fresh ones.
        fill(&mut s, 1..=400);
        let now = 400_000 + 3_600_000 + 1;
        s.maintain(now).unwrap();
        assert!(s.counters.dropped_batches > 0);
        assert_eq!(s.counters.dropped_batches + s.pending_batches(), 400);
    }

    #[test]
    fn a_corrupted_record_is_discarded_and_reported_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        fill(&mut s, 1..=20);
        drop(s);
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        // and a torn tail
        bytes.truncate(bytes.len() - 5);
        fs::write(&seg, &bytes).unwrap();
        let (s, report) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        assert_eq!(report.discarded_records, 2, "{:?}", report.damage);
        assert_eq!(report.pending_batches, 18);
        assert_eq!(pending_seqs(&s).len(), 18);
        assert!(report.damage.iter().any(|d| d.contains("torn tail")));
        assert_eq!(s.counters.discarded_records, 2);
    }

    #[test]
    fn states_follow_delivery_and_resend_returns_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        fill(&mut s, 1..=3);
        s.set_state(1, State::Sending);
        s.set_state(2, State::Delivered);
        assert_eq!(pending_seqs(&s), vec![3]);
        assert_eq!(
            s.resend(&[State::Delivered], Some(Duration::from_secs(60))),
            0,
            "too recent"
        );
        assert_eq!(s.resend(&[State::Sending, State::Delivered], None), 2);
        assert_eq!(pending_seqs(&s), vec![1, 2, 3]);
        s.finish(2, 2);
        s.set_state(2, State::Unsent);
        assert_eq!(s.state(2), Some(State::Done), "done stays done");
    }

    #[test]
    fn a_batch_overtaken_by_a_later_confirmed_one_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = Spool::open(dir.path(), limits(1 << 20)).unwrap();
        fill(&mut s, 1..=3);
        s.set_state(1, State::Delivered); // lost by the broker
        std::thread::sleep(Duration::from_millis(30));
        s.set_state(2, State::Delivered);
        s.set_state(3, State::Delivered);
        assert_eq!(
            s.resend_overtaken(Duration::from_millis(10)),
            0,
            "nothing confirmed yet"
        );
        s.finish(2, 2);
        assert_eq!(s.resend_overtaken(Duration::from_millis(10)), 1);
        assert_eq!(s.state(1), Some(State::Unsent));
        assert_eq!(
            s.state(3),
            Some(State::Delivered),
            "delivered after the confirmed one: just waiting"
        );
    }
}
