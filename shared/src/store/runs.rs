//! The records of backfill runs and of reconciliation (product.md §10): what a run has done so
//! far, the checkpoint it resumes from, and the cursors reconciliation continues after. The
//! decisions about them (starting, counting, finishing) live in [`crate::backfill`] and
//! [`crate::reconcile`]; these are the stored shapes.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::domain::TenantId;

/// Why a backfill run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    /// An admin's `POST /{tenant}/api/v1/backfill`.
    Admin,
    /// Scheduled reconciliation (an incremental run).
    Reconciliation,
}

/// Where a backfill run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Chunks are being listed or imported.
    Running,
    /// Every chunk finished.
    Completed,
    /// A chunk failed for good; see [`BackfillRun::failure`].
    Failed,
    /// An admin cancelled it.
    Cancelled,
}

impl RunState {
    /// The state as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The profile counters of a run (or of one chunk, before it is added to its run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunCounts {
    /// Profiles read from Omneo.
    pub read: u64,
    /// Profiles the exclusions kept out.
    pub excluded: u64,
    /// Profiles sent in bulk import jobs (and not refused by them).
    pub imported: u64,
    /// Profiles sent in bulk subscribe jobs.
    pub subscribed: u64,
    /// Profiles sent in bulk unsubscribe jobs.
    pub unsubscribed: u64,
    /// Profiles whose mapped payload and consent were already in Klaviyo.
    pub unchanged: u64,
    /// Profiles that failed (an import error, a refused identity); each has a failure record.
    pub failed: u64,
}

impl RunCounts {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &Self) {
        self.read += other.read;
        self.excluded += other.excluded;
        self.imported += other.imported;
        self.subscribed += other.subscribed;
        self.unsubscribed += other.unsubscribed;
        self.unchanged += other.unchanged;
        self.failed += other.failed;
    }
}

/// One chunk's checkpoint: the bulk import jobs it created (so a retried chunk polls them
/// instead of importing again) and whether it finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChunkProgress {
    /// How many Omneo pages the chunk covers.
    pub pages: u32,
    /// Klaviyo bulk import job ids, in the order they were created.
    pub import_jobs: Vec<String>,
    /// Its counts were added to the run.
    pub done: bool,
}

/// One error kept as a sample on the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// The Omneo profile id, when the error is about one profile.
    pub profile: Option<String>,
    /// The step, e.g. `bulk_import`.
    pub step: String,
    /// What went wrong.
    pub message: String,
    /// When.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub at: Timestamp,
}

/// `backfills/{tenant}`: the tenant's latest backfill run, running or finished (a new run
/// replaces a finished one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillRun {
    /// The tenant.
    pub tenant: TenantId,
    /// The run's id (part of its chunk task names and idempotency keys).
    pub id: String,
    /// Who started it.
    pub trigger: RunTrigger,
    /// Only profiles updated at or after this time (`None`: every profile).
    #[serde(default, with = "firestore::serialize_as_optional_timestamp")]
    pub since: Option<Timestamp>,
    /// Count what would be written, write nothing.
    pub dry_run: bool,
    /// Where it is.
    pub state: RunState,
    /// When it started.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub started_at: Timestamp,
    /// When it completed, failed or was cancelled.
    #[serde(default, with = "firestore::serialize_as_optional_timestamp")]
    pub finished_at: Option<Timestamp>,
    /// Profiles to read, once Omneo said.
    #[serde(default)]
    pub total: Option<u64>,
    /// Pages per chunk (decided by the first chunk, from the total; 0 until then).
    #[serde(default)]
    pub pages_per_chunk: u32,
    /// The listing reached Omneo's last page: no chunk after those in `chunks`.
    #[serde(default)]
    pub listing_done: bool,
    /// The chunks enqueued so far, by their first page (as a decimal string: Firestore map
    /// keys are strings).
    #[serde(default)]
    pub chunks: BTreeMap<String, ChunkProgress>,
    /// The counters of the finished chunks.
    #[serde(default)]
    pub counts: RunCounts,
    /// The latest errors (at most [`BackfillRun::ERROR_SAMPLE`]), oldest first.
    #[serde(default)]
    pub errors: Vec<RunError>,
    /// Why the run failed.
    #[serde(default)]
    pub failure: Option<String>,
}

impl BackfillRun {
    /// How many errors a run keeps as its sample.
    pub const ERROR_SAMPLE: usize = 10;

    /// The chunk starting at `first_page`.
    pub fn chunk(&self, first_page: u32) -> Option<&ChunkProgress> {
        self.chunks.get(&first_page.to_string())
    }

    /// The chunk starting at `first_page`, added when absent.
    pub fn chunk_mut(&mut self, first_page: u32) -> &mut ChunkProgress {
        self.chunks.entry(first_page.to_string()).or_default()
    }

    /// Keeps `error` in the sample, dropping the oldest beyond [`Self::ERROR_SAMPLE`].
    pub fn keep_error(&mut self, error: RunError) {
        self.errors.push(error);
        let excess = self.errors.len().saturating_sub(Self::ERROR_SAMPLE);
        self.errors.drain(..excess);
    }
}

/// How one half of a reconciliation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileStatus {
    /// It ran (outbound: its backfill run was started; inbound: the events were read and enqueued).
    Succeeded,
    /// Nothing to do this time (outbound: a backfill was already running).
    Skipped,
    /// It failed; the next schedule tries again.
    Failed,
    /// The tenant's Klaviyo grant lacks scopes it needs: re-authorise the app.
    ReauthorizationRequired,
}

/// The result of one half of the latest reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileResult {
    /// When it ended.
    #[serde(with = "firestore::serialize_as_timestamp")]
    pub at: Timestamp,
    /// How.
    pub status: ReconcileStatus,
    /// In a few words (the error, the missing scopes, what was done).
    pub message: String,
    /// Outbound: the backfill run it started.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Inbound: consent events read, and the tasks they made.
    #[serde(default)]
    pub events: Option<u64>,
}

/// `reconciliations/{tenant}`: when reconciliation last ran for the tenant, where each direction
/// continues from, and how each last ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconciliation {
    /// The tenant.
    pub tenant: TenantId,
    /// When the schedule last enqueued it.
    #[serde(default, with = "firestore::serialize_as_optional_timestamp")]
    pub last_scheduled_at: Option<Timestamp>,
    /// Outbound cursor: the start of the latest completed run that covered every profile
    /// updated since the previous cursor (the next incremental run reads from here).
    #[serde(default, with = "firestore::serialize_as_optional_timestamp")]
    pub outbound_since: Option<Timestamp>,
    /// Inbound cursor: Klaviyo consent events after this time are read next.
    #[serde(default, with = "firestore::serialize_as_optional_timestamp")]
    pub events_after: Option<Timestamp>,
    /// How the latest outbound half ended.
    #[serde(default)]
    pub outbound: Option<ReconcileResult>,
    /// How the latest inbound half ended.
    #[serde(default)]
    pub inbound: Option<ReconcileResult>,
}

impl Reconciliation {
    /// A tenant's record before its first reconciliation.
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            last_scheduled_at: None,
            outbound_since: None,
            events_after: None,
            outbound: None,
            inbound: None,
        }
    }
}
