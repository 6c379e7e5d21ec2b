//! The spool's on-disk record format, and the scan that reads a segment back
//! after a crash. Pure: bytes in, records and damage out.
//!
//! A segment is a magic header followed by records:
//!
//! ```text
//! len u32 | crc u32 | seq u64 | polled_at i64 | readings u32 | payload (len − 20 bytes)
//! ```
//!
//! little-endian, `crc` a CRC-32C of everything after it. A record is only
//! trusted if its length fits and its checksum matches. A torn tail (the
//! process or the power died mid-write) fails one of those and is discarded;
//! so is damage in the middle of a file, after which the scan resynchronises
//! on the next record that checks out, so one bad sector costs the records it
//! touched, not the rest of the segment.

use crc::{Crc, Table, CRC_32_ISCSI};

pub const MAGIC: &[u8; 8] = b"RGSPOOL1";
/// `len` and `crc`.
pub const FRAME: usize = 8;
/// `seq`, `polled_at`, `readings`.
pub const HEADER: usize = 20;
/// Largest body accepted when reading back: a batch payload is capped well
/// below this, so a larger length is damage.
pub const MAX_BODY: usize = HEADER + roomguard_protocol::MAX_PAYLOAD_BYTES + 1024;

/// Sixteen-byte-at-a-time tables (16 KiB): every batch is checksummed as it
/// is spooled, and the crate's default byte-at-a-time table was a tenth of
/// the agent's CPU in the polling benchmark. Same CRC, so old spools read back.
static CASTAGNOLI: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

pub fn checksum(bytes: &[u8]) -> u32 {
    CASTAGNOLI.checksum(bytes)
}

/// What the scan learns about one intact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    /// Where the record starts in the segment.
    pub offset: u32,
    /// Bytes on disk, frame included.
    pub len: u32,
    pub seq: u64,
    pub polled_at: i64,
    pub readings: u32,
}

/// A stretch of bytes that held no intact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: u32,
    pub bytes: u32,
    /// At the end of the file (an interrupted write) rather than in the middle.
    pub tail: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<RecordInfo>,
    pub damage: Vec<Damage>,
    /// The header was missing or wrong: nothing in the file was trusted.
    pub bad_header: bool,
}

/// Bytes [`encode`] appends for `payload`.
pub fn encoded_len(payload: &[u8]) -> usize {
    FRAME + HEADER + payload.len()
}

/// Appends one record to `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, polled_at: i64, readings: u32, payload: &[u8]) {
    let body_len = (HEADER + payload.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&polled_at.to_le_bytes());
    out.extend_from_slice(&readings.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = checksum(&out[start + FRAME..]);
    out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
}

/// The payload of the record at the start of `bytes`, if it is intact.
pub fn payload(bytes: &[u8]) -> Option<&[u8]> {
    let (len, body) = frame(bytes)?;
    Some(&body[HEADER..len])
}

/// The body of a record at the start of `bytes` if its length fits and its
/// checksum matches.
fn frame(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    if !(HEADER..=MAX_BODY).contains(&len) {
        return None;
    }
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(FRAME..FRAME + len)?;
    (checksum(body) == crc).then_some((len, body))
}

fn info(offset: usize, bytes: &[u8]) -> Option<RecordInfo> {
    let (len, body) = frame(&bytes[offset..])?;
    Some(RecordInfo {
        offset: offset as u32,
        len: (FRAME + len) as u32,
        seq: u64::from_le_bytes(body[0..8].try_into().ok()?),
        polled_at: i64::from_le_bytes(body[8..16].try_into().ok()?),
        readings: u32::from_le_bytes(body[16..20].try_into().ok()?),
    })
}

