//! Bulk profile import jobs (`klaviyo.md` §Bulk): `POST /api/profile-bulk-import-jobs` (202; at
//! most [`MAX_PROFILES`] profiles, [`MAX_BODY_BYTES`] per body → 413, [`MAX_PROFILE_BYTES`]
//! per profile → 413; `lists:write` too when lists are named), the job (`GET …/{id}`), its
//! import errors (`GET …/{id}/import-errors`) and the ids of the profiles it created or updated
//! (`GET …/{id}/relationships/profiles`), both cursor-paged.
//!
//! A job runs over time, like the real one: `queued` until [`BulkPace::start_after`] has passed
//! since its creation, then `processing` at [`BulkPace::profiles_per_second`], then `complete`.
//! Progress is computed lazily whenever the account's state is looked at (every API call, every
//! inspection), so no task runs in the background. Each profile is upserted as profile-import
//! does ([`super::profiles`]) except that `null` leaves a field as absent does
//! ([`Nulls::Keep`]); what profile-import would refuse (an invalid email or phone number, no
//! identifier on a new profile, identifiers of two profiles) is an *import error* of the job,
//! counted in `failed_count`, not a 400. Its `source.pointer` points into the job's document, as
//! JSON:API pointers point into the request: at the offending member of the profile
//! (`/data/attributes/profiles/data/3/attributes/email`) or at the profile itself
//! (`/data/attributes/profiles/data/3`, e.g. for `duplicate_profile`); Klaviyo documents no
//! example, so the shape is the simulator's reading of the JSON:API spec. Processed profiles join the job's lists (membership
//! only: consent is unchanged and, a simulator choice, no "Subscribed to List" system event is
//! queued). Jobs are never cancelled and do not expire in the simulator (`expires_at` is
//! reported, seven days after creation).

use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::to_bytes;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::api::Granted;
use super::jsonapi::{ApiError, Data, Here, ResourceId, document, expect_type, paginate};
use super::profiles::{Nulls, ProfileAttributes};
use super::state::{Ctx, State as Account, ulid};

/// The most profiles one job takes.
pub const MAX_PROFILES: usize = 10_000;
/// The largest request body (5 MB).
pub const MAX_BODY_BYTES: usize = 5 * 1024 * 1024;
/// The largest profile resource object (100 KB, as serialized).
pub const MAX_PROFILE_BYTES: usize = 100 * 1024;

const PROFILES_POINTER: &str = "/data/attributes/profiles/data";
const LISTS_POINTER: &str = "/data/relationships/lists/data";
const EXPIRES_AFTER: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);

/// How fast bulk import jobs run ([`super::KlaviyoSimOptions::bulk_pace`],
/// [`super::KlaviyoSim::set_bulk_pace`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BulkPace {
    /// How long a job stays `queued` after its creation.
    pub start_after: Duration,
    /// Profiles processed per second once it runs: `0.0` stalls it in `processing`, infinity
    /// processes everything the moment it starts.
    pub profiles_per_second: f64,
}

impl Default for BulkPace {
    /// Starts after 200 ms, then 5,000 profiles a second.
    fn default() -> Self {
        Self {
            start_after: Duration::from_millis(200),
            profiles_per_second: 5_000.0,
        }
    }
}

impl BulkPace {
    /// Jobs are complete by the time the 202 is answered (whose body still says `queued`, as
    /// an accepted job's does).
    pub fn instant() -> Self {
        Self {
            start_after: Duration::ZERO,
            profiles_per_second: f64::INFINITY,
        }
    }

    /// Jobs start (after the usual 200 ms) and then process nothing, until the pace changes.
    pub fn stalled() -> Self {
        Self {
            profiles_per_second: 0.0,
            ..Self::default()
        }
    }
}

/// A job's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BulkStatus {
    /// Accepted, not started.
    Queued,
    /// Some profiles may be processed.
    Processing,
    /// Every profile is processed (imported or failed).
    Complete,
}

/// One profile the job could not import.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportError {
    /// The error's id.
    pub id: String,
    /// E.g. `invalid`, `duplicate_profile`.
    pub code: String,
    /// E.g. `Invalid input.`.
    pub title: String,
    /// What is wrong.
    pub detail: String,
    /// A JSON pointer into the job's document at the profile or one of its members, e.g.
    /// `/data/attributes/profiles/data/3/attributes/email`.
    pub pointer: String,
    /// The profile resource object as sent.
    pub original_payload: Value,
}

