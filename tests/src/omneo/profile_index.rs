//! A tenant's profiles: the records in creation order, and indexes over them (id, lowercased
//! email, mobile, identity) kept exact on every change, so finding a profile and checking the
//! uniqueness rules take constant time however many profiles the tenant holds. A 100,000-profile
//! backfill, which reads each profile and writes an identity back to it, stays linear.
//!
//! Every change goes through [`Profiles`]: [`Profiles::push`], [`Profiles::truncate`],
//! [`Profiles::remove`], and [`Profiles::get_mut`], whose guard re-indexes the profile when it is
//! dropped (as `BinaryHeap::peek_mut` restores the heap), so no writer can leave an index behind.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};

use super::profiles::{Profile, ProfileRecord};

/// A tenant's profiles, in creation order, indexed.
#[derive(Debug, Default)]
pub(crate) struct Profiles {
    records: Vec<ProfileRecord>,
    index: ProfileIndex,
}

impl Profiles {
    /// How many profiles there are.
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Every profile, in creation order.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, ProfileRecord> {
        self.records.iter()
    }

    /// The profile with this id.
    pub(crate) fn get(&self, id: &str) -> Option<&ProfileRecord> {
        self.index.positions.get(id).map(|&at| &self.records[at])
    }

    /// The profile with this id, to change: it is re-indexed when the guard is dropped. Its id
    /// is the key of everything else and cannot change (the guard restores it).
    pub(crate) fn get_mut(&mut self, id: &str) -> Option<ProfileMut<'_>> {
        let position = *self.index.positions.get(id)?;
        let before = Keys::of(&self.records[position].profile);
        Some(ProfileMut {
            profiles: self,
            position,
            id: id.to_owned(),
            before,
        })
    }

    /// Adds a profile after the others.
    ///
    /// # Panics
    /// When a profile with the same id is already there (ids are fresh UUIDs).
    pub(crate) fn push(&mut self, record: ProfileRecord) {
        let id = record.profile.id.clone();
        let previous = self.index.positions.insert(id.clone(), self.records.len());
        assert!(previous.is_none(), "profile {id} added twice");
        self.index.claim(&id, &Keys::of(&record.profile));
        self.records.push(record);
    }

    /// Forgets the profiles added after the first `len` (an all-or-none insert that failed).
    pub(crate) fn truncate(&mut self, len: usize) {
        let len = len.min(self.records.len());
        for record in self.records.drain(len..) {
            self.index.positions.remove(&record.profile.id);
            self.index
                .release(&record.profile.id, &Keys::of(&record.profile));
        }
    }

    /// Removes a profile; the ones after it move up (linear, as the `Vec` is).
    pub(crate) fn remove(&mut self, id: &str) -> Option<ProfileRecord> {
        let position = self.index.positions.remove(id)?;
        let record = self.records.remove(position);
        self.index.release(id, &Keys::of(&record.profile));
        for (at, later) in self.records.iter().enumerate().skip(position) {
            *self
                .index
                .positions
                .get_mut(&later.profile.id)
                .expect("every profile has a position") = at;
        }
        Some(record)
    }

    /// Ids of the profiles holding this email (ignoring case).
    pub(crate) fn email_holders(&self, email: &str) -> &[String] {
        holders(&self.index.emails, email.to_ascii_lowercase().as_str())
    }

    /// Ids of the profiles holding this mobile.
    pub(crate) fn mobile_holders(&self, mobile: &str) -> &[String] {
        holders(&self.index.mobiles, mobile)
    }

    /// Ids of the profiles holding identity (handle, identifier).
    pub(crate) fn identity_holders(&self, handle: &str, identifier: &str) -> &[String] {
        holders(
            &self.index.identities,
            &(handle.to_owned(), identifier.to_owned()),
        )
    }

    /// The first in creation order of `holders` (as a scan would find it).
    pub(crate) fn first_of(&self, holders: &[String]) -> Option<&ProfileRecord> {
        holders
            .iter()
            .filter_map(|id| self.index.positions.get(id))
            .min()
            .map(|&at| &self.records[at])
    }

    /// Checks the indexes against a full scan of the profiles (for tests).
    ///
    /// # Panics
    /// When an index is out of step with the profiles.
    #[cfg(test)]
    pub(crate) fn assert_indexed(&self) {
        let mut scanned = ProfileIndex::default();
        for (at, record) in self.records.iter().enumerate() {
            scanned.positions.insert(record.profile.id.clone(), at);
            scanned.claim(&record.profile.id, &Keys::of(&record.profile));
        }
        assert_eq!(self.index.positions, scanned.positions, "positions");
        assert_eq!(
            self.index.normalised(),
            scanned.normalised(),
            "email, mobile and identity indexes"
        );
    }
}

