//! Turning SNMP values into readings: numbers scaled, counters into rates,
//! enumerations into states, octet strings into numbers or text. Pure, so
//! every value type is tested without an agent.

use super::config::ValueKind;
use std::collections::BTreeMap;

/// An SNMP value, owned (snmp2's borrow the receive buffer).
#[derive(Debug, Clone, PartialEq)]
pub enum SnmpValue {
    Integer(i64),
    Counter32(u32),
    Counter64(u64),
    /// Gauge32 / Unsigned32.
    Gauge(u32),
    TimeTicks(u32),
    OctetString(Vec<u8>),
    /// noSuchObject, noSuchInstance, endOfMibView, or a type we do not read.
    Missing(&'static str),
}

/// How a point is mapped.
#[derive(Debug, Clone)]
pub struct Mapping<'a> {
    pub kind: ValueKind,
    pub scale: f64,
    pub offset: f64,
    pub map: &'a BTreeMap<String, String>,
    /// Raw values that mean "not available" (see `SnmpPoint::not_available`).
    pub not_available: &'a [f64],
}

/// A counter's previous sample, for rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CounterSample {
    pub value: u64,
    pub at_ms: i64,
    /// 32 or 64: where the counter wraps.
    pub bits: u8,
}

/// The outcome of mapping one value: a number and/or text, or why not.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub value: Option<f64>,
    pub text: Option<String>,
    /// For counters: the sample to keep for the next rate.
    pub counter: Option<CounterSample>,
}

fn scaled(raw: f64, m: &Mapping<'_>) -> f64 {
    // Divide by 10 rather than multiply by 0.1: 2305 × 0.1 is 230.50000000000003.
    let inverse = 1.0 / m.scale;
    let v = if inverse.abs() >= 1.0 && (inverse - inverse.round()).abs() < 1e-9 {
        raw / inverse.round()
    } else {
        raw * m.scale
    };
    v + m.offset
}

/// Maps `v` (read at `now_ms`) for a point with mapping `m`; `prev` is the
/// counter's last sample for rates.
pub fn map_value(
    v: &SnmpValue,
    m: &Mapping<'_>,
    now_ms: i64,
    prev: Option<CounterSample>,
) -> Result<Mapped, String> {
    let r = map_raw(v, m, now_ms, prev)?;
    // A huge scale (or a huge value) must not become an infinite reading.
    if r.value.is_some_and(|x| !x.is_finite()) {
        return Err("value out of range after scale and offset".into());
    }
    Ok(r)
}

fn map_raw(
    v: &SnmpValue,
    m: &Mapping<'_>,
    now_ms: i64,
    prev: Option<CounterSample>,
) -> Result<Mapped, String> {
    let number = |x: f64| {
        if m.not_available.contains(&x) {
            return Err(format!(
                "not available (the device answers {x} for a value it does not have)"
            ));
        }
        Ok(Mapped {
            value: Some(scaled(x, m)),
            text: None,
            counter: None,
        })
    };
    match (m.kind, v) {
        (_, SnmpValue::Missing(why)) => Err((*why).to_owned()),
        (ValueKind::CounterRate, SnmpValue::Counter32(c)) => {
            rate(u64::from(*c), 32, m, now_ms, prev)
        }
        (ValueKind::CounterRate, SnmpValue::Counter64(c)) => rate(*c, 64, m, now_ms, prev),
        (ValueKind::CounterRate, other) => {
            Err(format!("expected a counter for a rate, got {other:?}"))
        }
        (ValueKind::Text, SnmpValue::OctetString(b)) => Ok(Mapped {
            value: None,
            text: Some(printable(b)?),
            counter: None,
        }),
        (ValueKind::Text, other) => Err(format!("expected an OctetString for text, got {other:?}")),
        (ValueKind::Enum, SnmpValue::Integer(i)) => {
            let state = m
                .map
                .get(&i.to_string())
                .cloned()
                .unwrap_or_else(|| format!("unknown({i})"));
            Ok(Mapped {
                value: Some(*i as f64),
                text: Some(state),
                counter: None,
            })
        }
        (ValueKind::Enum, other) => Err(format!("expected an Integer enumeration, got {other:?}")),
        (ValueKind::Gauge, SnmpValue::Integer(i)) => number(*i as f64),
        (
            ValueKind::Gauge,
            SnmpValue::Gauge(g) | SnmpValue::Counter32(g) | SnmpValue::TimeTicks(g),
        ) => number(f64::from(*g)),
        (ValueKind::Gauge, SnmpValue::Counter64(c)) => number(*c as f64),
        // Many agents (PDUs above all) report readings as text: "230.4".
        (ValueKind::Gauge, SnmpValue::OctetString(b)) => {
            let text = printable(b)?;
            let x = text
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("{text:?} is not a number"))?;
            number(x)
        }
    }
}

