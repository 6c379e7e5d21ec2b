//! A batch: the readings of one device poll, the unit of delivery.
//!
//! One message per poll (never one per value) keeps broker load proportional to
//! devices rather than points, and gives every reading of a poll one sequence
//! number, which is what the collector deduplicates on.

use crate::ident::validate_id;
use crate::topic::Topic;
use crate::{MAX_PAYLOAD_BYTES, MAX_READINGS_PER_BATCH, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thiserror::Error;

/// Readings stamped before this (2000-01-01T00:00:00Z, in ms) come from a
/// device or agent whose clock was never set.
pub const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;

/// How far ahead of the collector's clock a reading may be stamped.
pub const MAX_FUTURE_SKEW_MS: i64 = 24 * 3600 * 1000;

/// Longest unit or bad-quality reason accepted.
pub const MAX_TEXT_LEN: usize = 256;

/// Everything one device poll produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Payload version, always [`PROTOCOL_VERSION`] when written by this build.
    pub v: u32,
    pub site: String,
    pub agent: String,
    /// Per-agent sequence number. Strictly increasing across agent restarts
    /// (gaps are allowed); `(site, agent, seq)` identifies a batch.
    pub seq: u64,
    /// The device that was polled; every reading is of this device.
    pub device: String,
    /// When the poll started, ms since the Unix epoch (UTC).
    pub polled_at: i64,
    /// True when the batch is sent late from the agent's backlog rather than live.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backfill: bool,
    /// What the device's points are (room, quantity, unit). Sent with a
    /// device's first batch and then from time to time, not with every
    /// batch: labels change rarely, and repeating them in every reading
    /// would triple the size of every message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<PointMeta>,
    pub readings: Vec<Reading>,
}

/// A label shared by every reading of a point: cloned per reading as a
/// reference count, not a copy (an agent makes thousands of readings a second).
pub type Label = Arc<str>;

/// What a point is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointMeta {
    /// Point id, unique within the site.
    pub id: Label,
    pub room: Label,
    /// What is measured: `temperature`, `humidity`, `h2_lfl`, `voltage`, … (see docs/PROTOCOL.md).
    pub quantity: Label,
    /// Unit of values: `°C`, `%RH`, `%LFL`, `V`, `A`, `Hz`, or empty for states.
    #[serde(default = "empty_label")]
    pub unit: Label,
}

fn empty_label() -> Label {
    Arc::from("")
}

/// One value of one point at one time. Short field names: there are
/// thousands of these a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Point id (`p`).
    #[serde(rename = "p")]
    pub point: Label,
    /// The value (`v`); absent when the reading is bad or the point is text.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// A state name or text (`x`): an enumeration's meaning (`on_battery` for
    /// UPS-MIB upsOutputSource 5, alongside value 5) or an ASCII string
    /// register (then without a value).
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Event time (`t`): when the value was read, ms since the Unix epoch (UTC).
    #[serde(rename = "t")]
    pub ts: i64,
    /// Absent when good; `"bad": "reason"` when not.
    #[serde(
        rename = "bad",
        default,
        skip_serializing_if = "Quality::is_good",
        with = "bad_reason"
    )]
    pub quality: Quality,
}

/// Whether a reading can be trusted. A bad reading says why, so that "the
/// sensor says 0" and "the sensor did not answer" are never confused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Quality {
    #[default]
    Good,
    Bad(String),
}

impl Quality {
    pub fn is_good(&self) -> bool {
        matches!(self, Quality::Good)
    }
}

/// `Quality` on the wire: only the reason of a bad reading is written.
mod bad_reason {
    use super::Quality;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(q: &Quality, s: S) -> Result<S::Ok, S::Error> {
        match q {
            Quality::Bad(reason) => s.serialize_str(reason),
            Quality::Good => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Quality, D::Error> {
        Ok(match Option::<String>::deserialize(d)? {
            Some(reason) => Quality::Bad(reason),
            None => Quality::Good,
        })
    }
}

/// Why the collector refused a message. Each has a stable label for the
/// `rejected by reason` counter.
#[derive(Debug, Error, PartialEq)]
pub enum RejectReason {
    #[error("payload is {0} bytes, the limit is {MAX_PAYLOAD_BYTES}")]
    TooLarge(usize),
    #[error("payload is not a valid batch: {0}")]
    Malformed(String),
    #[error("payload version {0} is not known to this build (it speaks {PROTOCOL_VERSION})")]
    UnknownVersion(u32),
    #[error("payload says site {payload_site:?} agent {payload_agent:?} but was published on the topic of site {topic_site:?} agent {topic_agent:?}")]
    IdentityMismatch {
        payload_site: String,
        payload_agent: String,
        topic_site: String,
        topic_agent: String,
    },
    #[error("invalid batch: {0}")]
    Invalid(String),
}

impl RejectReason {
    /// Stable metric label.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::TooLarge(_) => "too_large",
            RejectReason::Malformed(_) => "malformed",
            RejectReason::UnknownVersion(_) => "unknown_version",
            RejectReason::IdentityMismatch { .. } => "identity_mismatch",
            RejectReason::Invalid(_) => "invalid",
        }
    }
}