/// Reads every intact record of a segment's bytes, and where it was damaged.
pub fn scan(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        scan.bad_header = true;
        if !bytes.is_empty() {
            scan.damage.push(Damage {
                offset: 0,
                bytes: bytes.len() as u32,
                tail: false,
            });
        }
        return scan;
    }
    let mut at = MAGIC.len();
    while at < bytes.len() {
        if let Some(r) = info(at, bytes) {
            scan.records.push(r);
            at += r.len as usize;
            continue;
        }
        // Damage: look for the next offset holding an intact record.
        let next = (at + 1..bytes.len().saturating_sub(FRAME + HEADER - 1))
            .find(|&o| plausible(bytes, o) && info(o, bytes).is_some());
        let end = next.unwrap_or(bytes.len());
        scan.damage.push(Damage {
            offset: at as u32,
            bytes: (end - at) as u32,
            tail: next.is_none(),
        });
        at = end;
    }
    scan
}

/// A cheap filter before the checksum while resynchronising: a length in
/// range and inside the file. Garbage rarely passes, so the checksum (the
/// real test) runs on few candidates.
fn plausible(bytes: &[u8], o: usize) -> bool {
    let Some(len) = bytes.get(o..o + 4) else {
        return false;
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    (HEADER..=MAX_BODY).contains(&len) && o + FRAME + len <= bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(n: u64) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for seq in 1..=n {
            let payload = format!("{{\"seq\":{seq},\"pad\":\"{}\"}}", "x".repeat(seq as usize));
            encode(
                &mut out,
                seq,
                1_000 + seq as i64,
                seq as u32,
                payload.as_bytes(),
            );
        }
        out
    }

    #[test]
    fn records_read_back_in_order_with_their_fields() {
        let bytes = segment(5);
        let scan = scan(&bytes);
        assert!(scan.damage.is_empty());
        let seqs: Vec<u64> = scan.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
        let r = scan.records[2];
        assert_eq!((r.polled_at, r.readings), (1_003, 3));
        let p = payload(&bytes[r.offset as usize..]).unwrap();
        assert!(p.starts_with(b"{\"seq\":3,"));
    }

    #[test]
    fn a_torn_tail_is_reported_and_the_records_before_it_kept() {
        let bytes = segment(5);
        let cut = &bytes[..bytes.len() - 7];
        let scan = scan(cut);
        assert_eq!(scan.records.len(), 4);
        assert_eq!(scan.damage.len(), 1);
        assert!(scan.damage[0].tail);
    }

    #[test]
    fn damage_in_the_middle_costs_only_the_record_it_hit() {
        let mut bytes = segment(5);
        let victim = scan(&bytes).records[1];
        bytes[victim.offset as usize + 30] ^= 0x5a;
        let scan = scan(&bytes);
        let seqs: Vec<u64> = scan.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 3, 4, 5]);
        assert_eq!(
            scan.damage,
            vec![Damage {
                offset: victim.offset,
                bytes: victim.len,
                tail: false
            }]
        );
    }

    #[test]
    fn a_file_without_the_header_is_not_trusted() {
        let mut bytes = segment(2);
        bytes[0] = b'X';
        let scan = scan(&bytes);
        assert!(scan.bad_header);
        assert!(scan.records.is_empty());
    }

    proptest! {
        /// Whatever happens to the bytes, the scan terminates, never panics,
        /// accounts for every byte, and returns only records that were written.
        #[test]
        fn any_damage_is_survived(cut in 0usize..2000, flips in proptest::collection::vec((0usize..2000, 1u8..=255), 0..6)) {
            let mut bytes = segment(12);
            for (at, x) in flips {
                if at < bytes.len() { bytes[at] ^= x; }
            }
            bytes.truncate(bytes.len().min(MAGIC.len() + cut * 2));
            let s = scan(&bytes);
            let covered: u64 = s.records.iter().map(|r| r.len as u64).chain(s.damage.iter().map(|d| d.bytes as u64)).sum();
            if !s.bad_header {
                prop_assert_eq!(covered + MAGIC.len() as u64, bytes.len() as u64);
            }
            for r in &s.records {
                prop_assert!((1..=12).contains(&r.seq));
                prop_assert_eq!(r.readings as u64, r.seq);
            }
        }
    }
}