/// A profile being changed; re-indexed when dropped (see [`Profiles::get_mut`]).
pub(crate) struct ProfileMut<'a> {
    profiles: &'a mut Profiles,
    position: usize,
    id: String,
    before: Keys,
}

impl Deref for ProfileMut<'_> {
    type Target = ProfileRecord;

    fn deref(&self) -> &ProfileRecord {
        &self.profiles.records[self.position]
    }
}

impl DerefMut for ProfileMut<'_> {
    fn deref_mut(&mut self) -> &mut ProfileRecord {
        &mut self.profiles.records[self.position]
    }
}

impl Drop for ProfileMut<'_> {
    fn drop(&mut self) {
        let profile = &mut self.profiles.records[self.position].profile;
        profile.id.clone_from(&self.id);
        let after = Keys::of(profile);
        self.profiles.index.change(&self.id, &self.before, &after);
    }
}

/// What a profile holds that is looked up: its email (lowercased), mobile and identities.
#[derive(Debug, PartialEq, Eq)]
struct Keys {
    email: Option<String>,
    mobile: Option<String>,
    identities: Vec<(String, String)>,
}

impl Keys {
    /// Nothing held.
    const NONE: Self = Self {
        email: None,
        mobile: None,
        identities: Vec::new(),
    };

    /// What `profile` holds.
    fn of(profile: &Profile) -> Self {
        Self {
            email: profile.email.as_deref().map(str::to_ascii_lowercase),
            mobile: profile.mobile_phone.clone(),
            identities: profile
                .identities
                .iter()
                .map(|i| (i.handle.clone(), i.identifier.clone()))
                .collect(),
        }
    }
}

/// Where each profile is, and who holds each key.
///
/// A key maps to the ids of its holders (once per time a profile holds it), not to one id:
/// the API keeps keys unique, but a CX Manager edit through the handle
/// ([`super::OmneoSim::edit_profile`]) is not validated, and lookups must answer as a scan of
/// the profiles would even then.
#[derive(Debug, Default, PartialEq, Eq)]
struct ProfileIndex {
    /// Id → position in [`Profiles::records`].
    positions: HashMap<String, usize>,
    /// Lowercased email → holders.
    emails: HashMap<String, Vec<String>>,
    /// Mobile → holders.
    mobiles: HashMap<String, Vec<String>>,
    /// (handle, identifier) → holders.
    identities: HashMap<(String, String), Vec<String>>,
}

impl ProfileIndex {
    /// Records that profile `id` holds `keys`.
    fn claim(&mut self, id: &str, keys: &Keys) {
        self.change(id, &Keys::NONE, keys);
    }

    /// Records that profile `id` no longer holds `keys`.
    fn release(&mut self, id: &str, keys: &Keys) {
        self.change(id, keys, &Keys::NONE);
    }

    /// Records that profile `id` now holds `after` instead of `before`, touching only the
    /// indexes whose keys differ.
    fn change(&mut self, id: &str, before: &Keys, after: &Keys) {
        if before.email != after.email {
            if let Some(email) = &before.email {
                remove_holder(&mut self.emails, email, id);
            }
            if let Some(email) = &after.email {
                add_holder(&mut self.emails, email, id);
            }
        }
        if before.mobile != after.mobile {
            if let Some(mobile) = &before.mobile {
                remove_holder(&mut self.mobiles, mobile, id);
            }
            if let Some(mobile) = &after.mobile {
                add_holder(&mut self.mobiles, mobile, id);
            }
        }
        if before.identities != after.identities {
            for identity in &before.identities {
                remove_holder(&mut self.identities, identity, id);
            }
            for identity in &after.identities {
                add_holder(&mut self.identities, identity, id);
            }
        }
    }

    /// The key indexes with each holder list sorted, to compare indexes built in another order.
    #[cfg(test)]
    fn normalised(&self) -> Self {
        fn sorted<K: Clone + Eq + Hash>(map: &HashMap<K, Vec<String>>) -> HashMap<K, Vec<String>> {
            map.iter()
                .map(|(key, ids)| {
                    let mut ids = ids.clone();
                    ids.sort();
                    (key.clone(), ids)
                })
                .collect()
        }
        Self {
            positions: HashMap::new(),
            emails: sorted(&self.emails),
            mobiles: sorted(&self.mobiles),
            identities: sorted(&self.identities),
        }
    }
}