impl ImportError {
    /// The error profile-import would answer for the job's profile `index`, its pointer moved
    /// from that profile's own document (`/data/…`) into the job's.
    fn from_api_error(error: &ApiError, index: usize, original_payload: Value) -> Self {
        let body = error.body();
        let error = &body["errors"][0];
        let text = |member: &str| error[member].as_str().unwrap_or_default().to_owned();
        let within = error["source"]["pointer"]
            .as_str()
            .and_then(|pointer| pointer.strip_prefix("/data"))
            .unwrap_or_default();
        Self {
            id: ulid(),
            code: text("code"),
            title: text("title"),
            detail: text("detail"),
            pointer: format!("{PROFILES_POINTER}/{index}{within}"),
            original_payload,
        }
    }

    fn resource(&self) -> Value {
        json!({
            "type": "import-error",
            "id": self.id,
            "attributes": {
                "code": self.code,
                "title": self.title,
                "detail": self.detail,
                "source": {"pointer": self.pointer},
                "original_payload": self.original_payload
            }
        })
    }
}

/// One profile of a job, as sent and as parsed.
#[derive(Debug, Clone)]
struct JobProfile {
    id: Option<String>,
    attributes: ProfileAttributes,
    original: Value,
}

/// Where a job's processing stands in time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    created: Instant,
    /// Up to when processing has been accounted for.
    advanced_to: Instant,
    /// Profiles owed but not yet processed (the fraction of the next one).
    credit: f64,
}

/// A bulk profile import job.
#[derive(Debug, Clone, Serialize)]
pub struct BulkImportJob {
    /// The job id (a ULID).
    pub id: String,
    /// Where it stands.
    pub status: BulkStatus,
    /// How many profiles it holds.
    pub total_count: usize,
    /// How many were imported.
    pub completed_count: usize,
    /// How many failed (see [`Self::errors`]).
    pub failed_count: usize,
    /// When it was accepted.
    pub created_at: jiff::Timestamp,
    /// When it started processing.
    pub started_at: Option<jiff::Timestamp>,
    /// When its last profile was processed.
    pub completed_at: Option<jiff::Timestamp>,
    /// When Klaviyo would forget it.
    pub expires_at: jiff::Timestamp,
    /// The lists processed profiles join.
    pub lists: Vec<String>,
    /// The import errors, in the order of the profiles.
    pub errors: Vec<ImportError>,
    /// The ids of the profiles created or updated, first processing first, each once.
    pub profile_ids: Vec<String>,
    #[serde(skip)]
    profiles: Vec<JobProfile>,
    #[serde(skip)]
    clock: Clock,
}

impl BulkImportJob {
    /// How many profiles are processed (imported or failed).
    pub fn processed(&self) -> usize {
        self.completed_count + self.failed_count
    }

    /// The wall-clock time of `instant`.
    fn wall(&self, instant: Instant) -> jiff::Timestamp {
        let since = instant.saturating_duration_since(self.clock.created);
        self.created_at
            .checked_add(since)
            .unwrap_or(self.created_at)
    }

    /// Moves the job to `now` at `pace`; returns how many more profiles are due.
    fn due(&mut self, now: Instant, pace: &BulkPace) -> usize {
        if self.status == BulkStatus::Complete {
            return 0;
        }
        if self.status == BulkStatus::Queued {
            let start = self
                .clock
                .created
                .checked_add(pace.start_after)
                .filter(|&start| start <= now);
            let Some(start) = start else {
                // Still queued; should the pace change, the new one applies from here on.
                self.clock.advanced_to = now;
                return 0;
            };
            let start = start.max(self.clock.advanced_to);
            self.status = BulkStatus::Processing;
            self.started_at = Some(self.wall(start));
            self.clock.advanced_to = start;
        }
        let from = self.clock.advanced_to;
        self.clock.advanced_to = now;
        let remaining = self.total_count - self.processed();
        let rate = pace.profiles_per_second;
        let due = if rate.is_infinite() {
            remaining
        } else if rate > 0.0 {
            self.clock.credit += now.duration_since(from).as_secs_f64() * rate;
            (self.clock.credit.floor() as usize).min(remaining)
        } else {
            0
        };
        self.clock.credit -= due as f64;
        if due == remaining {
            self.status = BulkStatus::Complete;
            // The last profile fell due `credit / rate` seconds ago.
            let late = if rate.is_finite() && rate > 0.0 {
                Duration::from_secs_f64((self.clock.credit / rate).max(0.0))
            } else {
                Duration::ZERO
            };
            let done = now.checked_sub(late).unwrap_or(now).max(from);
            self.completed_at = Some(self.wall(done));
            self.clock.credit = 0.0;
        }
        due
    }