impl Batch {
    pub fn to_json(&self) -> Vec<u8> {
        // Sized up front: a reading takes about 200 bytes, and growing the
        // buffer by doubling would copy it several times.
        let mut out = Vec::with_capacity(256 + 224 * self.readings.len());
        // Serialising plain structs of strings and numbers cannot fail; non-finite
        // floats become null, which decode_batch then refuses for good readings.
        let _ = serde_json::to_writer(&mut out, self);
        out
    }
}

/// The same encoded batch marked as backfill (sent late, from the agent's
/// spool). The spool keeps payloads as first encoded; re-encoding each one
/// when a backlog is replayed would cost far more than this splice, which is
/// valid because `to_json` never writes `backfill` when it is false.
pub fn mark_backfill(payload: &[u8]) -> Vec<u8> {
    const MARK: &[u8] = b"{\"backfill\":true,";
    match payload.split_first() {
        Some((b'{', rest)) if !rest.starts_with(b"}") => {
            let mut out = Vec::with_capacity(payload.len() + MARK.len());
            out.extend_from_slice(MARK);
            out.extend_from_slice(rest);
            out
        }
        _ => payload.to_vec(),
    }
}

/// Decodes and validates a batch received on `topic`.
///
/// `now_ms` is the receiver's clock, used to refuse readings stamped
/// implausibly far in the future. Pure: no I/O, safe on any input.
pub fn decode_batch(topic: &Topic, payload: &[u8], now_ms: i64) -> Result<Batch, RejectReason> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(RejectReason::TooLarge(payload.len()));
    }
    // Read the version first so that a future, differently shaped payload is
    // reported as an unknown version rather than as garbage.
    #[derive(Deserialize)]
    struct VersionOnly {
        v: u32,
    }
    let VersionOnly { v } = serde_json::from_slice(payload)
        .map_err(|e| RejectReason::Malformed(short(&e.to_string())))?;
    if v != PROTOCOL_VERSION {
        return Err(RejectReason::UnknownVersion(v));
    }
    let batch: Batch = serde_json::from_slice(payload)
        .map_err(|e| RejectReason::Malformed(short(&e.to_string())))?;
    if batch.site != topic.site || batch.agent != topic.agent {
        return Err(RejectReason::IdentityMismatch {
            payload_site: short(&batch.site),
            payload_agent: short(&batch.agent),
            topic_site: topic.site.clone(),
            topic_agent: topic.agent.clone(),
        });
    }
    batch.validate(now_ms)?;
    Ok(batch)
}