fn holders<'a, K, Q>(map: &'a HashMap<K, Vec<String>>, key: &Q) -> &'a [String]
where
    K: Borrow<Q> + Eq + Hash,
    Q: Eq + Hash + ?Sized,
{
    map.get(key).map_or(&[], Vec::as_slice)
}

fn add_holder<K: Clone + Eq + Hash>(map: &mut HashMap<K, Vec<String>>, key: &K, id: &str) {
    match map.get_mut(key) {
        Some(ids) => ids.push(id.to_owned()),
        None => {
            map.insert(key.clone(), vec![id.to_owned()]);
        }
    }
}

fn remove_holder<K: Eq + Hash>(map: &mut HashMap<K, Vec<String>>, key: &K, id: &str) {
    let Some(ids) = map.get_mut(key) else {
        return;
    };
    if let Some(at) = ids.iter().position(|held| held == id) {
        ids.swap_remove(at);
    }
    if ids.is_empty() {
        map.remove(key);
    }
}

#[cfg(test)]
mod tests {

    use serde_json::{Map, Value, json};

    use super::super::TenantSpec;
    use super::super::profiles::NewProfile;
    use super::super::responses::ApiError;
    use super::super::state::Tenant;

    fn tenant() -> Tenant {
        Tenant::new(TenantSpec::new("acme", "token", "acme", "secret"))
    }

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().expect("an object").clone()
    }

    fn is_422(result: Result<impl std::fmt::Debug, ApiError>, field: &str) -> bool {
        matches!(result, Err(ApiError::Validation(errors)) if errors.contains_key(field))
    }

    #[test]
    fn indexes_follow_every_change_and_keep_the_uniqueness_rules() {
        let mut t = tenant();
        let demo = t
            .insert_profiles((1..=20).map(NewProfile::demo).collect())
            .unwrap();
        let ada = t
            .insert_profile(NewProfile::new("Ada", "Lovelace", "Ada@Example.org"))
            .unwrap();
        t.profiles.assert_indexed();
        assert!(is_422(
            t.insert_profile(NewProfile::new("A", "B", "ada@example.ORG")),
            "email"
        ));

        // PUT /profiles/{id}: a new email and mobile free the old ones; a clash is a 422 that
        // changes nothing; a profile keeps its own values (in another case, too).
        let (a, b) = (&demo[0], &demo[1]);
        let old_email = a.email.clone().unwrap();
        let old_mobile = a.mobile_phone.clone().unwrap();
        t.update_profile(
            &a.id,
            &body(json!({"email": "moved@example.org", "mobile_phone": "+61400000001"})),
        )
        .unwrap();
        t.profiles.assert_indexed();
        let taken = json!({"email": "MOVED@example.org"});
        assert!(is_422(t.update_profile(&b.id, &body(taken)), "email"));
        let taken = json!({"mobile_phone": "+61400000001"});
        assert!(is_422(
            t.update_profile(&b.id, &body(taken)),
            "mobile_phone"
        ));
        let own = json!({"email": "Moved@Example.org", "mobile_phone": "+61400000001"});
        assert!(t.update_profile(&a.id, &body(own)).unwrap().1);
        t.update_profile(
            &b.id,
            &body(json!({"email": old_email.to_uppercase(), "mobile_phone": old_mobile})),
        )
        .unwrap();
        t.profiles.assert_indexed();
        assert_eq!(t.profile_by_email(&old_email).unwrap().id, b.id);

        // A CX Manager edit: clearing contacts frees them; the id cannot change.
        let (_, event) = t
            .cx_edit(&ada.id, |p| {
                p.email = None;
                p.mobile_phone = Some("+61400000002".into());
                p.id = "another".into();
            })
            .unwrap();
        assert!(event.is_some());
        t.profiles.assert_indexed();
        assert!(t.profile_by_email("ada@example.org").is_none());
        assert!(t.record(&ada.id).is_ok() && t.record("another").is_err());

        // Identities: add, replace (the old identifier is free again), delete; touch.
        t.add_identity(&a.id, "klaviyo", "01A").unwrap();
        assert!(is_422(
            t.add_identity(&b.id, "klaviyo", "01A"),
            "identifier"
        ));
        assert!(is_422(t.add_identity(&a.id, "klaviyo", "01Z"), "handle"));
        t.profiles.assert_indexed();
        let (_, changed) = t.set_identity(&a.id, "klaviyo", "01B").unwrap();
        assert!(changed);
        let (_, changed) = t.set_identity(&a.id, "klaviyo", "01B").unwrap();
        assert!(!changed, "the same identifier again changes nothing");
        t.profiles.assert_indexed();
        assert!(t.profile_by_identity("klaviyo", "01A").is_none());
        assert_eq!(t.profile_by_identity("klaviyo", "01B").unwrap().id, a.id);
        t.add_identity(&b.id, "klaviyo", "01A").unwrap();
        assert!(is_422(
            t.set_identity(&b.id, "klaviyo", "01B"),
            "identifier"
        ));
        t.remove_identity(&a.id, "klaviyo").unwrap();
        t.touch(&a.id).unwrap();
        t.profiles.assert_indexed();
        assert!(t.profile_by_identity("klaviyo", "01B").is_none());
        t.set_identity(&b.id, "klaviyo", "01B").unwrap();
        t.profiles.assert_indexed();

        // Deleting a profile moves the later ones up and frees what it held.
        let gone = &demo[5];
        t.delete_profile(&gone.id).unwrap();
        t.profiles.assert_indexed();
        assert!(t.record(&gone.id).is_err());
        for later in &demo[6..] {
            assert_eq!(t.record(&later.id).unwrap().profile.id, later.id);
        }
        let (handle, identifier) = ("shopify", &gone.identities[0].identifier);
        assert!(t.profile_by_identity(handle, identifier).is_none());
        let mut again = NewProfile::new("Again", "Here", gone.email.as_deref().unwrap());
        again.mobile_phone.clone_from(&gone.mobile_phone);
        again.identities = vec![(handle.into(), identifier.clone())];
        t.insert_profile(again).unwrap();
        t.profiles.assert_indexed();

        // A bulk insert that fails inserts nothing and leaves the indexes as they were.
        let count = t.profiles.len();
        let clash = NewProfile::new("C", "D", "clash@example.org");
        let failed = t.insert_profiles(vec![clash.clone(), NewProfile::demo(900), clash]);
        assert!(is_422(failed, "2.email"));
        assert_eq!(t.profiles.len(), count);
        t.profiles.assert_indexed();
        assert!(t.profile_by_email("clash@example.org").is_none());

        // An unchecked handle edit may share an email: lookups answer as a scan would (the
        // first created), and the uniqueness rules still see the other holder.
        let (c, d) = (&demo[10], &demo[12]);
        let shared = d.email.clone().unwrap();
        t.cx_edit(&c.id, |p| p.email = Some(shared.clone()))
            .unwrap();
        t.profiles.assert_indexed();
        assert_eq!(t.profile_by_email(&shared).unwrap().id, c.id);
        assert!(is_422(
            t.update_profile(&d.id, &body(json!({"email": shared}))),
            "email"
        ));
        t.delete_profile(&c.id).unwrap();
        t.profiles.assert_indexed();
        assert_eq!(t.profile_by_email(&shared).unwrap().id, d.id);
        let listed: Vec<_> = t.profiles.iter().map(|r| r.profile.id.clone()).collect();
        let expected: Vec<_> = demo
            .iter()
            .map(|p| p.id.clone())
            .filter(|id| *id != gone.id && *id != c.id)
            .chain([ada.id.clone()])
            .collect();
        assert_eq!(listed[..expected.len()], expected[..], "creation order");
    }

    /// A backfill's share of the simulator's work on a 100,000-profile tenant: the import (of
    /// seed data built before the clock starts), an identity upsert per profile (`PUT`, then
    /// `POST` on 404, each bumping `updated_at` as the handlers do), and reads by id and by
    /// identity. With a scan per lookup this was quadratic; with the indexes it takes seconds
    /// even in a debug build.
    #[test]
    fn a_hundred_thousand_profile_backfill_stays_indexed() {
        const COUNT: u32 = 100_000;
        let mut t = tenant();
        let news = (1..=COUNT).map(NewProfile::demo).collect();
        let profiles = t.insert_profiles(news).unwrap();
        for (n, profile) in profiles.iter().enumerate() {
            let identifier = format!("01K{n:023}");
            match t.set_identity(&profile.id, "klaviyo", &identifier) {
                Err(ApiError::NotFound(_)) => {
                    t.add_identity(&profile.id, "klaviyo", &identifier).unwrap();
                }
                other => panic!("the klaviyo identity is new: {other:?}"),
            }
            t.touch(&profile.id).unwrap();
        }
        for (n, profile) in profiles.iter().enumerate() {
            let record = t.record(&profile.id).unwrap();
            assert_eq!(record.profile.identities.len(), 2);
            let identifier = format!("01K{n:023}");
            let holder = t.profile_by_identity("klaviyo", &identifier).unwrap();
            assert_eq!(holder.id, profile.id);
        }
        t.profiles.assert_indexed();
    }
}