    fn resource(&self, here: &Here) -> Value {
        let path = format!("/api/profile-bulk-import-jobs/{}/", self.id);
        let lists: Vec<Value> = self
            .lists
            .iter()
            .map(|id| json!({"type": "list", "id": id}))
            .collect();
        let mut lists_relationship = json!({"data": lists});
        lists_relationship["links"] = here.relationship_links(&path, "lists");
        json!({
            "type": "profile-bulk-import-job",
            "id": self.id,
            "attributes": {
                "status": self.status,
                "total_count": self.total_count,
                "completed_count": self.completed_count,
                "failed_count": self.failed_count,
                "created_at": self.created_at,
                "started_at": self.started_at,
                "completed_at": self.completed_at,
                "expires_at": self.expires_at
            },
            "relationships": {
                "lists": lists_relationship,
                "profiles": {"links": here.relationship_links(&path, "profiles")},
                "import-errors": {"links": {"related": here.link(&format!("{path}import-errors/"))}}
            },
            "links": {"self": here.link(&path)}
        })
    }
}

impl Account {
    /// Processes whatever the bulk jobs owe by now (see the module docs).
    pub(crate) fn advance_bulk_jobs(&mut self, now: Instant) {
        if self
            .bulk_jobs
            .iter()
            .all(|j| j.status == BulkStatus::Complete)
        {
            return;
        }
        let pace = self.options.bulk_pace;
        let mut jobs = std::mem::take(&mut self.bulk_jobs);
        for job in &mut jobs {
            let due = job.due(now, &pace);
            let first = job.processed();
            for index in first..first + due {
                let profile = job.profiles[index].clone();
                match self.import_profile_with(
                    profile.id.as_deref(),
                    &profile.attributes,
                    Nulls::Keep,
                ) {
                    Ok((imported, _)) => {
                        job.completed_count += 1;
                        for list_id in &job.lists {
                            if let Some(list) = self.lists.iter_mut().find(|l| &l.id == list_id)
                                && !list.members.contains(&imported.id)
                            {
                                list.members.push(imported.id.clone());
                            }
                        }
                        if !job.profile_ids.contains(&imported.id) {
                            job.profile_ids.push(imported.id);
                        }
                    }
                    Err(error) => {
                        job.failed_count += 1;
                        job.errors.push(ImportError::from_api_error(
                            &error,
                            index,
                            profile.original,
                        ));
                    }
                }
            }
        }
        self.bulk_jobs = jobs;
    }

    fn bulk_job(&self, id: &str) -> Result<&BulkImportJob, ApiError> {
        self.bulk_jobs
            .iter()
            .find(|j| j.id == id)
            .ok_or_else(|| ApiError::not_found(format!("Profile bulk import job {id} not found.")))
    }
}

#[derive(Deserialize)]
struct CreateDocument {
    data: CreateData,
}

#[derive(Deserialize)]
struct CreateData {
    #[serde(rename = "type")]
    kind: String,
    attributes: CreateAttributes,
    #[serde(default)]
    relationships: Option<CreateRelationships>,
}

#[derive(Deserialize)]
struct CreateAttributes {
    profiles: Data<Vec<Value>>,
}

#[derive(Deserialize)]
struct CreateRelationships {
    #[serde(default)]
    lists: Option<Data<Vec<ResourceId>>>,
}

/// A profile resource object as profile-import takes it.
#[derive(Deserialize)]
struct ProfileObject {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    attributes: ProfileAttributes,
}

