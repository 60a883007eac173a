//! One chunk of a backfill run (a [`BackfillChunk`] task on the tenant's outbound queue).
//!
//! 1. **Claim** the chunk (a re-delivered or concurrent copy waits, and a finished one does
//!    nothing); a chunk of a run that is not the tenant's running run does nothing.
//! 2. **List** its pages of Omneo's profiles (sorted by `created_at`, which the run's own
//!    identity writes do not move; `updated_at` ≥ the run's `since`). The first chunk decides the
//!    chunk length from the total: [`TARGET_CHUNKS`] chunks or more, at most
//!    [`MAX_PAGES_PER_CHUNK`] pages (2,000 profiles, one import job).
//! 3. **Continue the chain**: register the next chunk on the run and enqueue it (or record that
//!    the listing ended) before working, so the next chunk runs meanwhile on another instance.
//!    It skips the profiles of this chunk's last page, in case the listing shifted.
//! 4. **Plan** each profile as the live sync does ([`crate::outbound::mapping`],
//!    [`crate::outbound::consent`]): excluded, or mapped and hashed; compared with its sync
//!    state, it needs an import (payload or identity changed), a consent check (Omneo's consent
//!    differs from what was last sent), or nothing (unchanged).
//! 5. **Import** in bulk jobs ([`super::bulk`]), each job's id checkpointed on the run as soon
//!    as Klaviyo accepts it, so a retried chunk polls the jobs instead of importing again; poll
//!    them to completion; their import errors become failure records naming the profile.
//! 6. **Match** the imported profiles by `external_id` (100 a call, with their consent), write
//!    each Klaviyo id back as the Omneo identity where it is missing or different, then bring
//!    consent to Omneo's in packed subscribe (master list attached, `historical_import` with
//!    Omneo's consent time) and unsubscribe jobs, and record the sync states.
//! 7. **Count** the chunk on the run, once; the last chunk to finish completes the run.
//!
//! A dry run stops after the plan and counts what would be written.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _, stream};
use jiff::Timestamp;
use serde_json::json;

use super::bulk::{self, pack_subscribes, pack_unsubscribes};
use super::{advance_outbound_cursor, chunk_task, end};
use crate::domain::{ConsentState, KlaviyoProfileId, OmneoProfileId};
use crate::job::{Hold, Job, klaviyo_setback, omneo_setback, store_setback};
use crate::klaviyo::models::{
    BulkImport, BulkImportJob, BulkJobStatus, Profile as KlaviyoProfile, SubscribeJob,
    UnsubscribeJob,
};
use crate::omneo::models::{Profile, ProfileListing};
use crate::outbound::consent::{self, ConsentTarget};
use crate::outbound::mapping::{MappedProfile, event_context, exclusion};
use crate::queue::{BackfillChunk, Direction, QueueSettings, TaskKind};
use crate::store::{
    BackfillRun, ConsentSent, Failure, IdempotencyKey, RunCounts, RunError, RunState, Severity,
    StoreError, SyncState,
};
use crate::worker::{Next, Setback};

/// Profiles per Omneo page (Omneo's largest).
pub const PAGE_SIZE: u32 = 100;
/// The most pages one chunk reads: 2,000 profiles. What a chunk holds while it works (its
/// profiles mapped, the import request, the matched Klaviyo profiles) grows with it, and an
/// instance runs up to ten chunks at once; at 100 pages a 100,000-profile run peaked at 649 MiB
/// (`bench-backfill`).
pub const MAX_PAGES_PER_CHUNK: u32 = 20;
/// A run is cut into at least this many chunks (when it has that many pages), so it spreads
/// over instances.
pub const TARGET_CHUNKS: u32 = 8;
/// How long a chunk's claim lasts unless renewed: the attempt working on it renews it every
/// third of this (`Job::renewing`), so a chunk whose instance died is taken up again within a
/// minute.
pub const CHUNK_LEASE: Duration = Duration::from_secs(60);
/// How long a finished chunk stays marked done.
const CHUNK_RETAIN: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long one attempt polls its import jobs before it hands over to a retry.
const POLL_BUDGET: Duration = Duration::from_secs(5 * 60);
/// The first pause between two polls of an import job; it grows by half up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(500);
/// The longest pause between two polls.
const MAX_POLL: Duration = Duration::from_secs(10);
/// Profiles matched by `external_id` per Klaviyo call (its largest page).
const MATCH_BATCH: usize = 100;
/// Remote calls one chunk makes at a time (matches, identity writes, consent jobs).
const CONCURRENT_CALLS: usize = 8;

