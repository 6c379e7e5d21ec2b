//! The request planner: from a device's points, the fewest read requests the
//! protocol allows. Pure: a point list in, a list of requests out.
//!
//! Points are sorted by table and address and packed greedily: a request grows
//! while the next point still fits within the protocol limit (125 registers,
//! 2000 bits) and the unused run before it is no longer than `max_gap`. For
//! spans on a line this greedy packing is minimal: any plan must start a new
//! request at the first point the previous one cannot reach.

use super::config::{ModbusPoint, Table};

/// Protocol limit of one read of holding or input registers (FC 3/4).
pub const MAX_REGISTERS: u16 = 125;
/// Protocol limit of one read of coils or discrete inputs (FC 1/2).
pub const MAX_BITS: u16 = 2000;

/// One read request and the points it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    pub start: u16,
    pub count: u16,
    /// Indices into the device's point list.
    pub points: Vec<usize>,
}

impl ReadRequest {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// Plans the reads for all of `points`, spanning at most `max_gap` unused
/// registers (or bits) inside one request.
pub fn plan(points: &[ModbusPoint], max_gap: u16) -> Vec<ReadRequest> {
    plan_subset(points, 0..points.len(), max_gap, MAX_REGISTERS)
}

/// Plans the reads for the points at `subset` (one poll group); request
/// point indices refer to `points`. `max_read`: most registers one read
/// may ask for (devices that refuse more than the protocol allows, like the
/// Eastron SDM630 past 80); bit reads keep the protocol's limit.
pub fn plan_subset(
    points: &[ModbusPoint],
    subset: impl IntoIterator<Item = usize>,
    max_gap: u16,
    max_read: u16,
) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = subset.into_iter().collect();
    order.sort_by_key(|&i| (points[i].table, points[i].address, points[i].width()));

    let mut requests: Vec<ReadRequest> = Vec::new();
    for i in order {
        let p = &points[i];
        let start = u32::from(p.address);
        let end = start + u32::from(p.width());
        let limit = u32::from(if p.table.is_bits() {
            MAX_BITS
        } else {
            max_read.clamp(1, MAX_REGISTERS)
        });
        if let Some(cur) = requests.last_mut() {
            let same_table = cur.table == p.table;
            let gap = start.saturating_sub(cur.end());
            let new_end = end.max(cur.end());
            if same_table && gap <= u32::from(max_gap) && new_end - u32::from(cur.start) <= limit {
                cur.count = (new_end - u32::from(cur.start)) as u16;
                cur.points.push(i);
                continue;
            }
        }
        requests.push(ReadRequest {
            table: p.table,
            start: p.address,
            count: (end - start) as u16,
            points: vec![i],
        });
    }
    requests
}

