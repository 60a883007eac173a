//! *Sync profile* (product.md §6.2): one Omneo profile, re-read and written to Klaviyo.
//!
//! 1. Re-read the profile from Omneo; gone → handled as deleted ([`super::removal`]).
//! 2. Exclusions ([`super::mapping::exclusion`]): excluded profiles are never synced.
//! 3. Match the Klaviyo profile: by the Omneo identity (`identity_handle`; our sync state's id
//!    when the identity is missing), read with its consent. Without one, the `external_id` and
//!    email steps are Klaviyo's own: profile import matches an existing profile by its identifiers
//!    and says whether it created one (ours: this saves two reads per sync on the endpoint that
//!    also bounds the import rate; a profile it updated is then read once for its consent).
//! 4. Import it (core fields, E.164 phone, location, mappings) — skipped when the mapped payload
//!    hashes as last time and the match is the profile written then. A 409 `duplicate_profile`
//!    (the email and the phone belong to different Klaviyo profiles) is retried once without the
//!    phone, and leaves a data-conflict warning.
//! 5. Store the Klaviyo id back on Omneo as the identity when it is missing or different (a 422 —
//!    another Omneo profile holds that identity — leaves a warning).
//! 6. Consent: write only the differences from Klaviyo's current consent ([`super::consent`]).
//! 7. Record the sync state: the Klaviyo id, the payload hash and the consent sent.

use jiff::Timestamp;

use super::consent::{self, ConsentTarget};
use super::mapping::{MappedProfile, event_context, exclusion};
use super::removal::{self, Known};
use crate::access::KlaviyoCallError;
use crate::domain::{KlaviyoProfileId, OmneoProfileId};
use crate::job::{Job, klaviyo_setback, omneo_setback, store_setback};
use crate::klaviyo::models::{ImportedProfile, Patch, Profile as KlaviyoProfile};
use crate::remote::ErrorKind;
use crate::store::{ConsentSent, SyncState};
use crate::worker::Setback;

/// Syncs one profile, holding its lease.
pub async fn sync_profile(job: &Job<'_>, id: &OmneoProfileId) -> Result<(), Setback> {
    job.with_profile_lease(id, sync_held(job, id)).await
}

async fn sync_held(job: &Job<'_>, id: &OmneoProfileId) -> Result<(), Setback> {
    let tenant = &job.tenant.id;
    let settings = &job.tenant.settings;
    let state = job
        .app
        .store
        .sync_state(tenant, id)
        .await
        .map_err(store_setback("read_sync_state"))?;
    let Some(profile) = job
        .omneo
        .profile(id)
        .await
        .map_err(omneo_setback("read_profile"))?
    else {
        tracing::info!(profile = %id, "the Omneo profile is gone; handling it as deleted");
        let known = Known {
            profile_id: id.clone(),
            email: None,
            mobile_phone: None,
            klaviyo_profile_id: state.and_then(|s| s.klaviyo_profile_id),
        };
        return removal::forget(job, &known).await;
    };
    let context = event_context(&profile);
    match exclusion(&profile, &context, settings) {
        Ok(Some(reason)) => {
            tracing::info!(profile = %id, reason = reason.as_str(), "excluded from sync");
            return Ok(());
        }
        Ok(None) => {}
        Err(problem) => return Err(Setback::give_up("exclusion", problem)),
    }
    let mapped = MappedProfile::of(&profile, &context, settings);
    for omitted in &mapped.omitted {
        tracing::warn!(profile = %id, omitted = %omitted, "a field was left out of the Klaviyo profile");
    }
    let email = profile
        .email
        .as_deref()
        .map(str::trim)
        .filter(|email| !email.is_empty());
    let identity = profile
        .identity(&settings.identity_handle)
        .and_then(|identifier| KlaviyoProfileId::parse(identifier).ok())
        .or_else(|| state.as_ref().and_then(|s| s.klaviyo_profile_id.clone()));
    let found = match &identity {
        Some(identity) => job.klaviyo_profile(identity).await?,
        None => None,
    };
    let hash = mapped.hash();
    let unchanged = |found: &KlaviyoProfile| {
        state.as_ref().is_some_and(|s| {
            s.payload_hash == hash && s.klaviyo_profile_id.as_ref() == Some(&found.id)
        })
    };
    let (klaviyo_id, current, existed) = match found {
        Some(found) if unchanged(&found) => {
            tracing::debug!(profile = %id, "mapped payload unchanged; no profile import");
            let current = consent::current(found.attributes.subscriptions.as_ref());
            (found.id, current, true)
        }
        Some(found) => {
            let current = consent::current(found.attributes.subscriptions.as_ref());
            (
                import(job, &mapped, Some(found.id)).await?.id,
                current,
                true,
            )
        }
        None => {
            let imported = import(job, &mapped, None).await?;
            let current = if imported.created {
                consent::current(None)
            } else {
                let existing = job.klaviyo_profile(&imported.id).await?;
                consent::current(existing.and_then(|p| p.attributes.subscriptions).as_ref())
            };
            (imported.id, current, !imported.created)
        }
    };
    if profile.identity(&settings.identity_handle) != Some(klaviyo_id.as_str()) {
        write_identity(job, id, &klaviyo_id).await?;
    }
    let desired = consent::desired(
        profile.comms.as_ref(),
        email.is_some(),
        mapped.phone.as_ref(),
    );
    let writes = consent::writes(
        desired,
        current,
        profile.comms.as_ref(),
        ConsentTarget {
            email,
            phone: mapped.phone.as_ref(),
            master_list: settings.master_list_id.as_deref(),
            resync: existed,
            last_sent: state.as_ref().map(|s| s.consent).unwrap_or_default(),
        },
    );
    for job_document in &writes.subscribe {
        job.klaviyo(|k, t| {
            let subscribe = job_document.clone();
            async move { k.subscribe(&t, &subscribe).await }
        })
        .await
        .map_err(klaviyo_setback("subscribe"))?;
    }
    if let Some(unsubscribe) = &writes.unsubscribe {
        job.klaviyo(|k, t| {
            let unsubscribe = unsubscribe.clone();
            async move { k.unsubscribe(&t, &unsubscribe).await }
        })
        .await
        .map_err(klaviyo_setback("unsubscribe"))?;
    }
    let previous = state.map(|s| s.consent).unwrap_or_default();
    let sync_state = SyncState {
        tenant: tenant.clone(),
        omneo_profile_id: id.clone(),
        klaviyo_profile_id: Some(klaviyo_id),
        payload_hash: hash,
        consent: ConsentSent {
            email: desired.email.or(previous.email),
            sms: desired.sms.or(previous.sms),
        },
        updated_at: Timestamp::now(),
    };
    job.app
        .store
        .put_sync_state(&sync_state)
        .await
        .map_err(store_setback("write_sync_state"))
}

