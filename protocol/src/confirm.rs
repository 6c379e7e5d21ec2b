//! The collector's confirmation to an agent: which of its batches are now
//! committed to the store, and which it refuses for good.
//!
//! A broker's PUBACK only says the broker has the message. A broker that
//! restarts without persistence, or overflows the queue it keeps for an
//! offline collector, loses messages it acknowledged; so an agent keeps each
//! batch in its spool until the collector says it is stored. Sequence numbers
//! are listed as inclusive ranges because an agent's batches arrive mostly in
//! order: a second's worth from one agent is usually a single range.

use crate::PROTOCOL_VERSION;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Most ranges in one confirmation; a collector sends more messages instead.
pub const MAX_RANGES: usize = 4096;

/// Inclusive range of batch sequence numbers, `[first, last]` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange(pub u64, pub u64);

impl SeqRange {
    pub fn contains(&self, seq: u64) -> bool {
        self.0 <= seq && seq <= self.1
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirm {
    pub v: u32,
    /// Batches committed (or already held: a duplicate is stored too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stored: Vec<SeqRange>,
    /// Batches the collector will never store (invalid): sending them again
    /// cannot help.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<SeqRange>,
}

#[derive(Debug, Error)]
pub enum ConfirmError {
    #[error("not a confirmation: {0}")]
    Malformed(String),
    #[error("confirmation version {0} is not known to this build")]
    UnknownVersion(u32),
    #[error("{0} ranges, more than the {MAX_RANGES} allowed")]
    TooMany(usize),
    #[error("range [{0}, {1}] ends before it starts")]
    Reversed(u64, u64),
}

impl Confirm {
    /// A confirmation of `stored` and `refused` (any order, repeats allowed).
    pub fn new(stored: Vec<u64>, refused: Vec<u64>) -> Confirm {
        Confirm {
            v: PROTOCOL_VERSION,
            stored: ranges(stored),
            refused: ranges(refused),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks a confirmation; pure, safe on any input.
    pub fn from_json(payload: &[u8]) -> Result<Confirm, ConfirmError> {
        let c: Confirm =
            serde_json::from_slice(payload).map_err(|e| ConfirmError::Malformed(e.to_string()))?;
        if c.v != PROTOCOL_VERSION {
            return Err(ConfirmError::UnknownVersion(c.v));
        }
        let n = c.stored.len() + c.refused.len();
        if n > MAX_RANGES {
            return Err(ConfirmError::TooMany(n));
        }
        if let Some(r) = c.stored.iter().chain(&c.refused).find(|r| r.0 > r.1) {
            return Err(ConfirmError::Reversed(r.0, r.1));
        }
        Ok(c)
    }
}

/// Sorted, merged inclusive ranges covering exactly the numbers in `seqs`.
pub fn ranges(mut seqs: Vec<u64>) -> Vec<SeqRange> {
    seqs.sort_unstable();
    seqs.dedup();
    let mut out: Vec<SeqRange> = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some(r) if r.1 + 1 == s => r.1 = s,
            _ => out.push(SeqRange(s, s)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn consecutive_numbers_become_one_range() {
        assert_eq!(
            ranges(vec![5, 3, 4, 9, 4, 10]),
            vec![SeqRange(3, 5), SeqRange(9, 10)]
        );
    }

    #[test]
    fn a_confirmation_survives_the_wire() {
        let c = Confirm::new(vec![1, 2, 3, 7], vec![5]);
        assert_eq!(Confirm::from_json(&c.to_json()).unwrap(), c);
        assert_eq!(
            String::from_utf8(c.to_json()).unwrap(),
            r#"{"v":1,"stored":[[1,3],[7,7]],"refused":[[5,5]]}"#
        );
    }

    #[test]
    fn reversed_ranges_and_foreign_versions_are_refused() {
        assert!(matches!(
            Confirm::from_json(br#"{"v":1,"stored":[[9,3]]}"#),
            Err(ConfirmError::Reversed(9, 3))
        ));
        assert!(matches!(
            Confirm::from_json(br#"{"v":2}"#),
            Err(ConfirmError::UnknownVersion(2))
        ));
        assert!(Confirm::from_json(b"\xff").is_err());
    }

    proptest! {
        #[test]
        fn ranges_cover_exactly_the_given_numbers(seqs in proptest::collection::vec(0u64..200, 0..100)) {
            let rs = ranges(seqs.clone());
            for s in 0..200u64 {
                prop_assert_eq!(rs.iter().any(|r| r.contains(s)), seqs.contains(&s));
            }
            for w in rs.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "ranges overlap or touch: {:?}", w);
            }
        }
    }
}