/// Why a job is refused.
enum Refusal {
    Api(ApiError),
    /// 413 pointing at what is too large (`ApiError::too_large` has no source).
    TooLarge {
        detail: String,
        pointer: String,
    },
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Api(error) => error.into_response(),
            Self::TooLarge { detail, pointer } => {
                let mut body = ApiError::too_large(detail).body();
                body["errors"][0]["source"] = json!({ "pointer": pointer });
                document(StatusCode::PAYLOAD_TOO_LARGE, &body)
            }
        }
    }
}

/// `POST /api/profile-bulk-import-jobs` — 202 with the queued job.
pub(crate) async fn create(
    State(ctx): State<Ctx>,
    Extension(granted): Extension<Granted>,
    here: Here,
    request: Request,
) -> Response {
    // The body was buffered by the recorder already; read it whole, then judge its size.
    let body = match to_bytes(request.into_body(), usize::MAX).await {
        Ok(body) => body,
        Err(e) => {
            return ApiError::invalid(format!("Unreadable body: {e}"), "/data").into_response();
        }
    };
    if body.len() > MAX_BODY_BYTES {
        return Refusal::TooLarge {
            detail: format!("A bulk import job may be at most {MAX_BODY_BYTES} bytes."),
            pointer: "/data".into(),
        }
        .into_response();
    }
    accept(&ctx, &granted, &here, &body).unwrap_or_else(IntoResponse::into_response)
}

fn accept(ctx: &Ctx, granted: &Granted, here: &Here, body: &[u8]) -> Result<Response, Refusal> {
    let invalid = |detail: String, pointer: &str| Refusal::Api(ApiError::invalid(detail, pointer));
    let doc: CreateDocument = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("Invalid JSON:API document: {e}"), "/data"))?;
    let data = doc.data;
    expect_type(&data.kind, "profile-bulk-import-job", "/data/type")?;
    let lists = data
        .relationships
        .and_then(|r| r.lists)
        .map(|l| l.data)
        .unwrap_or_default();
    if !lists.is_empty() && !granted.has("lists:write") {
        return Err(ApiError::permission_denied(
            "The token lacks the 'lists:write' scope needed to add profiles to lists.",
        )
        .into());
    }
    let raw = data.attributes.profiles.data;
    if raw.is_empty() || raw.len() > MAX_PROFILES {
        return Err(invalid(
            format!(
                "Between 1 and {MAX_PROFILES} profiles are allowed per job; got {}.",
                raw.len()
            ),
            PROFILES_POINTER,
        ));
    }
    let mut profiles = Vec::with_capacity(raw.len());
    for (i, original) in raw.into_iter().enumerate() {
        let pointer = format!("{PROFILES_POINTER}/{i}");
        let size = original.to_string().len();
        if size > MAX_PROFILE_BYTES {
            return Err(Refusal::TooLarge {
                detail: format!(
                    "A profile may be at most {MAX_PROFILE_BYTES} bytes; this one is {size}."
                ),
                pointer,
            });
        }
        let object: ProfileObject = serde_json::from_value(original.clone())
            .map_err(|e| invalid(format!("Invalid profile: {e}"), &pointer))?;
        expect_type(&object.kind, "profile", &format!("{pointer}/type"))?;
        profiles.push(JobProfile {
            id: object.id,
            attributes: object.attributes,
            original,
        });
    }
    let mut state = ctx.lock();
    let mut list_ids = Vec::with_capacity(lists.len());
    for (i, list) in lists.into_iter().enumerate() {
        expect_type(&list.kind, "list", &format!("{LISTS_POINTER}/{i}/type"))?;
        if !state.lists.iter().any(|l| l.id == list.id) {
            return Err(invalid(
                format!("List {} does not exist.", list.id),
                &format!("{LISTS_POINTER}/{i}/id"),
            ));
        }
        if !list_ids.contains(&list.id) {
            list_ids.push(list.id);
        }
    }
    let now = Instant::now();
    let created_at = jiff::Timestamp::now();
    let job = BulkImportJob {
        id: ulid(),
        status: BulkStatus::Queued,
        total_count: profiles.len(),
        completed_count: 0,
        failed_count: 0,
        created_at,
        started_at: None,
        completed_at: None,
        expires_at: created_at.checked_add(EXPIRES_AFTER).unwrap_or(created_at),
        lists: list_ids,
        errors: Vec::new(),
        profile_ids: Vec::new(),
        profiles,
        clock: Clock {
            created: now,
            advanced_to: now,
            credit: 0.0,
        },
    };
    // The 202 reports the job as accepted: queued, nothing processed, whatever the pace.
    let resource = job.resource(here);
    state.bulk_jobs.push(job);
    state.advance_bulk_jobs(now);
    Ok(document(StatusCode::ACCEPTED, &json!({ "data": resource })))
}