/// Runs one chunk task.
pub async fn run(job: &Job<'_>, work: &BackfillChunk) -> Result<(), Setback> {
    let tenant = &job.tenant.id;
    let run = job
        .app
        .store
        .backfill(tenant)
        .await
        .map_err(store_setback("read_run"))?;
    let Some(run) = run.filter(|run| run.id == work.run_id && run.state == RunState::Running)
    else {
        tracing::info!(run = %work.run_id, "the backfill run is over or replaced; chunk skipped");
        return Ok(());
    };
    if run.chunk(work.first_page).is_some_and(|chunk| chunk.done) {
        return Ok(());
    }
    let page = work.first_page.to_string();
    let key = IdempotencyKey::new(tenant, "backfill-chunk", &[&run.id, &page]);
    let held = match job.hold_for(key, CHUNK_LEASE, "claim_chunk").await? {
        Hold::Done => return Ok(()),
        Hold::Acquired(held) => held,
    };
    match job
        .renewing(&held, CHUNK_LEASE, chunk(job, &run, work))
        .await
    {
        Ok(()) => job.finish(held, CHUNK_RETAIN, "claim_chunk").await,
        Err(setback) => {
            job.let_go(held).await;
            let max_attempts = QueueSettings::for_direction(Direction::Outbound).max_attempts;
            if setback.next == Next::GiveUp || job.request.is_last_attempt(max_attempts) {
                let why = format!(
                    "chunk at page {} failed at {}: {}",
                    work.first_page, setback.step, setback.reason
                );
                end(job.app, tenant, &run.id, RunState::Failed, Some(why)).await;
            }
            Err(setback)
        }
    }
}

async fn chunk(job: &Job<'_>, run: &BackfillRun, work: &BackfillChunk) -> Result<(), Setback> {
    let listing = list(job, run, work).await?;
    if !continue_chain(job, run, work, &listing).await? {
        tracing::info!(run = %run.id, "the backfill run was cancelled; chunk stopped");
        return Ok(());
    }
    let mut outcome = Outcome {
        counts: RunCounts {
            read: listing.profiles.len() as u64,
            ..RunCounts::default()
        },
        errors: Vec::new(),
    };
    let plan = plan(job, listing.profiles, &mut outcome).await?;
    if run.dry_run {
        plan.count_dry(&mut outcome.counts);
    } else {
        write(job, run, work, plan, &mut outcome).await?;
    }
    complete(job, run, work, listing.pages, outcome).await
}

/// A chunk's pages of the listing.
struct Listing {
    /// Its profiles, each once, in listing order, reduced as each page arrived (the profiles'
    /// JSON is not kept: a chunk holds up to 10,000 of them).
    profiles: Vec<Listed>,
    /// Pages read.
    pages: u32,
    /// The first page of the next chunk; `None` when this chunk read the last page.
    next_page: Option<u32>,
    /// The ids on its last page (the next chunk skips them).
    last_page_ids: Vec<OmneoProfileId>,
}

