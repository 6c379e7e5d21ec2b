//! Rule evaluation benchmark (issue #6): the pure engine alone, on one
//! thread, with 1,000 rules loaded (the built-in packs plus generated
//! threshold, rate and state rules), judging batches of readings from a
//! catalogue of points. Prints readings/s and what was loaded.
//!
//!   cargo build --release -p roomguard-e2e --bin bench-rules
//!   target/release/bench-rules [--points 20000] [--rounds 50]

use roomguard_collector::alarm::engine::Engine;
use roomguard_collector::alarm::rules::RuleSet;
use roomguard_e2e::arg;
use roomguard_protocol::{Batch, Label, PointMeta, Quality, Reading, PROTOCOL_VERSION};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Quantities the generated rules and points use.
const QUANTITIES: [&str; 8] = [
    "temperature",
    "humidity",
    "voltage",
    "current",
    "h2_lfl",
    "cell_temperature",
    "smoke",
    "dc_voltage",
];
/// Points per device; readings per batch.
const PER_DEVICE: usize = 10;

fn generated_rules(n: usize) -> String {
    let mut text = String::from("pack = \"bench\"\n");
    for i in 0..n {
        let q = QUANTITIES[i % QUANTITIES.len()];
        // Each rule watches one device family of its quantity, so a point
        // matches a handful of rules, as a real site's catalogue does.
        let family = (i / QUANTITIES.len()) % 40;
        let when = match i % 4 {
            0 => format!("{{ above = {}, hysteresis = 1.0 }}", 60 + i % 30),
            1 => format!("{{ below = {} }}", -20 - (i % 10) as i64),
            2 => "{ rise = 50.0, per = \"1m\", window = \"1m\" }".to_owned(),
            _ => "{ equals = 99.0 }".to_owned(),
        };
        let _ = write!(
            text,
            "[[rule]]\nid = \"bench.r{i}\"\nname = \"r{i}\"\ncategory = \"environment\"\nlevel = 3\n\
             source = \"benchmark\"\nselect = {{ quantity = [\"{q}\"], device = \"dev-{family}-*\" }}\n\
             when = {when}\n"
        );
    }
    text
}

fn main() -> anyhow::Result<()> {
    let points = arg("--points", 20_000) as usize;
    let rounds = arg("--rounds", 50) as usize;
    let builtin = RuleSet::builtin()?.rules.len();
    let mut packs: Vec<(PathBuf, String)> = roomguard_collector::alarm::rules::BUILTIN_PACKS
        .iter()
        .map(|(n, t)| (PathBuf::from(n), (*t).to_owned()))
        .collect();
    packs.push((
        PathBuf::from("bench.toml"),
        generated_rules(1_000 - builtin),
    ));
    let rules = Arc::new(RuleSet::from_texts(&packs, Vec::new())?);
    let t0: i64 = 1_800_000_000_000;
    let mut engine = Engine::new(rules.clone(), 1, t0, HashMap::new());

    // Devices of PER_DEVICE points each, quantities round-robin by device.
    let devices = points / PER_DEVICE;
    let mut batches: Vec<Batch> = Vec::with_capacity(devices);
    for d in 0..devices {
        let q = QUANTITIES[d % QUANTITIES.len()];
        let device = format!("dev-{}-{d}", (d / QUANTITIES.len()) % 40);
        let metas: Vec<PointMeta> = (0..PER_DEVICE)
            .map(|p| PointMeta {
                id: Label::from(format!("{device}.p{p}")),
                room: Label::from(format!("room-{}", d % 50)),
                quantity: Label::from(q),
                unit: Label::from(""),
            })
            .collect();
        for m in &metas {
            engine.describe("site", "agent", &device, m);
        }
        batches.push(Batch {
            v: PROTOCOL_VERSION,
            site: "site".into(),
            agent: "agent".into(),
            seq: d as u64,
            device,
            polled_at: t0,
            backfill: false,
            points: Vec::new(),
            readings: metas
                .iter()
                .map(|m| Reading {
                    point: m.id.clone(),
                    value: Some(20.0),
                    text: None,
                    ts: t0,
                    quality: Quality::Good,
                })
                .collect(),
        });
    }
    let instances = engine.instances().len();
    let mut out = Vec::new();
    let mut readings = 0u64;
    let started = Instant::now();
    for round in 1..=rounds {
        let ts = t0 + round as i64 * 1_000;
        for b in &mut batches {
            b.polled_at = ts;
            for (k, r) in b.readings.iter_mut().enumerate() {
                r.ts = ts;
                // Values wander well inside every threshold: the common case.
                r.value = Some(20.0 + ((round + k) % 7) as f64 * 0.1);
            }
            engine.observe(b, ts + 50, &mut out);
            readings += b.readings.len() as u64;
        }
        engine.tick(ts + 100, &mut out);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"rules\":{},\"points\":{},\"instances\":{},\"readings\":{},\"seconds\":{:.3},\"readings_per_s\":{:.0},\"transitions\":{}}}",
        rules.rules.len(),
        engine.point_count(),
        instances,
        readings,
        secs,
        readings as f64 / secs,
        out.len()
    );
    Ok(())
}
