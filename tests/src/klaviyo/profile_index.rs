//! The account's profiles: the records in creation order, and an index over the identifiers
//! (id, email, phone number, external id) kept exact on every change, so finding a profile takes
//! constant time however many the account holds. A 100,000-profile backfill — bulk imports,
//! then searches by external id, then subscription jobs — stays linear.
//!
//! Every change goes through [`Profiles`]: [`Profiles::push`], [`Profiles::remove`], and
//! [`Profiles::get_mut`], whose guard re-indexes the profile when it is dropped (as
//! `BinaryHeap::peek_mut` restores the heap), so no writer can leave the index behind. Reading
//! goes through [`Profiles::iter`] and `profiles[position]`; there is no `IndexMut`.

use std::collections::{BTreeSet, HashMap};
use std::ops::{Deref, DerefMut, Index};

use super::profiles::Profile;

/// An identifier a profile is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// The profile id.
    Id,
    /// The email, compared ignoring ASCII case (it is stored lowercase).
    Email,
    /// The E.164 phone number.
    PhoneNumber,
    /// The caller's id for the profile.
    ExternalId,
}

impl Field {
    const ALL: [Self; 4] = [Self::Id, Self::Email, Self::PhoneNumber, Self::ExternalId];

    /// The field a search filter names (`id`, `email`, `phone_number`, `external_id`).
    pub(crate) fn named(name: &str) -> Option<Self> {
        match name {
            "id" => Some(Self::Id),
            "email" => Some(Self::Email),
            "phone_number" => Some(Self::PhoneNumber),
            "external_id" => Some(Self::ExternalId),
            _ => None,
        }
    }

    /// What `profile` holds in this field.
    pub(crate) fn of(self, profile: &Profile) -> Option<&str> {
        match self {
            Self::Id => Some(&profile.id),
            Self::Email => profile.email.as_deref(),
            Self::PhoneNumber => profile.phone_number.as_deref(),
            Self::ExternalId => profile.external_id.as_deref(),
        }
    }

    /// The index key of `value`: emails ASCII-lowercased (so a key lookup finds exactly what
    /// `eq_ignore_ascii_case` would), the others as they are.
    fn key(self, value: &str) -> String {
        match self {
            Self::Email => value.to_ascii_lowercase(),
            _ => value.to_owned(),
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
}

/// The account's profiles, in creation order, indexed.
#[derive(Debug, Default)]
pub(crate) struct Profiles {
    records: Vec<Profile>,
    index: ProfileIndex,
}

impl Profiles {
    /// How many profiles there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// Every profile, in creation order.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Profile> {
        self.records.iter()
    }

    /// A copy of every profile, in creation order.
    pub(crate) fn to_vec(&self) -> Vec<Profile> {
        self.records.clone()
    }

    /// The position of the first profile (in creation order, as a scan would find it) whose
    /// `field` is exactly `value`.
    pub(crate) fn position(&self, field: Field, value: &str) -> Option<usize> {
        self.candidates(field, value)
            .find(|&at| field.of(&self.records[at]) == Some(value))
    }

    /// Positions, in creation order, of the profiles whose `field` has `value`'s key: exactly
    /// those equal to it (ignoring ASCII case for emails).
    pub(crate) fn candidates(&self, field: Field, value: &str) -> impl Iterator<Item = usize> {
        self.index.holders[field.slot()]
            .get(&field.key(value))
            .into_iter()
            .flatten()
            .copied()
    }

    /// The profile at `position`, to change: it is re-indexed when the guard is dropped.
    ///
    /// # Panics
    /// When there is no profile at `position`.
    pub(crate) fn get_mut(&mut self, position: usize) -> ProfileMut<'_> {
        let before = Keys::of(&self.records[position]);
        ProfileMut {
            profiles: self,
            position,
            before,
        }
    }

    /// Adds a profile after the others; returns its position.
    pub(crate) fn push(&mut self, profile: Profile) -> usize {
        let position = self.records.len();
        self.index
            .change(position, &Keys::NONE, &Keys::of(&profile));
        self.records.push(profile);
        position
    }

    /// Removes the profile at `position`; the ones after it move up, and the index is rebuilt
    /// (linear, as the `Vec` removal is — deletions are rare).
    ///
    /// # Panics
    /// When there is no profile at `position`.
    pub(crate) fn remove(&mut self, position: usize) -> Profile {
        let profile = self.records.remove(position);
        self.index = ProfileIndex::of(&self.records);
        profile
    }

    /// Checks the index against one rebuilt from a full scan (for tests).
    ///
    /// # Panics
    /// When the index is out of step with the profiles.
    #[cfg(test)]
    pub(crate) fn assert_indexed(&self) {
        assert_eq!(self.index, ProfileIndex::of(&self.records), "profile index");
    }
}