/// Reads the chunk's pages; the first chunk also sizes the chunks from the total.
async fn list(job: &Job<'_>, run: &BackfillRun, work: &BackfillChunk) -> Result<Listing, Setback> {
    let listing = |page| ProfileListing {
        page,
        size: PAGE_SIZE,
        updated_since: run.since,
    };
    let read = |page| async move {
        job.omneo
            .profiles_page(&listing(page))
            .await
            .map_err(omneo_setback("list_profiles"))
    };
    let mut first = Some(read(work.first_page).await?);
    let mut pages_per_chunk = run.pages_per_chunk;
    if pages_per_chunk == 0 {
        let total = first.as_ref().and_then(|page| page.meta.total);
        pages_per_chunk = size_chunks(job, run, total).await?;
    }
    let mut skip: HashSet<OmneoProfileId> = work.skip.iter().cloned().collect();
    let mut profiles = Vec::new();
    let mut last_page_ids = Vec::new();
    let mut pages = 0;
    let mut ended = false;
    while pages < pages_per_chunk {
        let page = match first.take() {
            Some(page) => page,
            None => read(work.first_page + pages).await?,
        };
        pages += 1;
        last_page_ids = page.data.iter().map(|p| p.id.clone()).collect();
        ended = page.is_last() || page.data.is_empty();
        let settings = &job.tenant.settings;
        profiles.extend(
            page.data
                .into_iter()
                .filter(|p| skip.insert(p.id.clone()))
                .map(|p| Listed::of(p, settings)),
        );
        if ended {
            break;
        }
    }
    Ok(Listing {
        profiles,
        pages,
        next_page: (!ended).then(|| work.first_page + pages),
        last_page_ids,
    })
}

/// Decides (once per run) how many pages a chunk reads, from the total Omneo reported.
async fn size_chunks(job: &Job<'_>, run: &BackfillRun, total: Option<u64>) -> Result<u32, Setback> {
    let pages = total.map_or(u64::from(MAX_PAGES_PER_CHUNK * TARGET_CHUNKS), |total| {
        total.div_ceil(u64::from(PAGE_SIZE))
    });
    let decided = u32::try_from(pages / u64::from(TARGET_CHUNKS))
        .unwrap_or(MAX_PAGES_PER_CHUNK)
        .clamp(1, MAX_PAGES_PER_CHUNK);
    let stored = job
        .app
        .store
        .update_backfill_or(&run.tenant, |current| match current {
            Some(mut stored) if stored.id == run.id => {
                if stored.pages_per_chunk == 0 {
                    stored.pages_per_chunk = decided;
                    stored.total = total;
                }
                Ok(stored)
            }
            _ => Err(()),
        })
        .await
        .map_err(store_setback("size_chunks"))?;
    Ok(stored.map_or(decided, |run| run.pages_per_chunk))
}

/// Registers and enqueues the next chunk, or records that the listing ended; `false` when the
/// run is no longer running.
async fn continue_chain(
    job: &Job<'_>,
    run: &BackfillRun,
    work: &BackfillChunk,
    listing: &Listing,
) -> Result<bool, Setback> {
    let registered = job
        .app
        .store
        .update_backfill_or(&run.tenant, |current| match current {
            Some(mut stored) if stored.id == run.id && stored.state == RunState::Running => {
                match listing.next_page {
                    Some(next) => {
                        stored.chunk_mut(next);
                    }
                    None => stored.listing_done = true,
                }
                Ok(stored)
            }
            _ => Err(()),
        })
        .await
        .map_err(store_setback("continue_run"))?;
    if registered.is_err() {
        return Ok(false);
    }
    if let Some(next) = listing.next_page {
        let task = chunk_task(
            &run.tenant,
            &job.request.queue,
            &run.id,
            next,
            listing.last_page_ids.clone(),
        );
        job.enqueue(&task, "continue_run").await?;
    }
    tracing::debug!(run = %run.id, first_page = work.first_page, next = ?listing.next_page, "backfill chunk listed");
    Ok(true)
}

/// What a chunk did, before it is added to the run.
struct Outcome {
    counts: RunCounts,
    errors: Vec<RunError>,
}

/// A listed profile as the chunk keeps it.
enum Listed {
    /// The exclusions keep it out.
    Excluded,
    /// The tenant's `exclude_logic` could not be evaluated for it.
    Unjudged {
        /// The profile.
        id: OmneoProfileId,
        /// The evaluation error.
        problem: String,
    },
    /// To compare with its sync state.
    Mapped(Box<Candidate>),
}

