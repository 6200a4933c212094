//! Scaling units down without cutting sessions off: a removed unit drains first.
//!
//! A StatefulSet always removes its highest ordinals. When `spec.replicas` drops, the operator
//! keeps the StatefulSet at its size, labels the extra units' Services `draining` (the gateway
//! gives them no new sessions and moves each session they hold to its backup at its next
//! request), and only after the drain period (at most the unit pods'
//! `terminationGracePeriodSeconds`, [`bounded_drain_period`]) shrinks the StatefulSet and
//! deletes their Services. A session idle for the whole drain then fails over to the same
//! backup whenever it comes back. The start of the drain is kept in an
//! annotation on the StatefulSet, so an operator restart (or a new leader) continues it.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use stickyfarm_api::config::UNIT_TERMINATION_GRACE;

/// The drain period the operator applies: the configured one, at most the unit pods'
/// `terminationGracePeriodSeconds`. A drain moves every session of a draining unit at its next
/// request (the gateway asks the unit to release it and sends it to its backup), so active
/// sessions leave within seconds; a longer drain would only keep idle sessions in place, and
/// they fail over to the same backup (its warm copy, or PostgreSQL) whenever they come back.
pub fn bounded_drain_period(configured: Duration) -> Duration {
    configured.min(UNIT_TERMINATION_GRACE)
}

/// Annotation on the unit StatefulSet: when the current drain started (RFC 3339).
pub const DRAIN_SINCE_ANNOTATION: &str = "stickyfarm.dev/drain-since";

/// What the reconciler saw of the unit StatefulSet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObservedUnits {
    /// Its `spec.replicas`, when it exists.
    pub replicas: Option<u32>,
    /// Its drain annotation, when a drain is under way.
    pub drain_since: Option<Timestamp>,
}

/// What to do about the units' count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalePlan {
    /// Replicas of the StatefulSet now.
    pub unit_replicas: u32,
    /// The drain under way, to keep in the annotation.
    pub drain_since: Option<Timestamp>,
    /// Come back when the drain period ends.
    pub requeue_after: Option<Duration>,
}

/// Plans the unit count for `desired` replicas.
pub fn plan(
    desired: u32,
    seen: ObservedUnits,
    now: Timestamp,
    drain_period: Duration,
) -> ScalePlan {
    let current = seen.replicas.unwrap_or(desired);
    if desired >= current {
        return ScalePlan {
            unit_replicas: desired,
            drain_since: None,
            requeue_after: None,
        };
    }
    let since = seen.drain_since.unwrap_or(now);
    let period = SignedDuration::try_from(drain_period).unwrap_or(SignedDuration::MAX);
    let ends = since.checked_add(period).unwrap_or(Timestamp::MAX);
    if now >= ends {
        ScalePlan {
            unit_replicas: desired,
            drain_since: None,
            requeue_after: None,
        }
    } else {
        let left = now.duration_until(ends);
        ScalePlan {
            unit_replicas: current,
            drain_since: Some(since),
            requeue_after: Some(Duration::try_from(left).unwrap_or(drain_period)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(30);

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn a_new_farm_gets_its_replicas() {
        let p = plan(3, ObservedUnits::default(), at(0), PERIOD);
        assert_eq!(
            (p.unit_replicas, p.drain_since, p.requeue_after),
            (3, None, None)
        );
    }

    #[test]
    fn scaling_up_is_immediate_and_cancels_a_drain() {
        let seen = ObservedUnits {
            replicas: Some(3),
            drain_since: Some(at(0)),
        };
        let p = plan(5, seen, at(1), PERIOD);
        assert_eq!((p.unit_replicas, p.drain_since), (5, None));
    }

    #[test]
    fn scaling_down_drains_first_then_removes() {
        // 5 → 2: the StatefulSet stays at 5, units 2..5 drain.
        let seen = ObservedUnits {
            replicas: Some(5),
            drain_since: None,
        };
        let p = plan(2, seen, at(0), PERIOD);
        assert_eq!(p.unit_replicas, 5);
        assert_eq!(p.drain_since, Some(at(0)));
        assert_eq!(p.requeue_after, Some(PERIOD));

        // 10 s later (e.g. after an operator restart): still draining, 20 s left.
        let seen = ObservedUnits {
            replicas: Some(5),
            drain_since: Some(at(0)),
        };
        let p = plan(2, seen, at(10), PERIOD);
        assert_eq!((p.unit_replicas, p.drain_since), (5, Some(at(0))));
        assert_eq!(p.requeue_after, Some(Duration::from_secs(20)));

        // After the period: shrink and delete units 2, 3, 4.
        let p = plan(2, seen, at(30), PERIOD);
        assert_eq!(p.unit_replicas, 2, "units 2, 3, 4 go");
        assert_eq!((p.drain_since, p.requeue_after), (None, None));
    }

    #[test]
    fn a_drain_lasts_at_most_the_unit_pods_termination_grace() {
        assert_eq!(bounded_drain_period(PERIOD), PERIOD);
        assert_eq!(
            bounded_drain_period(Duration::from_secs(600)),
            UNIT_TERMINATION_GRACE
        );
        assert_eq!(bounded_drain_period(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn zero_drain_period_removes_at_once() {
        let seen = ObservedUnits {
            replicas: Some(3),
            drain_since: None,
        };
        let p = plan(1, seen, at(0), Duration::ZERO);
        assert_eq!((p.unit_replicas, p.drain_since), (1, None));
    }
}