/// Imports the mapped profile (as `id` when matched); a duplicate-profile conflict is retried once
/// without the phone and leaves a warning.
async fn import(
    job: &Job<'_>,
    mapped: &MappedProfile,
    id: Option<KlaviyoProfileId>,
) -> Result<ImportedProfile, Setback> {
    let mut upsert = mapped.upsert.clone();
    upsert.id = id;
    let send = |upsert: crate::klaviyo::models::ProfileUpsert| async move {
        job.klaviyo(|k, t| {
            let upsert = upsert.clone();
            async move { k.import_profile(&t, &upsert).await }
        })
        .await
    };
    match send(upsert.clone()).await {
        Ok(imported) => Ok(imported),
        Err(KlaviyoCallError::Remote(error))
            if matches!(error.kind, ErrorKind::DuplicateProfile { .. })
                && matches!(upsert.phone_number, Patch::Set(_)) =>
        {
            let ErrorKind::DuplicateProfile {
                duplicate_profile_id,
            } = &error.kind
            else {
                unreachable!("matched above")
            };
            job.warn(
                "import_profile",
                format!(
                    "data conflict: the phone belongs to another Klaviyo profile ({duplicate_profile_id}); the profile was synced without it"
                ),
            )
            .await?;
            upsert.phone_number = Patch::Keep;
            send(upsert)
                .await
                .map_err(klaviyo_setback("import_profile"))
        }
        Err(error) => Err(klaviyo_setback("import_profile")(error)),
    }
}

/// Stores the Klaviyo id on the Omneo profile as its identity; an identity held by another Omneo
/// profile (422) leaves a warning instead.
async fn write_identity(
    job: &Job<'_>,
    profile: &OmneoProfileId,
    klaviyo_id: &KlaviyoProfileId,
) -> Result<(), Setback> {
    let handle = &job.tenant.settings.identity_handle;
    match job
        .omneo
        .upsert_identity(profile, handle, klaviyo_id.as_str())
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if error.status() == Some(http::StatusCode::UNPROCESSABLE_ENTITY) => {
            job.warn(
                "write_identity",
                format!("data conflict: Omneo refused the {handle} identity {klaviyo_id}: {error}"),
            )
            .await
        }
        Err(error) => Err(omneo_setback("write_identity")(error)),
    }
}