impl Index<usize> for Profiles {
    type Output = Profile;

    fn index(&self, position: usize) -> &Profile {
        &self.records[position]
    }
}

impl<'a> IntoIterator for &'a Profiles {
    type Item = &'a Profile;
    type IntoIter = std::slice::Iter<'a, Profile>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A profile being changed; re-indexed when dropped (see [`Profiles::get_mut`]).
pub(crate) struct ProfileMut<'a> {
    profiles: &'a mut Profiles,
    position: usize,
    before: Keys,
}

impl Deref for ProfileMut<'_> {
    type Target = Profile;

    fn deref(&self) -> &Profile {
        &self.profiles.records[self.position]
    }
}

impl DerefMut for ProfileMut<'_> {
    fn deref_mut(&mut self) -> &mut Profile {
        &mut self.profiles.records[self.position]
    }
}

impl Drop for ProfileMut<'_> {
    fn drop(&mut self) {
        let after = Keys::of(&self.profiles.records[self.position]);
        self.profiles
            .index
            .change(self.position, &self.before, &after);
    }
}

/// The index keys a profile holds, one per [`Field`].
#[derive(Debug, PartialEq, Eq)]
struct Keys([Option<String>; 4]);

impl Keys {
    /// Nothing held.
    const NONE: Self = Self([None, None, None, None]);

    /// What `profile` holds.
    fn of(profile: &Profile) -> Self {
        Self(Field::ALL.map(|field| field.of(profile).map(|value| field.key(value))))
    }
}

/// Per [`Field`], key → positions of the profiles holding it.
///
/// A key maps to a set of positions, not one: imports keep identifiers unique, but a
/// subscription job sets a phone number without checking it, and lookups must answer as a scan
/// of the profiles would even then (the first in creation order).
#[derive(Debug, Default, PartialEq, Eq)]
struct ProfileIndex {
    holders: [HashMap<String, BTreeSet<usize>>; 4],
}

impl ProfileIndex {
    /// The index of `records`, built by a full scan.
    fn of(records: &[Profile]) -> Self {
        let mut index = Self::default();
        for (position, profile) in records.iter().enumerate() {
            index.change(position, &Keys::NONE, &Keys::of(profile));
        }
        index
    }