fn rate(
    value: u64,
    bits: u8,
    m: &Mapping<'_>,
    now_ms: i64,
    prev: Option<CounterSample>,
) -> Result<Mapped, String> {
    let sample = CounterSample {
        value,
        at_ms: now_ms,
        bits,
    };
    let Some(prev) = prev.filter(|p| p.bits == bits && p.at_ms < now_ms) else {
        return Ok(Mapped {
            value: None,
            text: None,
            counter: Some(sample),
        });
    };
    let wrapped = u64::from(u32::MAX)
        .checked_sub(prev.value)
        .and_then(|d| d.checked_add(value)?.checked_add(1));
    let delta = if value >= prev.value {
        value - prev.value
    } else if let (32, Some(d)) = (bits, wrapped) {
        // One wrap of a 32-bit counter; a restarted agent looks the same and
        // is indistinguishable without sysUpTime, so rates stay plausible.
        d
    } else {
        return Ok(Mapped {
            value: None,
            text: None,
            counter: Some(sample),
        });
    };
    let secs = now_ms.saturating_sub(prev.at_ms) as f64 / 1000.0;
    Ok(Mapped {
        value: Some(scaled(delta as f64 / secs, m)),
        text: None,
        counter: Some(sample),
    })
}

fn printable(b: &[u8]) -> Result<String, String> {
    let s = std::str::from_utf8(b).map_err(|_| "OctetString is not UTF-8 text".to_owned())?;
    let s = s.trim_end_matches('\0').trim_end();
    if s.len() > 200 || s.chars().any(char::is_control) {
        return Err("OctetString is not printable text".into());
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: ValueKind, scale: f64, map: &BTreeMap<String, String>) -> Mapping<'_> {
        Mapping {
            kind,
            scale,
            offset: 0.0,
            map,
            not_available: &[],
        }
    }

    #[test]
    fn a_sentinel_is_not_available_never_a_value() {
        let map = BTreeMap::new();
        let m = Mapping {
            not_available: &[-1.0],
            ..m(ValueKind::Gauge, 0.1, &map)
        };
        // -1 minutes (or -0.1 °C after a ×0.1 scale) is the card saying "I do not know".
        let e = map_value(&SnmpValue::Integer(-1), &m, 0, None).unwrap_err();
        assert!(e.starts_with("not available"), "{e}");
        let e = map_value(&SnmpValue::OctetString(b"-1".to_vec()), &m, 0, None).unwrap_err();
        assert!(e.starts_with("not available"), "{e}");
        assert_eq!(
            map_value(&SnmpValue::Integer(215), &m, 0, None)
                .unwrap()
                .value,
            Some(21.5)
        );
    }

    #[test]
    fn ups_output_source_battery_is_the_on_battery_state() {
        let map = BTreeMap::from([
            ("3".to_owned(), "normal".to_owned()),
            ("5".to_owned(), "on_battery".to_owned()),
        ]);
        let r = map_value(
            &SnmpValue::Integer(5),
            &m(ValueKind::Enum, 1.0, &map),
            0,
            None,
        )
        .unwrap();
        assert_eq!(
            (r.value, r.text.as_deref()),
            (Some(5.0), Some("on_battery"))
        );
        let r = map_value(
            &SnmpValue::Integer(9),
            &m(ValueKind::Enum, 1.0, &map),
            0,
            None,
        )
        .unwrap();
        assert_eq!(r.text.as_deref(), Some("unknown(9)"));
    }

    #[test]
    fn tenths_of_hertz_scale_cleanly() {
        let map = BTreeMap::new();
        let r = map_value(
            &SnmpValue::Integer(500),
            &m(ValueKind::Gauge, 0.1, &map),
            0,
            None,
        )
        .unwrap();
        assert_eq!(r.value, Some(50.0));
        let r = map_value(
            &SnmpValue::Gauge(2305),
            &m(ValueKind::Gauge, 0.1, &map),
            0,
            None,
        )
        .unwrap();
        assert_eq!(r.value, Some(230.5));
        let r = map_value(
            &SnmpValue::TimeTicks(100),
            &m(ValueKind::Gauge, 0.01, &map),
            0,
            None,
        )
        .unwrap();
        assert_eq!(r.value, Some(1.0));
    }

    #[test]
    fn counters_become_rates_and_survive_a_32_bit_wrap() {
        let map = BTreeMap::new();
        let mm = m(ValueKind::CounterRate, 1.0, &map);
        let first = map_value(&SnmpValue::Counter32(u32::MAX - 9), &mm, 1_000, None).unwrap();
        assert_eq!(first.value, None, "no rate from one sample");
        let second = map_value(&SnmpValue::Counter32(10), &mm, 3_000, first.counter).unwrap();
        assert_eq!(second.value, Some(10.0), "20 increments over 2 s");
        let big = map_value(
            &SnmpValue::Counter64(1_000),
            &mm,
            5_000,
            Some(CounterSample {
                value: 0,
                at_ms: 4_000,
                bits: 64,
            }),
        )
        .unwrap();
        assert_eq!(big.value, Some(1_000.0));
    }

    #[test]
    fn numeric_octet_strings_are_numbers_and_garbage_is_an_error() {
        let map = BTreeMap::new();
        let g = m(ValueKind::Gauge, 1.0, &map);
        assert_eq!(
            map_value(&SnmpValue::OctetString(b"230.4".to_vec()), &g, 0, None)
                .unwrap()
                .value,
            Some(230.4)
        );
        assert!(map_value(&SnmpValue::OctetString(b"n/a".to_vec()), &g, 0, None).is_err());
        assert!(map_value(&SnmpValue::OctetString(b"NaN".to_vec()), &g, 0, None).is_err());
        assert!(map_value(&SnmpValue::OctetString(vec![0xff, 0xfe]), &g, 0, None).is_err());
        assert!(map_value(&SnmpValue::Missing("noSuchInstance"), &g, 0, None).is_err());
    }

    #[test]
    fn text_points_keep_their_text() {
        let map = BTreeMap::new();
        let r = map_value(
            &SnmpValue::OctetString(b"Outlet 3 - core switch\0".to_vec()),
            &m(ValueKind::Text, 1.0, &map),
            0,
            None,
        )
        .unwrap();
        assert_eq!(r.text.as_deref(), Some("Outlet 3 - core switch"));
    }

    /// Found by the property test below.
    #[test]
    fn an_impossible_previous_sample_or_a_huge_scale_give_no_value_not_a_panic() {
        let map = BTreeMap::new();
        let prev = CounterSample {
            value: u64::MAX,
            at_ms: 0,
            bits: 32,
        };
        let r = map_value(
            &SnmpValue::Counter32(5),
            &m(ValueKind::CounterRate, 1.0, &map),
            1000,
            Some(prev),
        )
        .unwrap();
        assert_eq!(r.value, None);
        let err = map_value(
            &SnmpValue::Integer(-179_769_314),
            &m(ValueKind::Gauge, 1e300, &map),
            0,
            None,
        )
        .unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }

    proptest::proptest! {
        /// Whatever a device answers, under any mapping and any previous
        /// counter sample: a finite value and/or text, or an error saying
        /// why; never a panic, never NaN or infinity.
        #[test]
        fn any_value_maps_to_a_finite_reading_or_a_reason(
            which in 0usize..7,
            n in proptest::prelude::any::<i64>(),
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            kind_ix in 0usize..4,
            scale in proptest::prop_oneof![proptest::strategy::Just(1.0f64), proptest::strategy::Just(0.1), proptest::strategy::Just(1e-300), proptest::strategy::Just(1e300)],
            prev in proptest::option::of((proptest::prelude::any::<u64>(), proptest::prelude::any::<i64>(), proptest::prop_oneof![proptest::strategy::Just(32u8), proptest::strategy::Just(64u8)])),
            now in proptest::prelude::any::<i64>(),
        ) {
            let v = match which {
                0 => SnmpValue::Integer(n),
                1 => SnmpValue::Counter32(n as u32),
                2 => SnmpValue::Counter64(n as u64),
                3 => SnmpValue::Gauge(n as u32),
                4 => SnmpValue::TimeTicks(n as u32),
                5 => SnmpValue::OctetString(bytes),
                _ => SnmpValue::Missing("noSuchObject"),
            };
            let kinds = [ValueKind::Gauge, ValueKind::CounterRate, ValueKind::Enum, ValueKind::Text];
            let map: BTreeMap<String, String> = [("1".to_owned(), "on".to_owned())].into();
            let prev = prev.map(|(value, at_ms, bits)| CounterSample { value, at_ms, bits });
            match map_value(&v, &m(kinds[kind_ix], scale, &map), now, prev) {
                Ok(r) => proptest::prop_assert!(r.value.is_none_or(f64::is_finite), "{r:?}"),
                Err(why) => proptest::prop_assert!(!why.is_empty()),
            }
        }
    }
}