impl Listed {
    /// Excludes and maps `profile` as the live sync does, keeping only what the chunk writes.
    fn of(profile: Profile, settings: &crate::settings::Settings) -> Self {
        let context = event_context(&profile);
        match exclusion(&profile, &context, settings) {
            Ok(Some(_)) => Self::Excluded,
            Err(problem) => Self::Unjudged {
                id: profile.id,
                problem,
            },
            Ok(None) => {
                let mapped = MappedProfile::of(&profile, &context, settings);
                let identity = profile
                    .identity(&settings.identity_handle)
                    .map(str::to_owned);
                Self::Mapped(Box::new(Candidate {
                    email: profile
                        .email
                        .as_deref()
                        .map(str::trim)
                        .filter(|email| !email.is_empty())
                        .map(str::to_owned),
                    id: profile.id,
                    identity,
                    comms: profile.comms,
                    mapped,
                }))
            }
        }
    }
}

/// What the chunk needs of a profile it may write.
struct Candidate {
    id: OmneoProfileId,
    email: Option<String>,
    /// Its Klaviyo identity in Omneo (under the tenant's handle).
    identity: Option<String>,
    comms: Option<crate::omneo::models::Comms>,
    mapped: MappedProfile,
}

/// One profile to write.
struct Entry {
    profile: Candidate,
    hash: String,
    desired: ConsentSent,
    previous: Option<SyncState>,
    /// Its payload or identity changed: import it.
    import: bool,
}

impl Entry {
    /// The Klaviyo id the profile is known by (its Omneo identity, else its sync state).
    fn known_klaviyo_id(&self) -> Option<KlaviyoProfileId> {
        self.profile
            .identity
            .as_deref()
            .and_then(|id| KlaviyoProfileId::parse(id).ok())
            .or_else(|| {
                self.previous
                    .as_ref()
                    .and_then(|s| s.klaviyo_profile_id.clone())
            })
    }
}

/// The profiles that need writing (the excluded and unchanged are counted and gone).
struct Plan {
    entries: Vec<Entry>,
}

impl Plan {
    /// What a dry run reports: the imports, and the consent changes Omneo's consent implies
    /// against what was last sent.
    fn count_dry(&self, counts: &mut RunCounts) {
        for entry in &self.entries {
            counts.imported += u64::from(entry.import);
            let sent = entry
                .previous
                .as_ref()
                .map(|s| s.consent)
                .unwrap_or_default();
            let changes_to = |state| {
                [
                    (entry.desired.email, sent.email),
                    (entry.desired.sms, sent.sms),
                ]
                .iter()
                .any(|&(want, had)| want == Some(state) && had != Some(state))
            };
            counts.subscribed += u64::from(changes_to(ConsentState::Subscribed));
            counts.unsubscribed += u64::from(changes_to(ConsentState::NotSubscribed));
        }
    }
}

