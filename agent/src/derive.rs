//! Values worked out from other points of the same poll: the voltage
//! unbalance of a three-phase meter, the dew point of a temperature and
//! humidity sensor. They are published as points of their own, so the
//! collector stores, charts and judges them like any other.
//!
//! A profile names them (`[[derived]]`); this module is the pure part: from a
//! poll's readings to the derived readings.

use roomguard_protocol::batch::MAX_TEXT_LEN;
use roomguard_protocol::{validate_id, Label, Quality, Reading};
use serde::Deserialize;

/// A derived point as a profile writes it: exactly one of the formulas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivedDef {
    pub id: String,
    pub quantity: String,
    pub unit: String,
    /// Largest deviation of these points from their mean, in % of the mean.
    pub unbalance: Option<Vec<String>>,
    /// With `unbalance`: no value while the mean is below this (no supply,
    /// no load), where the ratio means nothing.
    pub min_mean: Option<f64>,
    /// Dew point in °C from a temperature (°C) and a relative humidity (%).
    pub dew_point: Option<DewPointOf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DewPointOf {
    pub temperature: String,
    pub humidity: String,
}

impl DerivedDef {
    /// The derived point of device `device`, from its inputs' full ids (in
    /// the order of [`DerivedDef::inputs`]).
    pub fn resolve(&self, device: &str, inputs: Vec<Label>) -> Derived {
        let formula = match &self.unbalance {
            Some(_) => Formula::Unbalance {
                of: inputs,
                min_mean: self.min_mean.unwrap_or(0.0),
            },
            None => Formula::DewPoint {
                temperature: inputs[0].clone(),
                humidity: inputs[1].clone(),
            },
        };
        Derived {
            label: Label::from(format!("{device}.{}", self.id).as_str()),
            formula,
        }
    }

    /// The points it is worked out from, by their ids in the profile.
    pub fn inputs(&self) -> Vec<&str> {
        match (&self.unbalance, &self.dew_point) {
            (Some(of), _) => of.iter().map(String::as_str).collect(),
            (None, Some(d)) => vec![d.temperature.as_str(), d.humidity.as_str()],
            (None, None) => Vec::new(),
        }
    }

    /// Problems with the definition itself, as `(field, message)`. The id,
    /// quantity and unit go out in every point description, and the
    /// collector refuses a whole batch over a bad one: so they are checked here.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Err(e) = validate_id(&self.id) {
            out.push(("id", format!("{:?} {e}", self.id)));
        }
        if let Err(e) = validate_id(&self.quantity) {
            out.push(("quantity", format!("{:?} {e}", self.quantity)));
        }
        if self.unit.len() > MAX_TEXT_LEN || self.unit.chars().any(char::is_control) {
            out.push((
                "unit",
                format!("must be at most {MAX_TEXT_LEN} bytes without control characters"),
            ));
        }
        match (&self.unbalance, &self.dew_point) {
            (Some(_), Some(_)) | (None, None) => {
                out.push(("", "needs exactly one of unbalance, dew_point".to_owned()))
            }
            (Some(of), None) if of.len() < 2 => {
                out.push(("unbalance", "needs at least two points".to_owned()))
            }
            _ => {}
        }
        if let Some(m) = self.min_mean {
            if self.unbalance.is_none() {
                out.push(("min_mean", "only goes with unbalance".to_owned()));
            } else if !(m.is_finite() && m >= 0.0) {
                out.push(("min_mean", "must be zero or more".to_owned()));
            }
        }
        out
    }
}