impl Batch {
    fn validate(&self, now_ms: i64) -> Result<(), RejectReason> {
        let invalid = |what: String| Err(RejectReason::Invalid(what));
        if let Err(e) = validate_id(&self.device) {
            return invalid(format!("device {:?} {e}", short(&self.device)));
        }
        if self.readings.is_empty() {
            return invalid("batch has no readings".into());
        }
        if self.readings.len() > MAX_READINGS_PER_BATCH {
            return invalid(format!(
                "{} readings, the limit is {MAX_READINGS_PER_BATCH}",
                self.readings.len()
            ));
        }
        if self.points.len() > MAX_READINGS_PER_BATCH {
            return invalid(format!(
                "{} point descriptions, the limit is {MAX_READINGS_PER_BATCH}",
                self.points.len()
            ));
        }
        for (i, p) in self.points.iter().enumerate() {
            for (field, id) in [("id", &p.id), ("room", &p.room), ("quantity", &p.quantity)] {
                if let Err(e) = validate_id(id) {
                    return invalid(format!("points[{i}].{field} {:?} {e}", short(id)));
                }
            }
            if p.unit.len() > MAX_TEXT_LEN || p.unit.chars().any(char::is_control) {
                return invalid(format!(
                    "points[{i}].unit is too long or has control characters"
                ));
            }
        }
        for (i, r) in self.readings.iter().enumerate() {
            if let Err(e) = validate_id(&r.point) {
                return invalid(format!("readings[{i}].p {:?} {e}", short(&r.point)));
            }
            if r.ts < MIN_TIMESTAMP_MS || r.ts > now_ms.saturating_add(MAX_FUTURE_SKEW_MS) {
                return invalid(format!(
                    "readings[{i}].t {} is outside 2000-01-01 .. now + 24 h",
                    r.ts
                ));
            }
            if let Some(t) = &r.text {
                if t.len() > MAX_TEXT_LEN || t.chars().any(char::is_control) {
                    return invalid(format!(
                        "readings[{i}].x is too long or has control characters"
                    ));
                }
            }
            match (&r.quality, r.value) {
                (Quality::Good, None) if r.text.is_none() => {
                    return invalid(format!(
                        "readings[{i}] is good but has neither value nor text"
                    ));
                }
                (_, Some(v)) if !v.is_finite() => {
                    return invalid(format!("readings[{i}].v is not finite"));
                }
                (Quality::Bad(reason), _)
                    if reason.len() > MAX_TEXT_LEN || reason.chars().any(char::is_control) =>
                {
                    return invalid(format!(
                        "readings[{i}].bad reason is too long or has control characters"
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Makes a text fit the limits above: control characters become spaces,
/// and it is cut to [`MAX_TEXT_LEN`] bytes on a character boundary. The
/// agent passes device texts and error messages through this, so a
/// device's odd string never gets a whole batch refused.
pub fn clean_text(s: &mut String) {
    if s.chars().any(char::is_control) {
        *s = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
    }
    if s.len() > MAX_TEXT_LEN {
        let mut end = MAX_TEXT_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    #[test]
    fn a_batch_marked_as_backfill_decodes_as_backfill_and_is_otherwise_unchanged() {
        let b = batch();
        let marked = mark_backfill(&b.to_json());
        let back = decode_batch(&topic(), &marked, NOW).unwrap();
        assert!(back.backfill);
        assert_eq!(back.seq, b.seq);
        assert_eq!(back.readings.len(), b.readings.len());
    }

    fn topic() -> Topic {
        Topic::parse(&Topic::batch("site-a", "edge-1")).unwrap()
    }

    fn batch() -> Batch {
        Batch {
            v: PROTOCOL_VERSION,
            site: "site-a".into(),
            agent: "edge-1".into(),
            seq: 7,
            device: "th-1".into(),
            polled_at: NOW,
            backfill: false,
            points: vec![
                PointMeta {
                    id: "th-1.temperature".into(),
                    room: "machine-room".into(),
                    quantity: "temperature".into(),
                    unit: "°C".into(),
                },
                PointMeta {
                    id: "th-1.humidity".into(),
                    room: "machine-room".into(),
                    quantity: "humidity".into(),
                    unit: "%RH".into(),
                },
            ],
            readings: vec![
                Reading {
                    point: "th-1.temperature".into(),
                    value: Some(23.5),
                    text: None,
                    ts: NOW,
                    quality: Quality::Good,
                },
                Reading {
                    point: "th-1.humidity".into(),
                    value: None,
                    text: None,
                    ts: NOW,
                    quality: Quality::Bad("timeout after 1s".into()),
                },
            ],
        }
    }

    #[test]
    fn a_batch_round_trips_through_json() {
        let b = batch();
        assert_eq!(decode_batch(&topic(), &b.to_json(), NOW), Ok(b));
    }

    #[test]
    fn readings_are_compact_and_only_bad_ones_carry_a_reason() {
        let json = String::from_utf8(batch().to_json()).unwrap();
        assert!(
            json.contains(&format!(r#"{{"p":"th-1.temperature","v":23.5,"t":{NOW}}}"#)),
            "{json}"
        );
        assert!(
            json.contains(&format!(
                r#"{{"p":"th-1.humidity","t":{NOW},"bad":"timeout after 1s"}}"#
            )),
            "{json}"
        );
    }

    #[test]
    fn point_descriptions_may_be_left_out() {
        let mut b = batch();
        b.points.clear();
        let json = String::from_utf8(b.to_json()).unwrap();
        assert!(!json.contains("points"), "{json}");
        assert_eq!(decode_batch(&topic(), json.as_bytes(), NOW), Ok(b));
    }

    #[test]
    fn identity_that_differs_from_the_topic_is_rejected() {
        let mut b = batch();
        b.agent = "edge-2".into();
        let err = decode_batch(&topic(), &b.to_json(), NOW).unwrap_err();
        assert_eq!(err.label(), "identity_mismatch");
    }

    #[test]
    fn unknown_payload_version_is_rejected_before_its_shape_is_read() {
        let err = decode_batch(&topic(), br#"{"v":9,"whatever":true}"#, NOW).unwrap_err();
        assert_eq!(err, RejectReason::UnknownVersion(9));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for p in [
            &b""[..],
            b"null",
            b"{",
            b"\xff\xfe",
            br#"{"v":1}"#,
            br#"{"v":"1"}"#,
        ] {
            let err = decode_batch(&topic(), p, NOW).unwrap_err();
            assert_eq!(err.label(), "malformed", "{:?}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn good_reading_without_value_is_invalid() {
        let mut b = batch();
        b.readings[0].value = Some(f64::NAN); // serialises as null
        let err = decode_batch(&topic(), &b.to_json(), NOW).unwrap_err();
        assert_eq!(err.label(), "invalid");
    }

    #[test]
    fn a_bad_reason_with_control_characters_is_invalid_and_cleaning_makes_it_pass() {
        let mut b = batch();
        let r = b
            .readings
            .iter_mut()
            .find(|r| !r.quality.is_good())
            .unwrap();
        r.quality = Quality::Bad("no reply\r\nfrom \u{1b}[31mdevice".into());
        let err = decode_batch(&topic(), &b.to_json(), NOW).unwrap_err();
        assert_eq!(err.label(), "invalid");
        assert!(err.to_string().contains("control characters"), "{err}");
        if let Quality::Bad(why) = &mut b
            .readings
            .iter_mut()
            .find(|r| !r.quality.is_good())
            .unwrap()
            .quality
        {
            clean_text(why);
            assert_eq!(why, "no reply  from  [31mdevice");
        }
        decode_batch(&topic(), &b.to_json(), NOW).unwrap();
        let mut long = "é".repeat(200);
        clean_text(&mut long);
        assert!(long.len() <= MAX_TEXT_LEN && long.chars().all(|c| c == 'é'));
    }

    #[test]
    fn timestamps_from_the_far_future_or_unset_clocks_are_invalid() {
        for ts in [0, NOW + MAX_FUTURE_SKEW_MS + 1] {
            let mut b = batch();
            b.readings[1].ts = ts;
            let err = decode_batch(&topic(), &b.to_json(), NOW).unwrap_err();
            assert_eq!(err.label(), "invalid", "ts {ts}");
        }
    }

    #[test]
    fn oversized_payload_is_rejected_unparsed() {
        let big = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            decode_batch(&topic(), &big, NOW),
            Err(RejectReason::TooLarge(MAX_PAYLOAD_BYTES + 1))
        );
    }

    #[test]
    fn bad_point_ids_are_invalid() {
        let mut b = batch();
        b.readings[0].point = "a/b".into();
        assert_eq!(
            decode_batch(&topic(), &b.to_json(), NOW)
                .unwrap_err()
                .label(),
            "invalid"
        );
    }
}

#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    fn topic() -> Topic {
        Topic::parse(&Topic::batch("site-a", "edge-1")).unwrap()
    }

    proptest! {
        /// Whatever arrives on a batch topic, decoding returns an answer, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_batch(&topic(), &payload, 1_780_000_000_000);
        }

        /// Near-valid JSON (a real batch with one byte changed) is either a
        /// valid batch or a named rejection.
        #[test]
        fn mutated_batches_are_accepted_or_rejected_with_a_reason(at in 0usize..400, byte in any::<u8>()) {
            let b = Batch {
                v: PROTOCOL_VERSION,
                site: "site-a".into(),
                agent: "edge-1".into(),
                seq: 1,
                device: "d".into(),
                polled_at: 1_780_000_000_000,
                backfill: false,
                points: vec![PointMeta { id: "d.t".into(), room: "r".into(), quantity: "temperature".into(), unit: "°C".into() }],
                readings: vec![Reading { point: "d.t".into(), value: Some(1.5), text: None, ts: 1_780_000_000_000, quality: Quality::Good }],
            };
            let mut json = b.to_json();
            let i = at % json.len();
            json[i] = byte;
            match decode_batch(&topic(), &json, 1_780_000_000_000) {
                Ok(batch) => prop_assert!(!batch.readings.is_empty()),
                Err(e) => prop_assert!(!e.label().is_empty()),
            }
        }
    }
}
