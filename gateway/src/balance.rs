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