/// A derived point ready to compute, its inputs as full point ids.
#[derive(Debug, Clone)]
pub struct Derived {
    pub label: Label,
    pub formula: Formula,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Formula {
    Unbalance { of: Vec<Label>, min_mean: f64 },
    DewPoint { temperature: Label, humidity: Label },
}

impl Formula {
    fn inputs(&self) -> Vec<&Label> {
        match self {
            Formula::Unbalance { of, .. } => of.iter().collect(),
            Formula::DewPoint {
                temperature,
                humidity,
            } => vec![temperature, humidity],
        }
    }
}

/// Largest deviation from the mean, in % of the mean (the NEMA MG 1
/// definition, which needs magnitudes only); `None` below `min_mean`.
pub fn unbalance(values: &[f64], min_mean: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    if !(mean > 0.0 && mean >= min_mean) {
        return None;
    }
    let worst = values
        .iter()
        .map(|v| (v - mean).abs())
        .fold(0.0_f64, f64::max);
    Some(worst / mean * 100.0)
}

/// Dew point in °C (Magnus formula with the Alduchov–Eskridge constants,
/// within about 0.4 °C from −40 to 50 °C); `None` for a humidity outside
/// (0, 105] % or a temperature outside that range. Sensors read a little over
/// 100 % at saturation: up to 105 % counts as 100 %.
pub fn dew_point(temp_c: f64, rh_pct: f64) -> Option<f64> {
    const A: f64 = 17.625;
    const B: f64 = 243.04;
    if !(rh_pct > 0.0 && rh_pct <= 105.0 && (-40.0..=50.0).contains(&temp_c)) {
        return None;
    }
    let rh_pct = rh_pct.min(100.0);
    let g = (rh_pct / 100.0).ln() + A * temp_c / (B + temp_c);
    Some(B * g / (A - g))
}

/// Appends to `readings` what `derived` works out from them. A derived point
/// whose inputs are not all in this poll (another poll group) gives nothing;
/// one with a bad input gives a bad reading naming it.
pub fn apply(derived: &[Derived], readings: &mut Vec<Reading>) {
    for d in derived {
        let inputs = d.formula.inputs();
        let mut values = Vec::with_capacity(inputs.len());
        let mut ts = i64::MIN;
        let mut bad: Option<String> = None;
        let mut missing = false;
        for input in &inputs {
            match readings.iter().find(|r| r.point == **input) {
                None => missing = true,
                Some(r) => {
                    ts = ts.max(r.ts);
                    match (&r.quality, r.value) {
                        (Quality::Good, Some(v)) if v.is_finite() => values.push(v),
                        _ => {
                            bad.get_or_insert_with(|| {
                                format!("input {} has no good value", r.point)
                            });
                        }
                    }
                }
            }
        }
        if missing {
            continue;
        }
        let value = if bad.is_some() {
            None
        } else {
            match &d.formula {
                Formula::Unbalance { min_mean, .. } => unbalance(&values, *min_mean),
                Formula::DewPoint { .. } => dew_point(values[0], values[1]),
            }
        };
        let quality = match (bad, value) {
            (Some(reason), _) => Quality::Bad(reason),
            (None, Some(_)) => Quality::Good,
            // Inputs fine, but the formula has no value for them (no
            // supply for an unbalance): nothing to say this time.
            (None, None) => continue,
        };
        readings.push(Reading {
            point: d.label.clone(),
            value,
            text: None,
            ts,
            quality,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(point: &str, value: Option<f64>, ts: i64) -> Reading {
        Reading {
            point: Label::from(point),
            value,
            text: None,
            ts,
            quality: match value {
                Some(_) => Quality::Good,
                None => Quality::Bad("exception 2".into()),
            },
        }
    }

    fn phases() -> Derived {
        Derived {
            label: Label::from("m.voltage_unbalance"),
            formula: Formula::Unbalance {
                of: vec!["m.va".into(), "m.vb".into(), "m.vc".into()],
                min_mean: 100.0,
            },
        }
    }

    #[test]
    fn unbalance_is_the_largest_deviation_from_the_mean_in_percent() {
        // NEMA MG 1 worked example: 460, 467, 450 V → mean 459, worst 9 → 1.96 %.
        let u = unbalance(&[460.0, 467.0, 450.0], 0.0).unwrap();
        assert!((u - 9.0 / 459.0 * 100.0).abs() < 1e-9, "{u}");
        assert_eq!(unbalance(&[220.0, 220.0, 220.0], 0.0), Some(0.0));
        assert_eq!(unbalance(&[0.0, 0.0, 0.0], 0.0), None, "no supply");
        assert_eq!(
            unbalance(&[50.0, 60.0, 55.0], 100.0),
            None,
            "below min_mean"
        );
    }

    #[test]
    fn dew_point_matches_published_values() {
        // Psychrometric tables: 25 °C at 50 % RH → 13.9 °C; 20 °C at 100 % → 20 °C;
        // 30 °C at 60 % → 21.4 °C; 0 °C at 50 % → −9.2 °C.
        for (t, rh, want) in [
            (25.0, 50.0, 13.9),
            (20.0, 100.0, 20.0),
            (30.0, 60.0, 21.4),
            (0.0, 50.0, -9.2),
        ] {
            let got = dew_point(t, rh).unwrap();
            assert!(
                (got - want).abs() < 0.15,
                "{t} °C {rh} %: {got}, want {want}"
            );
        }
        assert_eq!(dew_point(25.0, 0.0), None);
        assert_eq!(dew_point(25.0, 120.0), None);
        assert_eq!(dew_point(20.0, 102.0), dew_point(20.0, 100.0), "saturated");
        assert_eq!(dew_point(60.0, 50.0), None, "outside the formula's range");
    }

    #[test]
    fn a_poll_with_every_input_gives_the_derived_reading_at_the_newest_input_time() {
        let mut r = vec![
            reading("m.va", Some(230.0), 10),
            reading("m.vb", Some(220.0), 12),
            reading("m.vc", Some(210.0), 11),
        ];
        apply(&[phases()], &mut r);
        assert_eq!(r.len(), 4);
        let d = &r[3];
        assert_eq!(&*d.point, "m.voltage_unbalance");
        assert_eq!(d.ts, 12);
        assert!((d.value.unwrap() - 10.0 / 220.0 * 100.0).abs() < 1e-9);
    }

    #[test]
    fn a_bad_input_gives_a_bad_reading_and_a_missing_one_gives_none() {
        let mut r = vec![
            reading("m.va", Some(230.0), 10),
            reading("m.vb", None, 10),
            reading("m.vc", Some(210.0), 10),
        ];
        apply(&[phases()], &mut r);
        assert_eq!(
            r[3].quality,
            Quality::Bad("input m.vb has no good value".into())
        );
        assert_eq!(r[3].value, None);

        let mut r = vec![
            reading("m.va", Some(230.0), 10),
            reading("m.vb", Some(230.0), 10),
        ];
        apply(&[phases()], &mut r);
        assert_eq!(
            r.len(),
            2,
            "m.vc is polled in another group: nothing derived"
        );

        let mut r = vec![
            reading("m.va", Some(0.0), 10),
            reading("m.vb", Some(0.0), 10),
            reading("m.vc", Some(0.0), 10),
        ];
        apply(&[phases()], &mut r);
        assert_eq!(r.len(), 3, "no supply: no unbalance");
    }

    #[test]
    fn definitions_need_exactly_one_formula() {
        let def = |unbalance: Option<Vec<String>>, dew: bool, min_mean: Option<f64>| DerivedDef {
            id: "x".into(),
            quantity: "q".into(),
            unit: "u".into(),
            unbalance,
            min_mean,
            dew_point: dew.then(|| DewPointOf {
                temperature: "t".into(),
                humidity: "h".into(),
            }),
        };
        assert_eq!(def(None, false, None).problems().len(), 1);
        assert_eq!(
            def(Some(vec!["a".into(), "b".into()]), true, None)
                .problems()
                .len(),
            1
        );
        assert_eq!(
            def(Some(vec!["a".into()]), false, None).problems()[0].0,
            "unbalance"
        );
        assert_eq!(def(None, true, Some(1.0)).problems()[0].0, "min_mean");
        assert!(def(Some(vec!["a".into(), "b".into()]), false, Some(100.0))
            .problems()
            .is_empty());
        assert!(def(None, true, None).problems().is_empty());
        let mut bad = def(None, true, None);
        bad.id = "dew point".into();
        bad.quantity = String::new();
        bad.unit = "°C\n".into();
        let fields: Vec<&str> = bad.problems().iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["id", "quantity", "unit"]);
    }
}
