//! Data sources (titles unique within a namespace → 400) and their records: one at a time (204) or in bulk jobs
//! (204; at most 500 records, 4 MB per request, 512 KB per record).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::jsonapi::{ApiError, Data, Doc, Here, ResourceId, document, expect_type, paginate};
use super::state::{Ctx, State as Account, ulid};

const MAX_BULK_RECORDS: usize = 500;
const MAX_RECORD_BYTES: usize = 512 * 1024;
const MAX_BULK_BYTES: usize = 4 * 1024 * 1024;

/// A data source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataSource {
    /// 26-character ULID.
    pub id: String,
    /// Unique title, e.g. `Omneo Rewards`.
    pub title: String,
    /// `private` or `shared`.
    pub visibility: String,
    /// Description (empty when none was given, as Klaviyo reports it).
    pub description: String,
    /// The namespace (Klaviyo's default is `custom-objects`).
    pub namespace: String,
}

impl DataSource {
    fn resource(&self, here: &Here) -> Value {
        json!({
            "type": "data-source",
            "id": self.id,
            "attributes": {
                "title": self.title,
                "visibility": self.visibility,
                "description": self.description,
                "namespace": self.namespace
            },
            "links": {"self": here.link(&format!("/api/data-sources/{}/", self.id))}
        })
    }
}

/// One record written to a data source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataSourceRecord {
    /// The data source it was written to.
    pub data_source_id: String,
    /// The `record` object as sent.
    pub record: Map<String, Value>,
}

#[derive(Deserialize)]
pub(crate) struct CreateDocument {
    data: CreateData,
}

#[derive(Deserialize)]
struct CreateData {
    #[serde(rename = "type")]
    kind: String,
    attributes: CreateAttributes,
}

#[derive(Deserialize)]
struct CreateAttributes {
    title: String,
    #[serde(default = "private")]
    visibility: String,
    /// `null` and absent both mean none.
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "custom_objects")]
    namespace: String,
}

fn private() -> String {
    "private".into()
}

fn custom_objects() -> String {
    "custom-objects".into()
}

/// `GET /api/data-sources` — page size ≤ 100 (default 20).
pub(crate) async fn list(State(ctx): State<Ctx>, here: Here) -> Result<Response, ApiError> {
    let all = ctx.lock().data_sources.clone();
    let page = paginate(&all, &here, 20, 100)?;
    let data: Vec<Value> = page.items.iter().map(|d| d.resource(&here)).collect();
    Ok(document(
        StatusCode::OK,
        &json!({ "data": data, "links": page.links }),
    ))
}

/// `POST /api/data-sources` — 201; a title already used in the namespace is 400.
pub(crate) async fn create(
    State(ctx): State<Ctx>,
    here: Here,
    Doc(doc): Doc<CreateDocument>,
) -> Result<Response, ApiError> {
    expect_type(&doc.data.kind, "data-source", "/data/type")?;
    let attributes = doc.data.attributes;
    if attributes.title.trim().is_empty() {
        return Err(ApiError::invalid(
            "A title is required.",
            "/data/attributes/title",
        ));
    }
    if !["private", "shared"].contains(&attributes.visibility.as_str()) {
        return Err(ApiError::invalid(
            "visibility must be private or shared.",
            "/data/attributes/visibility",
        ));
    }
    let mut state = ctx.lock();
    if state
        .data_sources
        .iter()
        .any(|d| d.title == attributes.title && d.namespace == attributes.namespace)
    {
        return Err(ApiError::invalid(
            format!(
                "A data source titled '{}' already exists.",
                attributes.title
            ),
            "/data/attributes/title",
        ));
    }
    let source = DataSource {
        id: ulid(),
        title: attributes.title,
        visibility: attributes.visibility,
        description: attributes.description.unwrap_or_default(),
        namespace: attributes.namespace,
    };
    state.data_sources.push(source.clone());
    Ok(document(
        StatusCode::CREATED,
        &json!({ "data": source.resource(&here) }),
    ))
}

/// `GET /api/data-sources/{id}`.
pub(crate) async fn get_one(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    here: Here,
) -> Result<Response, ApiError> {
    let source = ctx.lock().data_source(&id)?.clone();
    Ok(document(
        StatusCode::OK,
        &json!({ "data": source.resource(&here) }),
    ))
}