/// `req` split into one read per point: the fallback when a device refuses
/// a read that spans registers it does not implement, or more of them than
/// it takes at once (exceptions 02 and 03).
pub fn split(points: &[ModbusPoint], req: &ReadRequest) -> Vec<ReadRequest> {
    req.points
        .iter()
        .map(|&i| ReadRequest {
            table: req.table,
            start: points[i].address,
            count: points[i].width(),
            points: vec![i],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::modbus::config::{DataType, WordOrder};

    fn pt(table: Table, address: u16, data_type: DataType) -> ModbusPoint {
        ModbusPoint {
            id: format!("p{address}"),
            quantity: "q".into(),
            unit: String::new(),
            room: None,
            table,
            address,
            data_type,
            bit: (data_type == DataType::Bit).then_some(0),
            length: None,
            order: WordOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            not_available: Vec::new(),
            interval: None,
        }
    }

    #[test]
    fn a_device_limit_on_registers_per_read_splits_an_88_register_span() {
        // The SDM630 refuses more than 80 registers in one read.
        let pts: Vec<ModbusPoint> = [0u16, 40, 86]
            .iter()
            .map(|&a| pt(Table::Input, a, DataType::Float32))
            .collect();
        let all = plan_subset(&pts, 0..3, 100, MAX_REGISTERS);
        assert_eq!((all.len(), all[0].count), (1, 88));
        let limited = plan_subset(&pts, 0..3, 100, 80);
        assert!(limited.iter().all(|r| r.count <= 80), "{limited:?}");
        assert_eq!(limited.len(), 2);
        let one_each = split(&pts, &all[0]);
        assert_eq!(
            one_each
                .iter()
                .map(|r| (r.start, r.count))
                .collect::<Vec<_>>(),
            [(0, 2), (40, 2), (86, 2)]
        );
    }

    #[test]
    fn contiguous_registers_are_one_request() {
        let pts: Vec<_> = (0..8)
            .map(|a| pt(Table::Holding, a * 2, DataType::Float32))
            .collect();
        let reqs = plan(&pts, 0);
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].start, reqs[0].count), (0, 16));
    }

    #[test]
    fn a_gap_wider_than_allowed_splits_the_request() {
        let pts = vec![
            pt(Table::Input, 0, DataType::Int16),
            pt(Table::Input, 10, DataType::Int16),
        ];
        assert_eq!(plan(&pts, 8).len(), 2);
        assert_eq!(plan(&pts, 9).len(), 1);
        assert_eq!(plan(&pts, 9)[0].count, 11);
    }

    #[test]
    fn tables_never_share_a_request() {
        let pts = vec![
            pt(Table::Input, 0, DataType::Int16),
            pt(Table::Holding, 1, DataType::Int16),
        ];
        assert_eq!(plan(&pts, 100).len(), 2);
    }

    #[test]
    fn the_register_limit_is_respected() {
        let pts: Vec<_> = (0..200)
            .map(|a| pt(Table::Holding, a, DataType::Uint16))
            .collect();
        let reqs = plan(&pts, 0);
        assert_eq!(
            reqs.iter().map(|r| r.count).collect::<Vec<_>>(),
            vec![125, 75]
        );
    }

    /// The fewest requests for `points`, found independently of the greedy
    /// planner by dynamic programming over every split of the sorted points.
    fn minimum_requests(points: &[ModbusPoint], max_gap: u16) -> usize {
        let mut tables: Vec<Table> = points.iter().map(|p| p.table).collect();
        tables.sort();
        tables.dedup();
        tables
            .into_iter()
            .map(|t| {
                let mut spans: Vec<(u32, u32, u32)> = points
                    .iter()
                    .filter(|p| p.table == t)
                    .map(|p| {
                        let limit = u32::from(if t.is_bits() { MAX_BITS } else { MAX_REGISTERS });
                        (
                            u32::from(p.address),
                            u32::from(p.address) + u32::from(p.width()),
                            limit,
                        )
                    })
                    .collect();
                spans.sort();
                let n = spans.len();
                let mut best = vec![usize::MAX; n + 1];
                best[0] = 0;
                for end in 1..=n {
                    // spans[start..end] as one request?
                    for start in (0..end).rev() {
                        let mut hi = spans[start].1;
                        let mut ok = true;
                        for s in &spans[start + 1..end] {
                            if s.0 > hi && s.0 - hi > u32::from(max_gap) {
                                ok = false;
                                break;
                            }
                            hi = hi.max(s.1);
                        }
                        if ok && hi - spans[start].0 <= spans[start].2 && best[start] != usize::MAX
                        {
                            best[end] = best[end].min(best[start] + 1);
                        }
                    }
                }
                best[n]
            })
            .sum()
    }

    fn arb_point() -> impl proptest::strategy::Strategy<Value = ModbusPoint> {
        use proptest::prelude::*;
        let types = prop_oneof![
            Just(DataType::Uint16),
            Just(DataType::Float32),
            Just(DataType::Uint64),
            Just(DataType::Bit),
        ];
        (0u8..3, 0u16..600, types).prop_map(|(t, address, data_type)| {
            let table = [Table::Holding, Table::Input, Table::Coil][usize::from(t)];
            let data_type = if table.is_bits() {
                DataType::Bool
            } else {
                data_type
            };
            pt(table, address, data_type)
        })
    }

    proptest::proptest! {
        #[test]
        fn every_point_is_covered_once_within_limits_by_the_fewest_requests(
            points in proptest::collection::vec(arb_point(), 1..120),
            max_gap in 0u16..40,
        ) {
            let reqs = plan(&points, max_gap);
            let mut seen = vec![0usize; points.len()];
            for r in &reqs {
                let limit = if r.table.is_bits() { MAX_BITS } else { MAX_REGISTERS };
                proptest::prop_assert!(r.count >= 1 && r.count <= limit, "{r:?}");
                for &i in &r.points {
                    seen[i] += 1;
                    let p = &points[i];
                    proptest::prop_assert_eq!(p.table, r.table);
                    proptest::prop_assert!(p.address >= r.start);
                    proptest::prop_assert!(u32::from(p.address) + u32::from(p.width()) <= r.end());
                }
            }
            proptest::prop_assert!(seen.iter().all(|&n| n == 1), "coverage {seen:?}");
            proptest::prop_assert_eq!(reqs.len(), minimum_requests(&points, max_gap));
        }
    }

    #[test]
    fn bits_of_one_register_share_it() {
        let mut a = pt(Table::Holding, 3, DataType::Bit);
        let mut b = pt(Table::Holding, 3, DataType::Bit);
        a.bit = Some(0);
        b.bit = Some(5);
        let reqs = plan(&[a, b], 0);
        assert_eq!(reqs.len(), 1);
        assert_eq!(
            (reqs[0].start, reqs[0].count, reqs[0].points.len()),
            (3, 1, 2)
        );
    }
}
