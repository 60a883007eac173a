//! The end of the soak: the state both simulators hold, compared with what the ledger says it
//! must be. Every difference is named, so a failing soak says which customer, which field.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::ledger::{Book, Customer};
use super::system::System;
use super::workload::METRIC_NAME;
use crate::klaviyo::ConsentState;

/// What the oracle counted in the final state.
#[derive(Debug, Clone, Copy, Default)]
pub struct Found {
    /// Customers whose Klaviyo profile and Omneo comms equal the expected state.
    pub customers_matching: usize,
    /// Customers checked.
    pub customers: usize,
    /// Omneo interactions made from Klaviyo events.
    pub interactions: usize,
    /// Omneo rewards issued by Flow calls.
    pub rewards: usize,
    /// Klaviyo events made from metric target calls.
    pub events: usize,
    /// Profiles written by Klaviyo bulk import jobs (the backfill).
    pub bulk_imported: usize,
    /// Duplicates of any kind: interactions per Klaviyo event, rewards per key, events per
    /// call, profiles per bulk import, Klaviyo profiles per Omneo profile.
    pub duplicates: usize,
}

/// Compares the final state with the ledger's; the counts, and every mismatch found.
pub fn compare(system: &System, customers: &[Customer], book: &Book) -> (Found, Vec<String>) {
    let mut found = Found {
        customers: customers.len(),
        ..Found::default()
    };
    let mut mismatches = Vec::new();
    let profiles: Vec<crate::klaviyo::Profile> = system
        .klaviyo
        .sims
        .iter()
        .flat_map(|sim| sim.profiles())
        .collect();
    let mut by_external_id: HashMap<&str, Vec<&crate::klaviyo::Profile>> = HashMap::new();
    for profile in &profiles {
        if let Some(external_id) = profile.external_id.as_deref() {
            by_external_id.entry(external_id).or_default().push(profile);
        }
    }

    for (index, customer) in customers.iter().enumerate() {
        let expected = &book.expected[index];
        let before = mismatches.len();
        let who = format!("{}/{}", customer.tenant_id, customer.omneo_id);
        match by_external_id
            .get(customer.omneo_id.as_str())
            .map(Vec::as_slice)
        {
            Some([profile]) => {
                if profile.first_name != expected.first_name {
                    mismatches.push(format!(
                        "{who}: Klaviyo first_name {:?}, expected {:?}",
                        profile.first_name, expected.first_name
                    ));
                }
                let email =
                    profile.subscriptions.email_marketing.consent == ConsentState::Subscribed;
                let sms = profile.subscriptions.sms_marketing.consent == ConsentState::Subscribed;
                if (email, sms) != (expected.email, expected.sms) {
                    mismatches.push(format!(
                        "{who}: Klaviyo consent email {email} sms {sms}, expected email {} sms {}",
                        expected.email, expected.sms
                    ));
                }
            }
            Some(many) => {
                found.duplicates += many.len() - 1;
                mismatches.push(format!("{who}: {} Klaviyo profiles", many.len()));
            }
            None => mismatches.push(format!("{who}: no Klaviyo profile")),
        }
        match system.omneo.comms(&customer.tenant_id, &customer.omneo_id) {
            Some(comms) => {
                let email = comms.email_promo != Some(false)
                    && comms.email_optout != Some(true)
                    && comms.email_bounced != Some(true);
                let sms = comms.sms_promo != Some(false)
                    && comms.sms_optout != Some(true)
                    && comms.sms_bounced != Some(true);
                if (email, sms) != (expected.email, expected.sms) {
                    mismatches.push(format!(
                        "{who}: Omneo comms email {email} sms {sms}, expected email {} sms {}",
                        expected.email, expected.sms
                    ));
                }
            }
            None => mismatches.push(format!("{who}: no Omneo comms")),
        }
        if mismatches.len() == before {
            found.customers_matching += 1;
        }
    }

    for (index, tenant) in system.tenants.iter().enumerate() {
        let interactions = system.omneo.interactions(tenant.id.as_str());
        let mut per_event: BTreeMap<String, usize> = BTreeMap::new();
        for interaction in &interactions {
            let event_id = interaction
                .meta
                .as_ref()
                .and_then(|meta| meta.get("klaviyo_event_id"))
                .and_then(|id| id.as_str())
                .unwrap_or_default();
            *per_event.entry(event_id.to_owned()).or_default() += 1;
        }
        found.interactions += interactions.len();
        count_duplicates(
            &per_event,
            "interactions of Klaviyo event",
            &mut found,
            &mut mismatches,
        );
        let made: BTreeSet<&String> = per_event.keys().collect();
        let sent: BTreeSet<&String> = book
            .consent_events
            .get(&index)
            .into_iter()
            .flatten()
            .collect();
        for missing in sent.difference(&made) {
            mismatches.push(format!("{}: no interaction for event {missing}", tenant.id));
        }
        for extra in made.difference(&sent) {
            mismatches.push(format!(
                "{}: an interaction for event {extra:?}, which no customer of this tenant made",
                tenant.id
            ));
        }

        let rewards = system.omneo.rewards(tenant.id.as_str());
        found.rewards += rewards.len();
        let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
        let mut per_profile: BTreeMap<&str, usize> = BTreeMap::new();
        for reward in &rewards {
            *per_key
                .entry(reward.external_id.clone().unwrap_or_default())
                .or_default() += 1;
            *per_profile.entry(reward.profile_id.as_str()).or_default() += 1;
        }
        count_duplicates(
            &per_key,
            "rewards of one Flow call",
            &mut found,
            &mut mismatches,
        );
        for (customer_index, customer) in customers.iter().enumerate() {
            if customer.tenant != index {
                continue;
            }
            let sent = book.rewards.get(&customer_index).map_or(0, BTreeSet::len);
            let issued = per_profile
                .get(customer.omneo_id.as_str())
                .copied()
                .unwrap_or(0);
            if sent != issued {
                mismatches.push(format!(
                    "{}/{}: {issued} rewards issued for {sent} Flow calls",
                    tenant.id, customer.omneo_id
                ));
            }
        }
    }

    let mut per_metric: BTreeMap<String, usize> = BTreeMap::new();
    for event in system.klaviyo.sims.iter().flat_map(|sim| sim.events()) {
        if event.metric != METRIC_NAME {
            continue;
        }
        let call = event
            .properties
            .get("soak_metric")
            .map(ToString::to_string)
            .unwrap_or_default();
        *per_metric.entry(call).or_default() += 1;
        found.events += 1;
    }
    count_duplicates(
        &per_metric,
        "Klaviyo events of one metric call",
        &mut found,
        &mut mismatches,
    );
    let metrics_made: BTreeSet<String> = per_metric.into_keys().collect();
    let metrics_sent: BTreeSet<String> = book.metrics.iter().map(ToString::to_string).collect();
    for missing in metrics_sent.difference(&metrics_made) {
        mismatches.push(format!("no Klaviyo event for metric call {missing}"));
    }

    let mut per_profile: BTreeMap<String, usize> = BTreeMap::new();
    for job in system.klaviyo.sims.iter().flat_map(|sim| sim.bulk_jobs()) {
        for id in job.profile_ids {
            *per_profile.entry(id).or_default() += 1;
        }
    }
    found.bulk_imported = per_profile.len();
    count_duplicates(
        &per_profile,
        "bulk imports of one profile",
        &mut found,
        &mut mismatches,
    );
    (found, mismatches)
}

/// Adds every entry counted more than once to the duplicates, naming it.
fn count_duplicates(
    counts: &BTreeMap<String, usize>,
    what: &str,
    found: &mut Found,
    mismatches: &mut Vec<String>,
) {
    for (key, &count) in counts {
        if count > 1 {
            found.duplicates += count - 1;
            mismatches.push(format!("{count} {what} {key}"));
        }
    }
}