/// `GET /api/profile-bulk-import-jobs/{id}`.
pub(crate) async fn get_one(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    here: Here,
) -> Result<Response, ApiError> {
    let resource = ctx.lock().bulk_job(&id)?.resource(&here);
    Ok(document(StatusCode::OK, &json!({ "data": resource })))
}

/// `GET /api/profile-bulk-import-jobs/{id}/import-errors` — page size ≤ 100 (default 20).
pub(crate) async fn import_errors(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    here: Here,
) -> Result<Response, ApiError> {
    let errors = ctx.lock().bulk_job(&id)?.errors.clone();
    let page = paginate(&errors, &here, 20, 100)?;
    let data: Vec<Value> = page.items.iter().map(ImportError::resource).collect();
    Ok(document(
        StatusCode::OK,
        &json!({ "data": data, "links": page.links }),
    ))
}

/// `GET /api/profile-bulk-import-jobs/{id}/relationships/profiles` — page size ≤ 100 (default
/// 20).
pub(crate) async fn profile_ids(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    here: Here,
) -> Result<Response, ApiError> {
    let ids = ctx.lock().bulk_job(&id)?.profile_ids.clone();
    let page = paginate(&ids, &here, 20, 100)?;
    let data: Vec<Value> = page
        .items
        .iter()
        .map(|id| json!({"type": "profile", "id": id}))
        .collect();
    Ok(document(
        StatusCode::OK,
        &json!({ "data": data, "links": page.links }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(total: usize) -> BulkImportJob {
        let now = Instant::now();
        BulkImportJob {
            id: ulid(),
            status: BulkStatus::Queued,
            total_count: total,
            completed_count: 0,
            failed_count: 0,
            created_at: jiff::Timestamp::now(),
            started_at: None,
            completed_at: None,
            expires_at: jiff::Timestamp::now(),
            lists: Vec::new(),
            errors: Vec::new(),
            profile_ids: Vec::new(),
            profiles: Vec::new(),
            clock: Clock {
                created: now,
                advanced_to: now,
                credit: 0.0,
            },
        }
    }

    #[test]
    fn a_job_waits_then_processes_at_the_pace_then_completes() {
        let pace = BulkPace {
            start_after: Duration::from_millis(200),
            profiles_per_second: 100.0,
        };
        let mut j = job(30);
        let t0 = j.clock.created;
        assert_eq!(j.due(t0 + Duration::from_millis(100), &pace), 0);
        assert_eq!(j.status, BulkStatus::Queued);
        assert_eq!(j.due(t0 + Duration::from_millis(300), &pace), 10);
        assert_eq!(j.status, BulkStatus::Processing);
        j.completed_count += 10;
        let stalled = BulkPace {
            profiles_per_second: 0.0,
            ..pace
        };
        assert_eq!(j.due(t0 + Duration::from_secs(5), &stalled), 0);
        assert_eq!(j.status, BulkStatus::Processing);
        // The pace applies from when it changed: 0.25 s at 100/s is 25, capped at the 20 left.
        assert_eq!(j.due(t0 + Duration::from_millis(5_250), &pace), 20);
        assert_eq!(j.status, BulkStatus::Complete);
        let took = j
            .completed_at
            .unwrap()
            .duration_since(j.started_at.unwrap());
        assert!(took >= jiff::SignedDuration::from_secs(4), "{took:?}");
        assert_eq!(j.due(t0 + Duration::from_secs(9), &pace), 0);
        let mut at_once = job(5);
        assert_eq!(at_once.due(at_once.clock.created, &BulkPace::instant()), 5);
        assert_eq!(at_once.status, BulkStatus::Complete);
    }
}