/// `DELETE /api/data-sources/{id}` — 204.
pub(crate) async fn delete(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut state = ctx.lock();
    state.data_source(&id)?;
    state.data_sources.retain(|d| d.id != id);
    state.records.retain(|r| r.data_source_id != id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl Account {
    fn data_source(&self, id: &str) -> Result<&DataSource, ApiError> {
        self.data_sources
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| ApiError::not_found(format!("Data source {id} not found.")))
    }
}

#[derive(Deserialize)]
pub(crate) struct RecordJobDocument {
    data: RecordJobData,
}

#[derive(Deserialize)]
struct RecordJobData {
    #[serde(rename = "type")]
    kind: String,
    attributes: RecordJobAttributes,
    relationships: RecordJobRelationships,
}

#[derive(Deserialize)]
struct RecordJobAttributes {
    #[serde(rename = "data-source-record", default)]
    one: Option<Data<RecordData>>,
    #[serde(rename = "data-source-records", default)]
    many: Option<Data<Vec<RecordData>>>,
}

#[derive(Deserialize)]
struct RecordJobRelationships {
    #[serde(rename = "data-source")]
    data_source: Data<ResourceId>,
}

#[derive(Deserialize)]
struct RecordData {
    #[serde(rename = "type")]
    kind: String,
    attributes: RecordAttributes,
}

#[derive(Deserialize)]
struct RecordAttributes {
    record: Map<String, Value>,
}

/// Checks a job's records and target; stores them.
fn store_records(
    ctx: &Ctx,
    data: RecordJobData,
    expected_type: &str,
    records: Vec<(RecordData, String)>,
) -> Result<Response, ApiError> {
    expect_type(&data.kind, expected_type, "/data/type")?;
    expect_type(
        &data.relationships.data_source.data.kind,
        "data-source",
        "/data/relationships/data-source/data/type",
    )?;
    for (record, pointer) in &records {
        expect_type(
            &record.kind,
            "data-source-record",
            &format!("{pointer}/type"),
        )?;
        let size = Value::Object(record.attributes.record.clone())
            .to_string()
            .len();
        if size > MAX_RECORD_BYTES {
            return Err(ApiError::too_large(format!(
                "A record may be at most {MAX_RECORD_BYTES} bytes."
            )));
        }
    }
    let id = data.relationships.data_source.data.id;
    let mut state = ctx.lock();
    state.data_source(&id).map_err(|_| {
        ApiError::invalid(
            format!("Data source {id} does not exist."),
            "/data/relationships/data-source/data/id",
        )
    })?;
    state
        .records
        .extend(records.into_iter().map(|(record, _)| DataSourceRecord {
            data_source_id: id.clone(),
            record: record.attributes.record,
        }));
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/data-source-record-create-jobs` — 204.
pub(crate) async fn create_record(
    State(ctx): State<Ctx>,
    Doc(doc): Doc<RecordJobDocument>,
) -> Result<Response, ApiError> {
    let pointer = "/data/attributes/data-source-record";
    let mut data = doc.data;
    let record = data
        .attributes
        .one
        .take()
        .ok_or_else(|| ApiError::invalid("data-source-record is required.", pointer))?;
    store_records(
        &ctx,
        data,
        "data-source-record-create-job",
        vec![(record.data, format!("{pointer}/data"))],
    )
}

/// `POST /api/data-source-record-bulk-create-jobs` — 204; ≤ 500 records, ≤ 4 MB.
pub(crate) async fn bulk_create_records(
    State(ctx): State<Ctx>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if body.len() > MAX_BULK_BYTES {
        return Err(ApiError::too_large(format!(
            "A bulk job may be at most {MAX_BULK_BYTES} bytes."
        )));
    }
    let doc: RecordJobDocument = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("Invalid JSON:API document: {e}"), "/data"))?;
    let pointer = "/data/attributes/data-source-records/data";
    let mut data = doc.data;
    let records = data
        .attributes
        .many
        .take()
        .ok_or_else(|| ApiError::invalid("data-source-records is required.", pointer))?
        .data;
    if records.is_empty() || records.len() > MAX_BULK_RECORDS {
        return Err(ApiError::invalid(
            format!("Between 1 and {MAX_BULK_RECORDS} records are allowed per job."),
            pointer,
        ));
    }
    let records = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| (r, format!("{pointer}/{i}")))
        .collect();
    store_records(&ctx, data, "data-source-record-bulk-create-job", records)
}