/// Counts the excluded, records the unjudged, and compares the rest with their sync states.
async fn plan(job: &Job<'_>, listed: Vec<Listed>, outcome: &mut Outcome) -> Result<Plan, Setback> {
    let mut candidates = Vec::with_capacity(listed.len());
    for profile in listed {
        match profile {
            Listed::Excluded => outcome.counts.excluded += 1,
            Listed::Unjudged { id, problem } => {
                let message = format!("the tenant's exclude_logic failed: {problem}");
                profile_failure(job, &id, "exclusion", message, outcome).await?;
            }
            Listed::Mapped(candidate) => candidates.push(*candidate),
        }
    }
    let ids: Vec<OmneoProfileId> = candidates.iter().map(|c| c.id.clone()).collect();
    let mut states: HashMap<OmneoProfileId, SyncState> = job
        .app
        .store
        .sync_states(&job.tenant.id, &ids)
        .await
        .map_err(store_setback("read_sync_state"))?
        .into_iter()
        .map(|state| (state.omneo_profile_id.clone(), state))
        .collect();
    let mut entries = Vec::new();
    for profile in candidates {
        let hash = profile.mapped.hash();
        let desired = consent::desired(
            profile.comms.as_ref(),
            profile.email.is_some(),
            profile.mapped.phone.as_ref(),
        );
        let previous = states.remove(&profile.id);
        let import = !previous.as_ref().is_some_and(|state| {
            state.payload_hash == hash
                && state
                    .klaviyo_profile_id
                    .as_ref()
                    .map(KlaviyoProfileId::as_str)
                    == profile.identity.as_deref()
        });
        let consent_sent = previous.as_ref().is_some_and(|state| {
            let sent = |want: Option<ConsentState>, had| want.is_none() || want == had;
            sent(desired.email, state.consent.email) && sent(desired.sms, state.consent.sms)
        });
        if !import && consent_sent {
            outcome.counts.unchanged += 1;
            continue;
        }
        entries.push(Entry {
            profile,
            hash,
            desired,
            previous,
            import,
        });
    }
    Ok(Plan { entries })
}

