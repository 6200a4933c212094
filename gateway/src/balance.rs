//! Load-balancing policies: which unit gets a new session (the main farm unit's job, FIG. 4A).
//!
//! Pure functions over candidates, so they are tested without sockets.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

/// How a new session's unit is chosen (part of the configuration contract in `api`).
pub use stickyfarm_api::config::Policy;

/// One unit that may take a new session.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    /// Requests in flight.
    pub in_flight: u64,
    /// Share while ramping up after (re)joining: 0.05..=1.
    pub weight: f64,
}

/// Picks a candidate's index; `None` when there are none.
///
/// The weight (slow start) scales how often a unit is drawn, so a unit that just came back
/// gets a growing share of new sessions instead of a flood.
pub fn pick(
    policy: Policy,
    candidates: &[Candidate],
    rng: &mut impl Rng,
    turn: &AtomicUsize,
) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(0),
        n => Some(match policy {
            Policy::LeastInFlight => {
                let a = weighted(candidates, rng);
                let b = weighted(candidates, rng);
                if candidates[b].in_flight < candidates[a].in_flight {
                    b
                } else {
                    a
                }
            }
            Policy::RoundRobin => {
                let start = turn.fetch_add(1, Ordering::Relaxed);
                // Walk from this turn's unit; a ramping unit is skipped with probability 1 - w.
                (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| rng.random::<f64>() < candidates[i].weight)
                    .unwrap_or(start % n)
            }
            Policy::Random => weighted(candidates, rng),
        }),
    }
}

fn weighted(candidates: &[Candidate], rng: &mut impl Rng) -> usize {
    let total: f64 = candidates.iter().map(|c| c.weight).sum();
    let mut x = rng.random::<f64>() * total;
    for (i, c) in candidates.iter().enumerate() {
        if x < c.weight {
            return i;
        }
        x -= c.weight;
    }
    candidates.len() - 1
}

/// Rebalancing after a scale-up: where a session of a unit holding `home` sessions should
/// move, given the sessions of the other units that take new ones (`others`), or `None` when it
/// should stay. It moves when its unit holds more than 1.2× the mean, to the unit holding the
/// fewest, if that one is at or below the mean and at least two fewer than its unit (so two
/// units never trade sessions back and forth).
pub fn rebalance_target(home: u64, others: &[u64]) -> Option<usize> {
    let total: u64 = home + others.iter().sum::<u64>();
    let mean = total as f64 / (others.len() + 1) as f64;
    if (home as f64) <= 1.2 * mean {
        return None;
    }
    let (i, &fewest) = others.iter().enumerate().min_by_key(|(_, n)| **n)?;
    (fewest as f64 <= mean && fewest + 2 <= home).then_some(i)
}

/// Rendezvous (highest random weight) choice: the same key picks the same candidate on every
/// gateway replica, and removing a candidate only moves the keys that were on it.
pub fn rendezvous<T>(
    key: &[u8],
    candidates: impl IntoIterator<Item = T>,
    name: impl Fn(&T) -> &str,
) -> Option<T> {
    candidates
        .into_iter()
        .max_by_key(|c| fnv1a(key, name(c).as_bytes()))
}

/// FNV-1a over two byte strings: stable across processes and builds (unlike `RandomState`).
fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in a.iter().chain([0xff].iter()).chain(b) {
        h ^= u64::from(x);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn flat(n: usize) -> Vec<Candidate> {
        vec![
            Candidate {
                in_flight: 0,
                weight: 1.0
            };
            n
        ]
    }

    fn histogram(policy: Policy, c: &[Candidate], draws: usize) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(7);
        let turn = AtomicUsize::new(0);
        let mut h = vec![0; c.len()];
        for _ in 0..draws {
            h[pick(policy, c, &mut rng, &turn).unwrap()] += 1;
        }
        h
    }

    #[test]
    fn every_policy_spreads_idle_units_evenly() {
        for policy in [Policy::LeastInFlight, Policy::RoundRobin, Policy::Random] {
            let h = histogram(policy, &flat(4), 4000);
            for n in &h {
                assert!((800..=1200).contains(n), "{policy:?}: {h:?}");
            }
        }
        assert_eq!(
            histogram(Policy::RoundRobin, &flat(3), 300),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn least_in_flight_avoids_the_busy_unit() {
        let mut c = flat(3);
        c[1].in_flight = 50;
        let h = histogram(Policy::LeastInFlight, &c, 3000);
        // The busy unit only wins when drawn twice (1/9 of the time).
        assert!(h[1] < 450, "{h:?}");
    }

    #[test]
    fn slow_start_limits_a_returning_unit() {
        let mut c = flat(2);
        c[0].weight = 0.1;
        for policy in [Policy::LeastInFlight, Policy::Random, Policy::RoundRobin] {
            let h = histogram(policy, &c, 2000);
            assert!(h[0] < 400, "{policy:?}: {h:?}");
            assert!(
                h[0] > 0,
                "{policy:?}: a ramping unit still gets some: {h:?}"
            );
        }
    }

    #[test]
    fn no_candidates_no_pick() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            pick(Policy::LeastInFlight, &[], &mut rng, &AtomicUsize::new(0)),
            None
        );
    }

    #[test]
    fn only_a_unit_above_its_share_gives_sessions_and_only_to_the_emptiest() {
        // 3 units with 10 each, 3 new ones: move to a new one.
        assert_eq!(rebalance_target(10, &[10, 10, 0, 0, 0]), Some(2));
        // Within 1.2× of the mean (5.5 here): stay.
        assert_eq!(rebalance_target(6, &[5, 5, 6, 6, 5]), None);
        // The emptiest is above the mean: nowhere to go.
        assert_eq!(rebalance_target(9, &[8, 8, 0]), Some(2));
        assert_eq!(rebalance_target(3, &[2, 2]), None);
        // Small farms never trade one session back and forth.
        assert_eq!(rebalance_target(2, &[1]), None);
        assert_eq!(rebalance_target(2, &[0]), Some(0));
        // Alone: nowhere to go.
        assert_eq!(rebalance_target(9, &[]), None);
    }

    #[test]
    fn rendezvous_is_stable_and_moves_only_the_removed_units_keys() {
        let units = ["web-0", "web-1", "web-2", "web-3"];
        let keys: Vec<String> = (0..400).map(|i| format!("session-{i}")).collect();
        let choose = |names: &[&str], k: &str| {
            rendezvous(k.as_bytes(), names.iter(), |n| n).map(|n| (*n).to_owned())
        };
        let before: Vec<_> = keys.iter().map(|k| choose(&units, k).unwrap()).collect();
        let again: Vec<_> = keys.iter().map(|k| choose(&units, k).unwrap()).collect();
        assert_eq!(before, again);
        let without = ["web-0", "web-1", "web-3"];
        for (k, b) in keys.iter().zip(&before) {
            let a = choose(&without, k).unwrap();
            if b != "web-2" {
                assert_eq!(&a, b, "a key not on the removed unit must not move");
            }
        }
        let spread = units.map(|u| before.iter().filter(|b| *b == u).count());
        assert!(spread.iter().all(|&n| n > 60), "{spread:?}");
    }
}
