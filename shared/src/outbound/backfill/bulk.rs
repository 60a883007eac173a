//! Packing a chunk's writes into Klaviyo's bulk jobs within their limits (klaviyo.md §Bulk):
//! profile imports by count and by measured size, consent changes by count and by the
//! attributes a job shares (its list, `historical_import`).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::klaviyo::models::{BulkImport, ProfileUpsert, SubscribeJob, Subscriber, UnsubscribeJob};

/// The most profiles one bulk import job takes.
pub const MAX_IMPORT_PROFILES: usize = 10_000;
/// The largest bulk import request body, 5 MB (read as 5,000,000 bytes, the stricter reading).
pub const MAX_IMPORT_BYTES: usize = 5_000_000;
/// The largest profile in a bulk import, 100 KB (read as 100,000 bytes).
pub const MAX_PROFILE_BYTES: usize = 100_000;

/// A profile too large for any import job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized {
    /// Its index in the profiles given.
    pub index: usize,
    /// Its serialized size.
    pub bytes: usize,
}

/// The import jobs for `profiles`, as lists of their indices (in order), each job within
/// [`MAX_IMPORT_PROFILES`] and, measured on the serialized request, [`MAX_IMPORT_BYTES`];
/// profiles above [`MAX_PROFILE_BYTES`] are left out and returned.
pub fn import_batches(
    profiles: &[ProfileUpsert],
    list_ids: &[String],
) -> (Vec<Vec<usize>>, Vec<Oversized>) {
    let envelope = BulkImport {
        profiles: Vec::new(),
        list_ids: list_ids.to_vec(),
    }
    .to_document()
    .to_string()
    .len();
    let budget = MAX_IMPORT_BYTES.saturating_sub(envelope);
    let mut batches = Vec::new();
    let mut oversized = Vec::new();
    let mut batch: Vec<usize> = Vec::new();
    let mut bytes = 0;
    for (index, profile) in profiles.iter().enumerate() {
        let size = resource_bytes(&profile.to_resource());
        if size > MAX_PROFILE_BYTES {
            oversized.push(Oversized { index, bytes: size });
            continue;
        }
        // Each profile after the first adds a comma.
        let adds = size + usize::from(!batch.is_empty());
        if batch.len() == MAX_IMPORT_PROFILES || bytes + adds > budget {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size + usize::from(!batch.is_empty());
        batch.push(index);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    (batches, oversized)
}

/// A resource object's size as the request carries it.
fn resource_bytes(resource: &Value) -> usize {
    resource.to_string().len()
}

/// The subscribe jobs of many profiles' writes, packed: jobs that share a list and
/// `historical_import` are merged up to [`SubscribeJob::MAX_PROFILES`] subscribers. A profile's
/// second job (another consent time) goes to another bulk job, so no job names a profile twice.
pub fn pack_subscribes(per_profile: Vec<Vec<SubscribeJob>>) -> Vec<SubscribeJob> {
    let mut open: BTreeMap<(usize, Option<String>, bool), SubscribeJob> = BTreeMap::new();
    let mut packed = Vec::new();
    for jobs in per_profile {
        for (nth, job) in jobs.into_iter().enumerate() {
            let key = (nth, job.list_id.clone(), job.historical_import);
            let bulk = open.entry(key).or_insert_with(|| SubscribeJob {
                subscribers: Vec::new(),
                ..job.clone()
            });
            bulk.subscribers.extend(job.subscribers);
            if bulk.subscribers.len() >= SubscribeJob::MAX_PROFILES {
                let key = (nth, bulk.list_id.clone(), bulk.historical_import);
                packed.extend(open.remove(&key));
            }
        }
    }
    packed.extend(open.into_values());
    packed
}

/// The unsubscribe jobs of many profiles' writes, packed up to
/// [`UnsubscribeJob::MAX_PROFILES`] subscribers a job (all global: no list).
pub fn pack_unsubscribes(per_profile: Vec<UnsubscribeJob>) -> Vec<UnsubscribeJob> {
    let subscribers: Vec<Subscriber> = per_profile
        .iter()
        .flat_map(|job| job.subscribers.iter().cloned())
        .collect();
    let Some(template) = per_profile.into_iter().next() else {
        return Vec::new();
    };
    subscribers
        .chunks(UnsubscribeJob::MAX_PROFILES)
        .map(|chunk| UnsubscribeJob {
            subscribers: chunk.to_vec(),
            ..template.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::klaviyo::models::Patch;

    fn profile(n: usize, padding: usize) -> ProfileUpsert {
        let mut properties = Map::new();
        properties.insert("padding".into(), Value::String("x".repeat(padding)));
        ProfileUpsert {
            id: None,
            email: Patch::Set(format!("p{n}@shop.test")),
            phone_number: Patch::Keep,
            external_id: Patch::Set(
                crate::domain::OmneoProfileId::parse(format!("omneo-{n}")).unwrap(),
            ),
            first_name: Patch::Keep,
            last_name: Patch::Keep,
            title: Patch::Keep,
            organization: Patch::Keep,
            locale: Patch::Keep,
            location: Patch::Keep,
            properties,
        }
    }

    #[test]
    fn jobs_hold_at_most_ten_thousand_profiles() {
        let profiles: Vec<ProfileUpsert> = (0..25_001).map(|n| profile(n, 0)).collect();
        let (batches, oversized) = import_batches(&profiles, &[]);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [10_000, 10_000, 5_001]);
        assert!(oversized.is_empty());
        let all: Vec<usize> = batches.concat();
        assert_eq!(
            all,
            (0..25_001).collect::<Vec<_>>(),
            "each profile once, in order"
        );
    }

    #[test]
    fn jobs_stay_under_five_megabytes_measured_on_the_request() {
        // 60 KB profiles: 83 fit in 5,000,000 bytes with the envelope.
        let profiles: Vec<ProfileUpsert> = (0..200).map(|n| profile(n, 60_000)).collect();
        let lists = vec!["AbC123".to_owned()];
        let (batches, _) = import_batches(&profiles, &lists);
        assert!(batches.len() >= 3);
        for (n, batch) in batches.iter().enumerate() {
            let job = BulkImport {
                profiles: batch.iter().map(|&i| profiles[i].clone()).collect(),
                list_ids: lists.clone(),
            };
            let bytes = job.to_document().to_string().len();
            assert!(bytes <= MAX_IMPORT_BYTES, "{bytes} bytes");
            // Packed tight: one more profile would not have fitted (the last job takes the rest).
            if n + 1 < batches.len() {
                assert!(
                    bytes + 60_100 > MAX_IMPORT_BYTES,
                    "{bytes} bytes leaves room"
                );
            }
        }
        assert_eq!(batches.concat().len(), 200);
    }

    #[test]
    fn oversized_profiles_are_left_out_and_named() {
        let profiles = vec![profile(0, 10), profile(1, 150_000), profile(2, 10)];
        let (batches, oversized) = import_batches(&profiles, &[]);
        assert_eq!(batches, [vec![0, 2]]);
        assert_eq!(oversized.len(), 1);
        assert_eq!(oversized[0].index, 1);
        assert!(oversized[0].bytes > MAX_PROFILE_BYTES);
    }

    fn subscribe(email: &str, list: Option<&str>, historical: bool) -> SubscribeJob {
        SubscribeJob {
            subscribers: vec![Subscriber {
                email: Some(email.into()),
                email_marketing: true,
                consented_at: historical.then(|| "2025-01-01T00:00:00Z".parse().unwrap()),
                ..Subscriber::default()
            }],
            list_id: list.map(str::to_owned),
            custom_source: Some("omneo".into()),
            historical_import: historical,
        }
    }

    #[test]
    fn subscribes_merge_by_list_and_history_up_to_a_thousand() {
        let mut per_profile: Vec<Vec<SubscribeJob>> = (0..2_500)
            .map(|n| vec![subscribe(&format!("h{n}@x.test"), Some("L1"), true)])
            .collect();
        per_profile.push(vec![subscribe("new@x.test", Some("L1"), false)]);
        per_profile.push(vec![
            subscribe("two@x.test", Some("L1"), true),
            subscribe("two@x.test", None, true),
        ]);
        let packed = pack_subscribes(per_profile);
        let mut shapes: Vec<(Option<String>, bool, usize)> = packed
            .iter()
            .map(|j| (j.list_id.clone(), j.historical_import, j.subscribers.len()))
            .collect();
        shapes.sort();
        assert_eq!(
            shapes,
            [
                (None, true, 1),
                (Some("L1".into()), false, 1),
                (Some("L1".into()), true, 501),
                (Some("L1".into()), true, 1_000),
                (Some("L1".into()), true, 1_000),
            ]
        );
        for job in &packed {
            let mut emails: Vec<_> = job.subscribers.iter().map(|s| &s.email).collect();
            emails.sort();
            emails.dedup();
            assert_eq!(
                emails.len(),
                job.subscribers.len(),
                "no profile twice in a job"
            );
        }
    }

    #[test]
    fn unsubscribes_pack_by_hundreds() {
        let per_profile: Vec<UnsubscribeJob> = (0..250)
            .map(|n| UnsubscribeJob {
                subscribers: vec![Subscriber {
                    email: Some(format!("u{n}@x.test")),
                    email_marketing: true,
                    ..Subscriber::default()
                }],
                list_id: None,
                custom_source: Some("omneo".into()),
            })
            .collect();
        let packed = pack_unsubscribes(per_profile);
        let sizes: Vec<usize> = packed.iter().map(|j| j.subscribers.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert!(
            packed
                .iter()
                .all(|j| j.custom_source.as_deref() == Some("omneo"))
        );
        assert!(pack_unsubscribes(Vec::new()).is_empty());
    }
}
