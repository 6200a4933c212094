//! Session ids this unit issued but nobody wrote to yet ("pending" sessions).
//!
//! A client without a session gets a new id at once (the cookie is set on the first answer),
//! but a session row and a cache entry exist only once the app writes state: a crawler or a
//! flood of cookieless requests costs no database row and evicts no cached session.
//!
//! A pending id must still never be one a client chose (session fixation): ids are minted as
//! `issue hour (2 bytes) ‖ random (8) ‖ HMAC-SHA256(instance key, those 10 bytes)[..6]`, with
//! a key that never leaves this process: 64 random bits keep ids of one hour apart, a 48-bit tag
//! makes forging one hopeless, and the hour bounds how long an id stays pending. A presented id that is not in PostgreSQL is honoured
//! only if its tag verifies, it was issued within the pending window, and it was not deleted
//! since (a logged-out id is never brought back by a late write). Another unit cannot verify
//! the tag, so a pending session that fails over before its first write simply gets a new id
//! there — nothing is lost, it had no state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use stickyfarm_api::{SessionId, SessionIdKey, StoredId};

type Tag = Hmac<Sha256>;

/// Ids remembered at most in each of the sets below. Only app writes create sessions, so this
/// is not reached honestly; if it is, the sets answer conservatively (see their uses).
const MAX_REMEMBERED: usize = 100_000;

/// Mints and recognises this instance's session ids.
pub struct IssuedIds {
    key: [u8; 32],
    window: Duration,
    /// Turns ids into the stored ids the sets below are keyed by: deletions announced by other
    /// units name only the stored id.
    stored: SessionIdKey,
    /// Ids issued here that were deleted, with their issue hour (pruned after the window).
    deleted: Mutex<HashMap<StoredId, u16>>,
    /// Ids issued here that got a session row (a first write, a rotation), likewise.
    created: Mutex<HashMap<StoredId, u16>>,
}

impl IssuedIds {
    /// A fresh random key; ids are pending for `window` after they were issued. `stored` is
    /// the farm's session-id key.
    pub fn new(window: Duration, stored: SessionIdKey) -> IssuedIds {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source failed; cannot mint session ids");
        IssuedIds {
            key,
            window,
            stored,
            deleted: Mutex::new(HashMap::new()),
            created: Mutex::new(HashMap::new()),
        }
    }

    fn mac(&self, head: &[u8]) -> Tag {
        let mut mac = Tag::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(head);
        mac
    }

    /// A new id, issued at `now` (Unix seconds).
    pub fn issue(&self, now: u64) -> SessionId {
        let mut bytes = [0u8; 16];
        bytes[..2].copy_from_slice(&hour(now).to_be_bytes());
        getrandom::fill(&mut bytes[2..10])
            .expect("the OS random source failed; cannot mint session ids");
        let tag = self.mac(&bytes[..10]).finalize().into_bytes();
        bytes[10..].copy_from_slice(&tag[..6]);
        SessionId::from_uuid(uuid::Uuid::from_bytes(bytes))
    }