    /// Records that the profile at `position` now holds `after` instead of `before`, touching
    /// only the fields whose keys differ.
    fn change(&mut self, position: usize, before: &Keys, after: &Keys) {
        for ((holders, before), after) in self.holders.iter_mut().zip(&before.0).zip(&after.0) {
            if before == after {
                continue;
            }
            if let Some(key) = before
                && let Some(positions) = holders.get_mut(key)
            {
                positions.remove(&position);
                if positions.is_empty() {
                    holders.remove(key);
                }
            }
            if let Some(key) = after {
                holders.entry(key.clone()).or_default().insert(position);
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use serde_json::{Value, json};

    use super::*;
    use crate::klaviyo::KlaviyoSimOptions;
    use crate::klaviyo::jsonapi::parse_filter;
    use crate::klaviyo::profiles::{Nulls, ProfileAttributes};
    use crate::klaviyo::state::State as Account;

    const SEARCHABLE: &[&str] = &["id", "email", "phone_number", "external_id"];

    fn account() -> Account {
        Account::new(KlaviyoSimOptions::default())
    }

    fn attributes(value: Value) -> ProfileAttributes {
        serde_json::from_value(value).expect("profile attributes")
    }

    fn import(account: &mut Account, id: Option<&str>, value: Value, nulls: Nulls) -> String {
        let (profile, _) = account
            .import_profile_with(id, &attributes(value), nulls)
            .expect("imported");
        profile.id
    }

    /// Every lookup answers as a scan of the profiles would.
    fn assert_lookups_scan(account: &Account, probes: &[&str]) {
        account.profiles.assert_indexed();
        for &probe in probes {
            for field in Field::ALL {
                let scanned = account
                    .profiles
                    .iter()
                    .position(|p| field.of(p) == Some(probe));
                assert_eq!(
                    account.profiles.position(field, probe),
                    scanned,
                    "{field:?} {probe}"
                );
            }
            let lowered = probe.trim().to_lowercase();
            let scanned = account
                .profiles
                .iter()
                .position(|p| p.email.as_deref() == Some(lowered.as_str()));
            assert_eq!(account.profile_by_email(probe), scanned, "email {probe}");
            for name in SEARCHABLE {
                let filter = format!("any({name},[\"{probe}\",\"nobody\"])");
                let filters = parse_filter(&filter, SEARCHABLE, &[]).expect("filter");
                let scanned: Vec<&Profile> = account
                    .profiles
                    .iter()
                    .filter(|p| match *name {
                        "email" => filters[0].matches_ignoring_case(p.email.as_deref()),
                        _ => filters[0].matches(Field::named(name).and_then(|f| f.of(p))),
                    })
                    .collect();
                assert_eq!(account.search_profiles(&filters), scanned, "{filter}");
            }
        }
    }

    #[test]
    fn the_index_stays_exact_through_imports_writes_and_deletions() {
        let mut account = account();
        let probes = [
            "a@example.com",
            "A@Example.com",
            "b@example.com",
            "c@example.com",
            "+61400000001",
            "+61400000002",
            "ext-1",
            "ext-2",
            "ext-3",
        ];
        let a = import(
            &mut account,
            None,
            json!({"email": "A@Example.com", "phone_number": "+61400000001", "external_id": "ext-1"}),
            Nulls::Clear,
        );
        let b = import(
            &mut account,
            None,
            json!({"email": "b@example.com", "external_id": "ext-2"}),
            Nulls::Keep,
        );
        assert_lookups_scan(&account, &probes);
        assert_eq!(account.profile_by_email("a@EXAMPLE.com"), Some(0));

        // An update by id changes every identifier; a `null` clears one (or, in bulk, keeps it).
        import(
            &mut account,
            Some(&a),
            json!({"email": "c@example.com", "external_id": null}),
            Nulls::Clear,
        );
        import(
            &mut account,
            Some(&b),
            json!({"external_id": null}),
            Nulls::Keep,
        );
        assert_lookups_scan(&account, &probes);
        assert_eq!(account.profile_by_email("a@example.com"), None);
        assert_eq!(account.profiles.position(Field::ExternalId, "ext-1"), None);
        assert_eq!(
            account.profiles.position(Field::ExternalId, "ext-2"),
            Some(1)
        );

        // Identifiers of two profiles: refused, and nothing changes.
        let error = account
            .import_profile_with(
                None,
                &attributes(json!({"email": "c@example.com", "external_id": "ext-2"})),
                Nulls::Clear,
            )
            .expect_err("identifiers of two profiles");
        let body = error.body().to_string();
        assert!(
            body.contains("duplicate_profile") && body.contains(&b),
            "{body}"
        );
        assert_lookups_scan(&account, &probes);

        // A subscription job can give a second profile the same phone: the first still wins.
        let c = account.create_profile(Some("D@example.com"), None);
        account.profiles.get_mut(c).phone_number = Some("+61400000001".into());
        account.profiles.get_mut(c).external_id = Some("ext-3".into());
        assert_lookups_scan(&account, &probes);
        assert_eq!(account.profile_by_phone("+61400000001"), Some(0));

        // Deleting the first profile moves the others up and hands the phone to the next holder.
        let removed = account.profiles.remove(0);
        assert_eq!(removed.id, a);
        assert_lookups_scan(&account, &probes);
        assert_eq!(account.profile_by_phone("+61400000001"), Some(1));
        assert_eq!(account.profile_by_id(&b), Some(0));
        assert_eq!(account.profile_by_id(&a), None);

        // A guard dropped after changing nothing, or changing the id, keeps the index exact.
        drop(account.profiles.get_mut(0));
        account.profiles.get_mut(1).id = "renamed".into();
        assert_lookups_scan(&account, &probes);
        assert_eq!(account.profile_by_id("renamed"), Some(1));

        // A search combining conditions takes its candidates from one and checks the rest.
        let filters = parse_filter(
            r#"any(external_id,["ext-3","ext-2"]),equals(email,"d@EXAMPLE.com")"#,
            SEARCHABLE,
            &[],
        )
        .expect("filter");
        let found: Vec<&str> = account
            .search_profiles(&filters)
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(found, ["renamed"]);
    }

    #[test]
    fn a_backfill_of_100_000_profiles_imports_and_searches_in_linear_time() {
        const PROFILES: usize = 100_000;
        let mut account = account();
        for n in 0..PROFILES {
            let attributes = attributes(json!({
                "email": format!("Customer{n}@Example.com"),
                "external_id": format!("omneo-{n}"),
                "first_name": "Pat",
                "properties": {"tier": "gold"},
            }));
            let (_, created) = account
                .import_profile_with(None, &attributes, Nulls::Keep)
                .expect("imported");
            assert!(created);
        }
        for search in 0..1_000 {
            let ids: Vec<String> = (0..100)
                .map(|k| format!("\"omneo-{}\"", (search * 100 + k) % PROFILES))
                .collect();
            let filter = format!("any(external_id,[{}])", ids.join(","));
            let filters = parse_filter(&filter, SEARCHABLE, &[]).expect("filter");
            assert_eq!(account.search_profiles(&filters).len(), 100);
        }
        assert_eq!(account.profiles.len(), PROFILES);
    }
}