/// Imports, matches, writes identities and consent, records sync states.
async fn write(
    job: &Job<'_>,
    run: &BackfillRun,
    work: &BackfillChunk,
    plan: Plan,
    outcome: &mut Outcome,
) -> Result<(), Setback> {
    let mut entries = plan.entries;
    let importing: Vec<usize> = (0..entries.len()).filter(|&i| entries[i].import).collect();
    let upserts: Vec<_> = importing
        .iter()
        .map(|&i| {
            let mut upsert = entries[i].profile.mapped.upsert.clone();
            upsert.id = entries[i].known_klaviyo_id();
            upsert
        })
        .collect();
    let (batches, oversized) = bulk::import_batches(&upserts, &[]);
    let mut refused: HashSet<usize> = HashSet::new();
    for too_big in oversized {
        let entry = importing[too_big.index];
        refused.insert(entry);
        let message = format!(
            "the mapped profile is {} bytes, over Klaviyo's {} per profile in a bulk import",
            too_big.bytes,
            bulk::MAX_PROFILE_BYTES
        );
        profile_failure(
            job,
            &entries[entry].profile.id,
            "bulk_import",
            message,
            outcome,
        )
        .await?;
    }
    let checkpointed = run
        .chunk(work.first_page)
        .map(|chunk| chunk.import_jobs.clone())
        .unwrap_or_default();
    for (n, batch) in batches.iter().enumerate() {
        let id = match checkpointed.get(n) {
            Some(id) => id.clone(),
            None => {
                let request = BulkImport {
                    profiles: batch.iter().map(|&i| upserts[i].clone()).collect(),
                    list_ids: Vec::new(),
                };
                let created = job
                    .klaviyo(|k, t| {
                        let request = &request;
                        async move { k.create_bulk_import(&t, request).await }
                    })
                    .await
                    .map_err(klaviyo_setback("bulk_import"))?;
                checkpoint_job(job, run, work, &created.id).await?;
                created.id
            }
        };
        wait_for(job, &id).await?;
        let errors = job
            .klaviyo(|k, t| {
                let id = id.clone();
                async move { k.bulk_import_errors(&t, &id).await }
            })
            .await
            .map_err(klaviyo_setback("read_import_errors"))?;
        for error in errors {
            let Some(&entry) = error.profile_index().and_then(|i| batch.get(i)) else {
                let message = format!("import job {id}: {} ({})", error.title, error.detail);
                outcome.keep(None, "bulk_import", message);
                continue;
            };
            let entry = importing[entry];
            if refused.insert(entry) {
                let message = format!(
                    "Klaviyo refused the profile: {} ({})",
                    error.title, error.detail
                );
                profile_failure(
                    job,
                    &entries[entry].profile.id,
                    "bulk_import",
                    message,
                    outcome,
                )
                .await?;
            }
        }
    }

    // Match every imported profile, and every profile whose consent may differ, by external id.
    let matching: Vec<usize> = (0..entries.len())
        .filter(|i| !refused.contains(i))
        .collect();
    let ids: Vec<OmneoProfileId> = matching
        .iter()
        .map(|&i| entries[i].profile.id.clone())
        .collect();
    let found = match_profiles(job, &ids).await?;
    let mut written = Vec::new();
    let mut identities = Vec::new();
    let mut subscribes = Vec::new();
    let mut unsubscribes = Vec::new();
    for &i in &matching {
        let entry = &entries[i];
        let Some(klaviyo) = found.get(entry.profile.id.as_str()) else {
            let message = "not found in Klaviyo by its external_id after the import".to_owned();
            profile_failure(job, &entry.profile.id, "match_profile", message, outcome).await?;
            continue;
        };
        if entry.profile.identity.as_deref() != Some(klaviyo.id.as_str()) {
            identities.push((entry.profile.id.clone(), klaviyo.id.clone()));
        }
        let current = consent::current(klaviyo.attributes.subscriptions.as_ref());
        let writes = consent::writes(
            entry.desired,
            current,
            entry.profile.comms.as_ref(),
            ConsentTarget {
                email: entry.profile.email.as_deref(),
                phone: entry.profile.mapped.phone.as_ref(),
                master_list: job.tenant.settings.master_list_id.as_deref(),
                resync: true,
                last_sent: entry
                    .previous
                    .as_ref()
                    .map(|s| s.consent)
                    .unwrap_or_default(),
            },
        );
        outcome.counts.imported += u64::from(entry.import);
        outcome.counts.subscribed += u64::from(!writes.subscribe.is_empty());
        outcome.counts.unsubscribed += u64::from(writes.unsubscribe.is_some());
        subscribes.push(writes.subscribe);
        unsubscribes.extend(writes.unsubscribe);
        written.push((i, klaviyo.id.clone()));
    }
    write_identities(job, identities, outcome).await?;
    let subscribes = pack_subscribes(subscribes);
    let unsubscribes = pack_unsubscribes(unsubscribes);
    // Subscriptions first, then unsubscriptions, as the live sync orders them.
    send_consent(job, subscribes.into_iter().map(ConsentJob::Subscribe)).await?;
    send_consent(job, unsubscribes.into_iter().map(ConsentJob::Unsubscribe)).await?;

    let now = Timestamp::now();
    let states: Vec<SyncState> = written
        .into_iter()
        .map(|(i, klaviyo_id)| {
            let entry = &mut entries[i];
            let previous = entry.previous.take().map(|s| s.consent).unwrap_or_default();
            SyncState {
                tenant: job.tenant.id.clone(),
                omneo_profile_id: entry.profile.id.clone(),
                klaviyo_profile_id: Some(klaviyo_id),
                payload_hash: std::mem::take(&mut entry.hash),
                consent: ConsentSent {
                    email: entry.desired.email.or(previous.email),
                    sms: entry.desired.sms.or(previous.sms),
                },
                updated_at: now,
            }
        })
        .collect();
    job.app
        .store
        .put_sync_states(&states)
        .await
        .map_err(store_setback("write_sync_state"))
}

/// One bulk consent change.
enum ConsentJob {
    Subscribe(SubscribeJob),
    Unsubscribe(UnsubscribeJob),
}