    /// The hour this instance issued `id` in, if it did.
    fn issue_hour(&self, id: &SessionId) -> Option<u16> {
        let bytes = id.as_bytes();
        // Constant time: the comparison leaks nothing about the expected tag.
        self.mac(&bytes[..10])
            .verify_truncated_left(&bytes[10..])
            .ok()?;
        Some(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// Whether an id issued in hour `at` is still within the window at `now`: the window is
    /// counted in whole hours, rounded up (and the hour counter wraps every 7.5 years).
    fn fresh(&self, at: u16, now: u64) -> bool {
        let age = hour(now).wrapping_sub(at);
        u64::from(age) <= self.window.as_secs().div_ceil(3600)
    }

    /// Whether `id` is a session this instance issued that may still get its first write.
    /// With the deleted set full, nothing is (a deletion might not have been remembered).
    pub fn pending(&self, id: &SessionId, now: u64) -> bool {
        self.issue_hour(id).is_some_and(|at| self.fresh(at, now)) && {
            let deleted = self.deleted.lock().expect("deleted ids poisoned");
            deleted.len() < MAX_REMEMBERED && !deleted.contains_key(&self.stored.stored(id))
        }
    }

    /// Whether `id` is pending and certainly has no session row: this process made every row
    /// an id it issued can have, and remembers them, so the database need not be asked. With
    /// the created set full, `false` (ask the database).
    pub fn never_written(&self, id: &SessionId, now: u64) -> bool {
        self.pending(id, now) && {
            let created = self.created.lock().expect("created ids poisoned");
            created.len() < MAX_REMEMBERED && !created.contains_key(&self.stored.stored(id))
        }
    }

    /// `id` was deleted (logout, expiry, another unit's delete): it never becomes pending again.
    pub fn forget(&self, id: &SessionId, now: u64) {
        self.remember(&self.deleted, id, now);
    }

    /// The session stored as `stored` was deleted, as another unit announced. Only an id
    /// issued here that got a row can be deleted elsewhere (a pending id has no row to delete),
    /// so the created set says whether it was ours and when it was issued.
    pub fn forget_stored(&self, stored: &StoredId, now: u64) {
        let Some(at) = self
            .created
            .lock()
            .expect("created ids poisoned")
            .get(stored)
            .copied()
        else {
            return;
        };
        self.remember_at(&self.deleted, *stored, at, now);
    }

    /// `id` got a session row here (its first write, or a rotation to it).
    pub fn mark_created(&self, id: &SessionId, now: u64) {
        self.remember(&self.created, id, now);
    }

    fn remember(&self, set: &Mutex<HashMap<StoredId, u16>>, id: &SessionId, now: u64) {
        let Some(at) = self.issue_hour(id).filter(|at| self.fresh(*at, now)) else {
            return;
        };
        self.remember_at(set, self.stored.stored(id), at, now);
    }

    fn remember_at(&self, set: &Mutex<HashMap<StoredId, u16>>, id: StoredId, at: u16, now: u64) {
        let mut set = set.lock().expect("id set poisoned");
        if set.len() >= MAX_REMEMBERED {
            set.retain(|_, issued| self.fresh(*issued, now));
        }
        if set.len() < MAX_REMEMBERED {
            set.insert(id, at);
        } else {
            tracing::warn!(
                "over {MAX_REMEMBERED} sessions made or deleted within the pending window; new ids now wait for the database"
            );
        }
    }
}

/// Hours since the Unix epoch, modulo 2^16.
fn hour(unix_seconds: u64) -> u16 {
    (unix_seconds / 3600) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionIdKey {
        SessionIdKey::new(b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn only_fresh_ids_issued_here_are_pending() {
        let ids = IssuedIds::new(Duration::from_secs(1800), key());
        let now = 1_900_000_000 / 3600 * 3600; // the start of an hour
        let id = ids.issue(now);
        assert!(ids.pending(&id, now));
        assert!(
            ids.pending(&id, now + 7199),
            "the window, rounded up to whole hours"
        );
        assert!(!ids.pending(&id, now + 7200), "the window is over");
        assert!(
            !ids.pending(&ids.issue(now + 7200), now),
            "issued in the future"
        );

        // A client-chosen id, an id of another instance, a tampered tag: never pending.
        assert!(!ids.pending(&SessionId::generate(), now));
        let other = IssuedIds::new(Duration::from_secs(1800), key());
        assert!(!ids.pending(&other.issue(now), now));
        let mut forged = *id.as_bytes();
        forged[15] ^= 1;
        assert!(!ids.pending(&SessionId::from_uuid(uuid::Uuid::from_bytes(forged)), now));
        let mut moved = *id.as_bytes();
        moved[1] ^= 1; // another issue hour with the old tag
        assert!(!ids.pending(&SessionId::from_uuid(uuid::Uuid::from_bytes(moved)), now));
    }

    #[test]
    fn a_deleted_id_never_becomes_pending_again() {
        let ids = IssuedIds::new(Duration::from_secs(1800), key());
        let now = 1_900_000_000;
        let id = ids.issue(now);
        let other = ids.issue(now);
        ids.forget(&id, now + 5);
        assert!(!ids.pending(&id, now + 6));
        assert!(ids.pending(&other, now + 6));
        // Forgetting what was not issued here remembers nothing.
        ids.forget(&SessionId::generate(), now);
        assert_eq!(ids.deleted.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_deletion_announced_by_stored_id_reaches_only_ids_with_a_row_here() {
        let ids = IssuedIds::new(Duration::from_secs(1800), key());
        let now = 1_900_000_000;
        let written = ids.issue(now);
        let pending = ids.issue(now);
        ids.mark_created(&written, now);
        // Another unit deleted both (as far as its notifications go): only the one with a row
        // is remembered; a pending id has no row anyone could have deleted.
        ids.forget_stored(&key().stored(&written), now + 1);
        ids.forget_stored(&key().stored(&pending), now + 1);
        ids.forget_stored(&key().stored(&SessionId::generate()), now + 1);
        assert!(
            !ids.pending(&written, now + 2),
            "a late write cannot revive it"
        );
        assert!(ids.pending(&pending, now + 2));
        assert_eq!(ids.deleted.lock().unwrap().len(), 1);
    }

    #[test]
    fn only_ids_never_written_skip_the_database() {
        let ids = IssuedIds::new(Duration::from_secs(1800), key());
        let now = 1_900_000_000;
        let id = ids.issue(now);
        assert!(ids.never_written(&id, now));
        ids.mark_created(&id, now);
        assert!(ids.pending(&id, now), "still its issuer's");
        assert!(
            !ids.never_written(&id, now),
            "it has a row now: ask the database"
        );
        assert!(!ids.never_written(&SessionId::generate(), now));
    }

    #[test]
    fn ids_are_distinct_and_well_formed() {
        let ids = IssuedIds::new(Duration::from_secs(60), key());
        let a = ids.issue(1);
        let b = ids.issue(1);
        assert_ne!(a, b);
        assert_ne!(a, SessionId::PROBE);
        let text = a.to_string();
        assert_eq!(text.parse::<SessionId>().unwrap(), a);
    }
}
