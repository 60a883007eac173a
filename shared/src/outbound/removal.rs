//! *Profile deleted* (product.md §6.3): per `on_profile_deleted`, unsubscribe both channels
//! (default), request Klaviyo's data-privacy deletion, or nothing; the sync state is forgotten
//! either way.
//!
//! The Klaviyo profile is found first (the identity the event carried or our sync state's id,
//! then `external_id`, then email). When there is none, there is nothing to do: unsubscribing an
//! address Klaviyo never had would create a profile for it. Unsubscribe uses the identifiers of
//! the Klaviyo profile found, and deletion its id.

use phonenumber::country::Id as CountryId;

use crate::domain::{E164Phone, KlaviyoProfileId, OmneoProfileId};
use crate::job::{Job, klaviyo_setback, store_setback};
use crate::klaviyo::models::{
    DeletionTarget, Profile as KlaviyoProfile, ProfileFilter, Subscriber, UnsubscribeJob,
};
use crate::queue::{OUR_CUSTOM_SOURCE, ProfileDeleted};
use crate::settings::OnProfileDeleted;
use crate::worker::Setback;

/// What is known of a deleted profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Its Omneo id.
    pub profile_id: OmneoProfileId,
    /// Its email, when known.
    pub email: Option<String>,
    /// Its mobile phone as Omneo held it, when known.
    pub mobile_phone: Option<String>,
    /// Its Klaviyo id, when known.
    pub klaviyo_profile_id: Option<KlaviyoProfileId>,
}

/// A `profile.deleted` task, holding the profile's lease.
pub async fn profile_deleted(job: &Job<'_>, work: &ProfileDeleted) -> Result<(), Setback> {
    job.with_profile_lease(&work.profile_id, async {
        let state = job
            .app
            .store
            .sync_state(&job.tenant.id, &work.profile_id)
            .await
            .map_err(store_setback("read_sync_state"))?;
        let known = Known {
            profile_id: work.profile_id.clone(),
            email: work.email.clone(),
            mobile_phone: work.mobile_phone.clone(),
            klaviyo_profile_id: work
                .klaviyo_profile_id
                .clone()
                .or_else(|| state.and_then(|s| s.klaviyo_profile_id)),
        };
        forget(job, &known).await
    })
    .await
}

/// Applies `on_profile_deleted` to the Klaviyo profile of a deleted Omneo profile and forgets its
/// sync state. The caller holds the profile's lease.
pub async fn forget(job: &Job<'_>, known: &Known) -> Result<(), Setback> {
    let policy = job.tenant.settings.on_profile_deleted;
    if policy != OnProfileDeleted::Ignore {
        let found = find_klaviyo_profile(
            job,
            known.klaviyo_profile_id.as_ref(),
            &known.profile_id,
            known.email.as_deref(),
        )
        .await?;
        match (policy, found) {
            (_, None) => {
                tracing::info!(profile = %known.profile_id, "no Klaviyo profile for the deleted Omneo profile");
            }
            (OnProfileDeleted::Delete, Some(found)) => {
                let target = DeletionTarget::ProfileId(found.id);
                job.klaviyo(|k, t| {
                    let target = target.clone();
                    async move { k.request_deletion(&t, &target).await }
                })
                .await
                .map_err(klaviyo_setback("request_deletion"))?;
            }
            (_, Some(found)) => {
                let country = job
                    .tenant
                    .settings
                    .phone_default_country
                    .parse::<CountryId>()
                    .ok();
                let phone = found
                    .attributes
                    .phone_number
                    .as_deref()
                    .or(known.mobile_phone.as_deref())
                    .and_then(|raw| E164Phone::normalise(raw, country).ok());
                let email = found
                    .attributes
                    .email
                    .clone()
                    .or_else(|| known.email.clone());
                let subscriber = Subscriber {
                    email_marketing: email.is_some(),
                    sms_marketing: phone.is_some(),
                    email,
                    phone_number: phone,
                    consented_at: None,
                };
                if subscriber.email_marketing || subscriber.sms_marketing {
                    let unsubscribe = UnsubscribeJob {
                        subscribers: vec![subscriber],
                        list_id: None,
                        custom_source: Some(OUR_CUSTOM_SOURCE.into()),
                    };
                    job.klaviyo(|k, t| {
                        let unsubscribe = unsubscribe.clone();
                        async move { k.unsubscribe(&t, &unsubscribe).await }
                    })
                    .await
                    .map_err(klaviyo_setback("unsubscribe"))?;
                }
            }
        }
    }
    job.app
        .store
        .delete_sync_state(&job.tenant.id, &known.profile_id)
        .await
        .map_err(store_setback("forget_sync_state"))
}

/// The Klaviyo profile of an Omneo profile: by the stored identity, then `external_id`, then
/// email (each read with its consent).
async fn find_klaviyo_profile(
    job: &Job<'_>,
    identity: Option<&KlaviyoProfileId>,
    omneo_id: &OmneoProfileId,
    email: Option<&str>,
) -> Result<Option<KlaviyoProfile>, Setback> {
    if let Some(identity) = identity {
        let found = job.klaviyo_profile(identity).await?;
        if found.is_some() {
            return Ok(found);
        }
    }
    let mut filters = vec![ProfileFilter::ExternalId(omneo_id.clone())];
    filters.extend(email.map(|email| ProfileFilter::Email(email.to_owned())));
    for filter in filters {
        let found = job
            .klaviyo(|k, t| {
                let filter = filter.clone();
                async move { k.find_profiles(&t, &filter).await }
            })
            .await
            .map_err(klaviyo_setback("match_profile"))?;
        if let Some(profile) = found.into_iter().next() {
            return Ok(Some(profile));
        }
    }
    Ok(None)
}
