//! Which leases a node takes and gives up in one round, pure: the leases as
//! the database shows them and the live nodes in, a plan out.
//!
//! Each node holds at most ⌈P / live⌉ site partitions. It takes only leases
//! that are free or expired (never one another live node holds: fencing
//! makes that safe, but it would make two nodes fight), and gives up what
//! it holds beyond its share, so a node that joins gets its share within a
//! round or two of the others'. Among the partitions it may take or must
//! give up, each node ranks them by a hash of (node, partition) (rendezvous
//! hashing): nodes taking at once mostly want different partitions, and a
//! partition tends to go back to the node that held it.

use super::MAINTENANCE;

/// One lease row as this round read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub part: i32,
    pub owner: Option<String>,
    /// Past its expiry by the database's clock.
    pub expired: bool,
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub take: Vec<i32>,
    pub release: Vec<i32>,
}

/// The most site partitions one of `live` nodes holds.
pub fn share(partitions: usize, live: usize) -> usize {
    partitions.div_ceil(live.max(1))
}

/// This round's plan for node `me`; `live` are the nodes seen within a
/// lease (`me` among them unless it is leaving).
pub fn plan(me: &str, live: &[String], leases: &[Lease], leaving: bool) -> Plan {
    let mut plan = Plan::default();
    let is_mine = |l: &Lease| l.owner.as_deref() == Some(me);
    let is_free = |l: &Lease| !is_mine(l) && (l.owner.is_none() || l.expired);
    if leaving {
        plan.release = leases
            .iter()
            .filter(|l| is_mine(l))
            .map(|l| l.part)
            .collect();
        plan.release.sort_unstable();
        return plan;
    }
    // The maintenance lease: whoever asks first.
    if let Some(m) = leases.iter().find(|l| l.part == MAINTENANCE) {
        if is_free(m) {
            plan.take.push(MAINTENANCE);
        }
    }
    let sites: Vec<&Lease> = leases.iter().filter(|l| l.part >= 0).collect();
    let n = live.len() + usize::from(!live.iter().any(|l| l == me));
    let target = share(sites.len(), n);
    let mut mine: Vec<i32> = sites
        .iter()
        .filter(|l| is_mine(l))
        .map(|l| l.part)
        .collect();
    if mine.len() > target {
        // Give up the ones this node wants least.
        mine.sort_by_key(|p| std::cmp::Reverse(rank(me, *p)));
        plan.release = mine.split_off(target);
        plan.release.sort_unstable();
    } else {
        let mut free: Vec<i32> = sites
            .iter()
            .filter(|l| is_free(l))
            .map(|l| l.part)
            .collect();
        free.sort_by_key(|p| std::cmp::Reverse(rank(me, *p)));
        free.truncate(target - mine.len());
        free.sort_unstable();
        plan.take.extend(free);
    }
    plan
}

/// How much `node` wants `part` (FNV-1a over both).
fn rank(node: &str, part: i32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in node.bytes().chain(part.to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases(owners: &[Option<&str>]) -> Vec<Lease> {
        let mut all = vec![Lease {
            part: MAINTENANCE,
            owner: Some("x".into()),
            expired: false,
        }];
        all.extend(owners.iter().enumerate().map(|(i, o)| Lease {
            part: i as i32,
            owner: o.map(str::to_owned),
            expired: false,
        }));
        all
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// Runs rounds of every node in turn until nothing changes.
    fn settle(nodes: &[&str], all: &mut [Lease]) {
        for _ in 0..10 {
            let mut changed = false;
            for me in nodes {
                let p = plan(me, &names(nodes), all, false);
                for l in all.iter_mut() {
                    if p.release.contains(&l.part) {
                        l.owner = None;
                        changed = true;
                    } else if p.take.contains(&l.part) {
                        l.owner = Some(me.to_string());
                        l.expired = false;
                        changed = true;
                    }
                }
            }
            if !changed {
                return;
            }
        }
        panic!("did not settle");
    }

    fn count(all: &[Lease], node: &str) -> usize {
        all.iter()
            .filter(|l| l.part >= 0 && l.owner.as_deref() == Some(node))
            .count()
    }

    #[test]
    fn a_lone_node_takes_every_free_partition() {
        let p = plan("a", &names(&["a"]), &leases(&[None; 8]), false);
        assert_eq!(p.take, (0..8).collect::<Vec<_>>());
        assert!(p.release.is_empty());
    }

    #[test]
    fn nodes_that_join_get_their_share_and_nobody_holds_more_than_the_ceiling() {
        let mut all = leases(&[Some("a"); 64]);
        settle(&["a", "b", "c"], &mut all);
        // At most the ceiling (22) each; the last to take gets the rest.
        for n in ["a", "b", "c"] {
            let c = count(&all, n);
            assert!((20..=22).contains(&c), "{n} holds {c}");
        }
        assert!(
            all.iter().all(|l| l.owner.is_some()),
            "every partition held"
        );
    }

    #[test]
    fn a_dead_nodes_expired_leases_are_shared_by_the_survivors_and_live_ones_are_left_alone() {
        let mut all = leases(&[]);
        all.extend((0..12).map(|i| Lease {
            part: i,
            owner: Some(["a", "b", "c"][i as usize % 3].into()),
            expired: false,
        }));
        // c died: its leases expired, and it is no longer seen.
        for l in all.iter_mut().filter(|l| l.owner.as_deref() == Some("c")) {
            l.expired = true;
        }
        let p = plan("a", &names(&["a", "b"]), &all, false);
        assert!(p.release.is_empty());
        assert!(p.take.iter().all(|t| t % 3 == 2), "only c's: {:?}", p.take);
        assert_eq!(p.take.len(), 2, "up to the share of 6, from 4");
        settle(&["a", "b"], &mut all);
        assert_eq!((count(&all, "a"), count(&all, "b")), (6, 6));
    }

    #[test]
    fn a_leaving_node_gives_up_everything_including_maintenance() {
        let mut all = leases(&[Some("a"), Some("b"), Some("a")]);
        all[0].owner = Some("a".into());
        let p = plan("a", &names(&["b"]), &all, true);
        assert_eq!(p.release, vec![MAINTENANCE, 0, 2]);
        assert!(p.take.is_empty());
    }

    #[test]
    fn the_maintenance_lease_is_taken_only_when_free_or_expired() {
        let mut all = leases(&[]);
        assert!(plan("a", &names(&["a"]), &all, false).take.is_empty());
        all[0].expired = true;
        assert_eq!(
            plan("a", &names(&["a"]), &all, false).take,
            vec![MAINTENANCE]
        );
    }
}