/// Sends consent jobs, [`CONCURRENT_CALLS`] at a time.
async fn send_consent(
    job: &Job<'_>,
    jobs: impl Iterator<Item = ConsentJob>,
) -> Result<(), Setback> {
    stream::iter(jobs)
        .map(|request| async move {
            let step = match &request {
                ConsentJob::Subscribe(_) => "subscribe",
                ConsentJob::Unsubscribe(_) => "unsubscribe",
            };
            job.klaviyo(|k, t| {
                let request = &request;
                async move {
                    match request {
                        ConsentJob::Subscribe(r) => k.subscribe(&t, r).await,
                        ConsentJob::Unsubscribe(r) => k.unsubscribe(&t, r).await,
                    }
                }
            })
            .await
            .map_err(klaviyo_setback(step))
        })
        .buffer_unordered(CONCURRENT_CALLS)
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

/// Records an import job's id on the run as soon as Klaviyo accepted it.
async fn checkpoint_job(
    job: &Job<'_>,
    run: &BackfillRun,
    work: &BackfillChunk,
    import_job: &str,
) -> Result<(), Setback> {
    job.app
        .store
        .update_backfill_or(&run.tenant, |current| match current {
            Some(mut stored) if stored.id == run.id => {
                stored
                    .chunk_mut(work.first_page)
                    .import_jobs
                    .push(import_job.to_owned());
                Ok(stored)
            }
            _ => Err(()),
        })
        .await
        .map_err(store_setback("checkpoint_import"))?
        .map(drop)
        .or(Ok(()))
}

/// Polls an import job until Klaviyo completed it; past [`POLL_BUDGET`] the task is retried
/// (the retry polls the same job).
async fn wait_for(job: &Job<'_>, id: &str) -> Result<BulkImportJob, Setback> {
    let deadline = tokio::time::Instant::now() + POLL_BUDGET;
    let mut pause = FIRST_POLL;
    loop {
        let state = job
            .klaviyo(|k, t| {
                let id = id.to_owned();
                async move { k.bulk_import_job(&t, &id).await }
            })
            .await
            .map_err(klaviyo_setback("poll_import"))?;
        match state.status {
            BulkJobStatus::Complete => return Ok(state),
            BulkJobStatus::Cancelled => {
                return Err(Setback::give_up(
                    "poll_import",
                    format!("Klaviyo cancelled import job {id}"),
                ));
            }
            _ => {}
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(Setback::retry(
                "poll_import",
                format!(
                    "import job {id} is still {:?} after {POLL_BUDGET:?}",
                    state.status
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = pause.mul_f64(1.5).min(MAX_POLL);
    }
}

/// The Klaviyo profiles with these external ids (Omneo profile ids), with their consent.
async fn match_profiles(
    job: &Job<'_>,
    ids: &[OmneoProfileId],
) -> Result<HashMap<String, KlaviyoProfile>, Setback> {
    let batches: Vec<Vec<OmneoProfileId>> = ids.chunks(MATCH_BATCH).map(<[_]>::to_vec).collect();
    let pages: Vec<Vec<KlaviyoProfile>> = stream::iter(batches)
        .map(|batch| async move {
            job.klaviyo(|k, t| {
                let batch = batch.clone();
                async move { k.find_profiles_by_external_ids(&t, &batch).await }
            })
            .await
            .map_err(klaviyo_setback("match_profile"))
        })
        .buffer_unordered(CONCURRENT_CALLS)
        .try_collect()
        .await?;
    Ok(pages
        .into_iter()
        .flatten()
        .filter_map(|profile| Some((profile.attributes.external_id.clone()?, profile)))
        .collect())
}

/// Writes Klaviyo ids back as Omneo identities; one another profile holds (422) leaves a warning.
async fn write_identities(
    job: &Job<'_>,
    identities: Vec<(OmneoProfileId, KlaviyoProfileId)>,
    outcome: &mut Outcome,
) -> Result<(), Setback> {
    let handle = &job.tenant.settings.identity_handle;
    let refused: Vec<(OmneoProfileId, String)> = stream::iter(identities)
        .map(|(profile, klaviyo_id)| async move {
            match job
                .omneo
                .upsert_identity(&profile, handle, klaviyo_id.as_str())
                .await
            {
                Ok(_) => Ok(None),
                Err(error) if error.status() == Some(http::StatusCode::UNPROCESSABLE_ENTITY) => {
                    let message = format!(
                        "data conflict: Omneo refused the {handle} identity {klaviyo_id}: {error}"
                    );
                    Ok(Some((profile, message)))
                }
                Err(error) => Err(omneo_setback("write_identity")(error)),
            }
        })
        .buffer_unordered(CONCURRENT_CALLS)
        .try_filter_map(|refused| async move { Ok(refused) })
        .try_collect()
        .await?;
    for (profile, message) in refused {
        record(
            job,
            &profile,
            "write_identity",
            message,
            Severity::Warning,
            outcome,
        )
        .await?;
    }
    Ok(())
}

impl Outcome {
    /// Keeps an error in the run's sample.
    fn keep(&mut self, profile: Option<&OmneoProfileId>, step: &str, message: String) {
        self.errors.push(RunError {
            profile: profile.map(ToString::to_string),
            step: step.to_owned(),
            message,
            at: Timestamp::now(),
        });
        let excess = self.errors.len().saturating_sub(BackfillRun::ERROR_SAMPLE);
        self.errors.drain(..excess);
    }
}

/// A profile the chunk could not write: a failure record (replayable as a sync of that
/// profile), counted as failed.
async fn profile_failure(
    job: &Job<'_>,
    profile: &OmneoProfileId,
    step: &'static str,
    message: String,
    outcome: &mut Outcome,
) -> Result<(), Setback> {
    outcome.counts.failed += 1;
    record(job, profile, step, message, Severity::Failed, outcome).await
}

/// Records a failure or warning about one profile of the chunk, and keeps it in the sample.
async fn record(
    job: &Job<'_>,
    profile: &OmneoProfileId,
    step: &'static str,
    message: String,
    severity: Severity,
    outcome: &mut Outcome,
) -> Result<(), Setback> {
    tracing::warn!(profile = %profile, step, error = %message, "a backfill profile was not written");
    let failure = Failure {
        id: format!(
            "{}:{}:{step}:{profile}",
            job.request.queue, job.request.name
        ),
        tenant: job.tenant.id.clone(),
        queue: job.request.queue.clone(),
        task_kind: TaskKind::SyncProfile,
        task_name: job.request.name.clone(),
        payload: json!({ "profile_id": profile }).to_string(),
        profile: Some(profile.to_string()),
        step: Some(step.to_owned()),
        severity,
        error: message.clone(),
        attempts: job.request.retry_count.saturating_add(1),
        at: Timestamp::now(),
        retries: 0,
        retried_at: None,
    };
    match job.app.store.record_failure(&failure).await {
        Ok(()) | Err(StoreError::Conflict { .. }) => {}
        Err(error) => return Err(store_setback(step)(error)),
    }
    outcome.keep(Some(profile), step, message);
    Ok(())
}

/// Adds the chunk's counts and errors to the run, once; the last chunk completes the run.
async fn complete(
    job: &Job<'_>,
    run: &BackfillRun,
    work: &BackfillChunk,
    pages: u32,
    outcome: Outcome,
) -> Result<(), Setback> {
    let now = Timestamp::now();
    let counted = job
        .app
        .store
        .update_backfill_or(&run.tenant, |current| match current {
            Some(mut stored)
                if stored.id == run.id
                    && !stored.chunk(work.first_page).is_some_and(|c| c.done) =>
            {
                let chunk = stored.chunk_mut(work.first_page);
                chunk.done = true;
                chunk.pages = pages;
                stored.counts.add(&outcome.counts);
                for error in &outcome.errors {
                    stored.keep_error(error.clone());
                }
                if stored.state == RunState::Running
                    && stored.listing_done
                    && stored.chunks.values().all(|c| c.done)
                {
                    stored.state = RunState::Completed;
                    stored.finished_at = Some(now);
                }
                Ok(stored)
            }
            _ => Err(()),
        })
        .await
        .map_err(store_setback("count_chunk"))?;
    if let Ok(stored) = counted
        && stored.state == RunState::Completed
    {
        tracing::info!(run = %stored.id, counts = ?stored.counts, "backfill run completed");
        advance_outbound_cursor(job.app, &stored)
            .await
            .map_err(store_setback("advance_cursor"))?;
    }
    Ok(())
}
