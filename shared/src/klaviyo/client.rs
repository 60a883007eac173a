//! The Klaviyo REST client: every call the product makes (klaviyo.md "Endpoints used", "Bulk",
//! "Events and metrics").

use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::models::{
    BulkImport, BulkImportJob, DataSource, DeletionTarget, Document, EventPage, EventQuery,
    Identifier, ImportError, ImportedProfile, KlaviyoEvent, List, Metric, NewDataSource, NewEvent,
    NewWebhook, Profile, ProfileFilter, ProfileUpsert, Resource, SubscribeJob, UnsubscribeJob,
    Webhook, WebhookTopic, WebhookUpdate, any, bulk_record_document, equals, record_document,
};
use crate::config::ApiRevision;
use crate::domain::{KlaviyoProfileId, OmneoProfileId};
use crate::remote::{
    Answer, ErrorKind, Idempotency, Remote, RemoteError, RetryPolicy, Service, bearer, endpoint,
    found,
};

/// The JSON:API media type Klaviyo speaks.
const JSON_API: &str = "application/vnd.api+json";

/// The most values Klaviyo takes in one `any(external_id,[…])` filter.
const EXTERNAL_IDS_PER_SEARCH: usize = 100;

/// A Klaviyo API client. Each call takes the tenant's OAuth access token; refreshing it on a
/// [`Disposition::Reauthorize`](crate::remote::Disposition::Reauthorize) is the caller's job.
#[derive(Debug, Clone)]
pub struct KlaviyoClient {
    remote: Remote,
    api_url: Url,
    revision: HeaderValue,
}

impl KlaviyoClient {
    /// A client of the API at `api_url` (`https://a.klaviyo.com`), pinned to `revision`.
    pub fn new(
        http: reqwest::Client,
        api_url: Url,
        revision: &ApiRevision,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            remote: Remote::new(http, retry, Service::Klaviyo),
            api_url,
            revision: HeaderValue::from_str(revision.as_str())
                .expect("a parsed revision is digits, dashes and `.pre`"),
        }
    }

    /// `GET /api/accounts`: the id of the account the token belongs to.
    pub async fn account_id(&self, token: &SecretString) -> Result<String, RemoteError> {
        let answer = self.get_raw(token, self.url(&["accounts"])).await?;
        let document: Document<Vec<Identifier>> = answer.json()?;
        document
            .data
            .into_iter()
            .next()
            .map(|account| account.id)
            .ok_or_else(|| answer.invalid("no account in the answer"))
    }

    /// `GET /api/data-sources`, every page.
    pub async fn data_sources(&self, token: &SecretString) -> Result<Vec<DataSource>, RemoteError> {
        self.all_pages(token, self.url(&["data-sources"])).await
    }

    /// `POST /api/data-sources` (a duplicate title is a 400; not retried on an unknown outcome).
    pub async fn create_data_source(
        &self,
        token: &SecretString,
        source: &NewDataSource,
    ) -> Result<DataSource, RemoteError> {
        self.create(token, "data-sources", &source.to_document())
            .await
    }

    /// `GET /api/data-sources/{id}`; `None` when it does not exist.
    pub async fn data_source(
        &self,
        token: &SecretString,
        id: &str,
    ) -> Result<Option<DataSource>, RemoteError> {
        self.get_one(token, self.url(&["data-sources", id])).await
    }

    /// `DELETE /api/data-sources/{id}`; an already deleted one counts as deleted.
    pub async fn delete_data_source(
        &self,
        token: &SecretString,
        id: &str,
    ) -> Result<(), RemoteError> {
        self.delete(token, self.url(&["data-sources", id])).await
    }

    /// `GET /api/webhooks`, every page, with their topics.
    pub async fn webhooks(&self, token: &SecretString) -> Result<Vec<Webhook>, RemoteError> {
        let mut url = self.url(&["webhooks"]);
        url.query_pairs_mut()
            .append_pair("include", "webhook-topics");
        self.all_pages(token, url).await
    }

    /// `POST /api/webhooks` (at most 10 per account; not retried on an unknown outcome — find
    /// ours by name before creating again).
    pub async fn create_webhook(
        &self,
        token: &SecretString,
        webhook: &NewWebhook,
    ) -> Result<Webhook, RemoteError> {
        self.create(token, "webhooks", &webhook.to_document()).await
    }

    /// `GET /api/webhooks/{id}` with its topics; `None` when it does not exist.
    pub async fn webhook(
        &self,
        token: &SecretString,
        id: &str,
    ) -> Result<Option<Webhook>, RemoteError> {
        let mut url = self.url(&["webhooks", id]);
        url.query_pairs_mut()
            .append_pair("include", "webhook-topics");
        self.get_one(token, url).await
    }

    /// `PATCH /api/webhooks/{id}`.
    pub async fn update_webhook(
        &self,
        token: &SecretString,
        id: &str,
        update: &WebhookUpdate,
    ) -> Result<Webhook, RemoteError> {
        let url = self.url(&["webhooks", id]);
        let body = update.to_document(id);
        let answer = self
            .send(token, Method::PATCH, url, Some(&body), Idempotency::Safe)
            .await?;
        Ok(answer.json::<Document<Webhook>>()?.data)
    }

    /// `DELETE /api/webhooks/{id}`; an already deleted one counts as deleted.
    pub async fn delete_webhook(&self, token: &SecretString, id: &str) -> Result<(), RemoteError> {
        self.delete(token, self.url(&["webhooks", id])).await
    }

    /// `GET /api/webhook-topics`.
    pub async fn webhook_topics(
        &self,
        token: &SecretString,
    ) -> Result<Vec<WebhookTopic>, RemoteError> {
        self.all_pages(token, self.url(&["webhook-topics"])).await
    }

    /// `POST /api/profile-import`: creates (201) or updates (200) a profile. An upsert, so it is
    /// retried; a 409 `duplicate_profile` is [`ErrorKind::DuplicateProfile`](crate::remote::ErrorKind::DuplicateProfile).
    pub async fn import_profile(
        &self,
        token: &SecretString,
        profile: &ProfileUpsert,
    ) -> Result<ImportedProfile, RemoteError> {
        let url = self.url(&["profile-import"]);
        let answer = self
            .send(
                token,
                Method::POST,
                url,
                Some(&profile.to_document()),
                Idempotency::Safe,
            )
            .await?;
        let created = answer.status == StatusCode::CREATED;
        let id = answer.json::<Document<Identifier>>()?.data.id;
        let id = KlaviyoProfileId::parse(id)
            .map_err(|e| answer.invalid(format!("the imported profile's id: {e}")))?;
        Ok(ImportedProfile { id, created })
    }

    /// `GET /api/profiles/{id}` with its subscriptions; `None` when it does not exist.
    pub async fn profile(
        &self,
        token: &SecretString,
        id: &KlaviyoProfileId,
    ) -> Result<Option<Profile>, RemoteError> {
        let mut url = self.url(&["profiles", id.as_str()]);
        with_subscriptions(&mut url);
        self.get_one(token, url).await
    }

    /// `GET /api/profiles?filter=equals(…)` with their subscriptions: the first page of matches
    /// (identifiers match a handful of profiles at most).
    pub async fn find_profiles(
        &self,
        token: &SecretString,
        filter: &ProfileFilter,
    ) -> Result<Vec<Profile>, RemoteError> {
        let mut url = self.url(&["profiles"]);
        url.query_pairs_mut()
            .append_pair("filter", &filter.to_query());
        with_subscriptions(&mut url);
        Ok(self.get::<Document<Vec<Profile>>>(token, url).await?.data)
    }

    /// `GET /api/profiles?filter=any(external_id,[…])` with their subscriptions, every page: the
    /// profiles holding these Omneo ids (an id no profile holds is simply not matched). Klaviyo
    /// takes at most 100 values in one `any`, so longer lists are asked for 100 at a time.
    pub async fn find_profiles_by_external_ids(
        &self,
        token: &SecretString,
        ids: &[OmneoProfileId],
    ) -> Result<Vec<Profile>, RemoteError> {
        let mut profiles = Vec::new();
        for chunk in ids.chunks(EXTERNAL_IDS_PER_SEARCH) {
            let values: Vec<&str> = chunk.iter().map(OmneoProfileId::as_str).collect();
            let mut url = self.url(&["profiles"]);
            url.query_pairs_mut()
                .append_pair("filter", &any("external_id", &values))
                .append_pair("page[size]", "100");
            with_subscriptions(&mut url);
            profiles.extend(self.all_pages(token, url).await?);
        }
        Ok(profiles)
    }

    /// `POST /api/profile-bulk-import-jobs` (202): queues a bulk import and answers the job.
    /// Not retried on an unknown outcome: a repeat would queue the import a second time.
    pub async fn create_bulk_import(
        &self,
        token: &SecretString,
        job: &BulkImport,
    ) -> Result<BulkImportJob, RemoteError> {
        self.create(token, "profile-bulk-import-jobs", &job.to_document())
            .await
    }

    /// `GET /api/profile-bulk-import-jobs/{id}`: its status and counts.
    pub async fn bulk_import_job(
        &self,
        token: &SecretString,
        id: &str,
    ) -> Result<BulkImportJob, RemoteError> {
        let url = self.url(&["profile-bulk-import-jobs", id]);
        Ok(self.get::<Document<BulkImportJob>>(token, url).await?.data)
    }

    /// `GET /api/profile-bulk-import-jobs/{id}/import-errors`, every page: the profiles it
    /// could not import so far.
    pub async fn bulk_import_errors(
        &self,
        token: &SecretString,
        id: &str,
    ) -> Result<Vec<ImportError>, RemoteError> {
        let mut url = self.url(&["profile-bulk-import-jobs", id, "import-errors"]);
        url.query_pairs_mut().append_pair("page[size]", "100");
        self.all_pages(token, url).await
    }

    /// `POST /api/profile-subscription-bulk-create-jobs` (202). Setting a state, so retried.
    pub async fn subscribe(
        &self,
        token: &SecretString,
        job: &SubscribeJob,
    ) -> Result<(), RemoteError> {
        self.post_job(
            token,
            "profile-subscription-bulk-create-jobs",
            &job.to_document(),
            Idempotency::Safe,
        )
        .await
    }

    /// `POST /api/profile-subscription-bulk-delete-jobs` (202). Setting a state, so retried.
    pub async fn unsubscribe(
        &self,
        token: &SecretString,
        job: &UnsubscribeJob,
    ) -> Result<(), RemoteError> {
        self.post_job(
            token,
            "profile-subscription-bulk-delete-jobs",
            &job.to_document(),
            Idempotency::Safe,
        )
        .await
    }

    /// `GET /api/lists/{id}`; `None` when it does not exist.
    pub async fn list(&self, token: &SecretString, id: &str) -> Result<Option<List>, RemoteError> {
        self.get_one(token, self.url(&["lists", id])).await
    }

    /// Whether a profile with this email is a member of the list
    /// (`GET /api/lists/{id}/relationships/profiles?filter=equals(email,…)`).
    pub async fn list_has_email(
        &self,
        token: &SecretString,
        list_id: &str,
        email: &str,
    ) -> Result<bool, RemoteError> {
        let mut url = self.url(&["lists", list_id, "relationships", "profiles"]);
        url.query_pairs_mut()
            .append_pair("filter", &equals("email", email));
        let members: Document<Vec<Identifier>> = self.get(token, url).await?;
        Ok(!members.data.is_empty())
    }

    /// `POST /api/events` (202). Retried blindly only with a `unique_id` (Klaviyo dedupes on it).
    pub async fn create_event(
        &self,
        token: &SecretString,
        event: &NewEvent,
    ) -> Result<(), RemoteError> {
        self.create_event_document(token, &event.to_document())
            .await
    }

    /// `POST /api/events` with a ready-made event document (a target's body, product.md §6.5);
    /// retried blindly only when `data.attributes.unique_id` is set.
    pub async fn create_event_document(
        &self,
        token: &SecretString,
        document: &Value,
    ) -> Result<(), RemoteError> {
        let unique = document
            .pointer("/data/attributes/unique_id")
            .is_some_and(|id| !id.is_null());
        let idempotency = if unique {
            Idempotency::Safe
        } else {
            Idempotency::Unsafe
        };
        self.post_job(token, "events", document, idempotency).await
    }

    /// `GET /api/metrics`, every page (needs `metrics:read`).
    pub async fn metrics(&self, token: &SecretString) -> Result<Vec<Metric>, RemoteError> {
        self.all_pages(token, self.url(&["metrics"])).await
    }

    /// One page of `GET /api/events` (needs `events:read`), oldest first: the first page of
    /// `query` (`filter` = [`EventQuery::filter`], `sort=datetime`, `page[size]`), or, with
    /// `next`, the page a previous one's [`EventPage::next`] names (which carries the query;
    /// like every `links.next`, it must stay on the API's origin, so the token never leaves it).
    pub async fn events_page(
        &self,
        token: &SecretString,
        query: &EventQuery,
        next: Option<&str>,
    ) -> Result<EventPage, RemoteError> {
        let url = match next {
            Some(next) => self.api_link(next).map_err(|why| {
                let events = self.url(&["events"]);
                self.remote
                    .refuse(&Method::GET, &events, ErrorKind::InvalidRequest(why))
            })?,
            None => {
                let mut url = self.url(&["events"]);
                url.query_pairs_mut()
                    .append_pair("filter", &query.filter())
                    .append_pair("sort", "datetime")
                    .append_pair("page[size]", &query.page_size.to_string());
                url
            }
        };
        let answer = self.get_raw(token, url).await?;
        let page: Document<Vec<KlaviyoEvent>> = answer.json()?;
        let next = match page.links.next {
            Some(next) => {
                self.api_link(&next).map_err(|why| answer.invalid(why))?;
                Some(next)
            }
            None => None,
        };
        Ok(EventPage {
            events: page.data,
            next,
        })
    }

    /// `POST /api/data-source-record-create-jobs`: one record (which carries a stable `id`, so a
    /// repeat re-ingests the same record).
    pub async fn create_data_source_record(
        &self,
        token: &SecretString,
        data_source_id: &str,
        record: &Value,
    ) -> Result<(), RemoteError> {
        let body = record_document(data_source_id, record);
        self.post_job(
            token,
            "data-source-record-create-jobs",
            &body,
            Idempotency::Safe,
        )
        .await
    }

    /// `POST /api/data-source-record-bulk-create-jobs`: up to 500 records.
    pub async fn create_data_source_records(
        &self,
        token: &SecretString,
        data_source_id: &str,
        records: &[Value],
    ) -> Result<(), RemoteError> {
        let body = bulk_record_document(data_source_id, records);
        self.post_job(
            token,
            "data-source-record-bulk-create-jobs",
            &body,
            Idempotency::Safe,
        )
        .await
    }

    /// `POST /api/data-privacy-deletion-jobs` (202): delete a profile's data. Deleting twice is
    /// harmless, so retried.
    pub async fn request_deletion(
        &self,
        token: &SecretString,
        target: &DeletionTarget,
    ) -> Result<(), RemoteError> {
        self.post_job(
            token,
            "data-privacy-deletion-jobs",
            &target.to_document(),
            Idempotency::Safe,
        )
        .await
    }

    /// `{api_url}/api/{segments…}`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        endpoint(&self.api_url, ["api"].iter().chain(segments).copied())
    }

    async fn send(
        &self,
        token: &SecretString,
        method: Method,
        url: Url,
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<Answer, RemoteError> {
        let mut headers = HeaderMap::new();
        let authorization =
            bearer(token).map_err(|kind| self.remote.refuse(&method, &url, kind))?;
        headers.insert(header::AUTHORIZATION, authorization);
        headers.insert("revision", self.revision.clone());
        headers.insert(header::ACCEPT, HeaderValue::from_static(JSON_API));
        let body = body.map(|b| {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_API));
            b.to_string().into_bytes()
        });
        self.remote
            .send(method, url, &headers, body, idempotency)
            .await
    }

    /// `POST /api/{path}` creating a resource, answered as the created resource. Not retried on
    /// an unknown outcome: a repeat would create a second one.
    async fn create<T: DeserializeOwned>(
        &self,
        token: &SecretString,
        path: &str,
        body: &Value,
    ) -> Result<T, RemoteError> {
        let url = self.url(&[path]);
        let answer = self
            .send(token, Method::POST, url, Some(body), Idempotency::Unsafe)
            .await?;
        Ok(answer.json::<Document<T>>()?.data)
    }

    async fn get_raw(&self, token: &SecretString, url: Url) -> Result<Answer, RemoteError> {
        self.send(token, Method::GET, url, None, Idempotency::Safe)
            .await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        token: &SecretString,
        url: Url,
    ) -> Result<T, RemoteError> {
        self.get_raw(token, url).await?.json()
    }

    async fn get_one<A: DeserializeOwned, I: DeserializeOwned>(
        &self,
        token: &SecretString,
        url: Url,
    ) -> Result<Option<Resource<A, I>>, RemoteError> {
        let document = found(self.get::<Document<Resource<A, I>>>(token, url).await)?;
        Ok(document.map(|d| d.data))
    }

    async fn delete(&self, token: &SecretString, url: Url) -> Result<(), RemoteError> {
        found(
            self.send(token, Method::DELETE, url, None, Idempotency::Safe)
                .await,
        )
        .map(drop)
    }

    async fn post_job(
        &self,
        token: &SecretString,
        path: &str,
        body: &Value,
        idempotency: Idempotency,
    ) -> Result<(), RemoteError> {
        let url = self.url(&[path]);
        self.send(token, Method::POST, url, Some(body), idempotency)
            .await
            .map(drop)
    }

    /// Every item of a collection, following `links.next` (only to the API's own origin, so
    /// the token never leaves it) until it is `null`.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        token: &SecretString,
        first: Url,
    ) -> Result<Vec<T>, RemoteError> {
        let mut resources = Vec::new();
        let mut url = first;
        loop {
            let answer = self.get_raw(token, url.clone()).await?;
            let page: Document<Vec<T>> = answer.json()?;
            resources.extend(page.data);
            let Some(next) = page.links.next else {
                return Ok(resources);
            };
            let next = self.api_link(&next).map_err(|why| answer.invalid(why))?;
            if next == url {
                return Err(answer.invalid("links.next points at the same page"));
            }
            url = next;
        }
    }

    /// A `links.next` URL, provided it stays on the API's origin (so the token never leaves it);
    /// else why not.
    fn api_link(&self, link: &str) -> Result<Url, String> {
        let url = Url::parse(link).map_err(|e| format!("links.next is not a URL: {e}"))?;
        if url.origin() == self.api_url.origin() {
            Ok(url)
        } else {
            Err("links.next points away from the API".into())
        }
    }
}

/// Adds `additional-fields[profile]=subscriptions`.
fn with_subscriptions(url: &mut Url) {
    url.query_pairs_mut()
        .append_pair("additional-fields[profile]", "subscriptions");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::ErrorKind;

    fn client(api_url: &str) -> KlaviyoClient {
        KlaviyoClient::new(
            reqwest::Client::new(),
            api_url.parse().unwrap(),
            &ApiRevision::parse("2026-07-15").unwrap(),
            RetryPolicy::no_retries(),
        )
    }

    #[test]
    fn urls_are_built_under_the_api_root_with_escaped_ids() {
        let c = client("https://a.klaviyo.com");
        assert_eq!(
            c.url(&["profiles", "01H/../x"]).as_str(),
            "https://a.klaviyo.com/api/profiles/01H%2F..%2Fx"
        );
        let prefixed = client("http://127.0.0.1:9/klaviyo/");
        assert_eq!(
            prefixed.url(&["accounts"]).as_str(),
            "http://127.0.0.1:9/klaviyo/api/accounts"
        );
    }

    #[test]
    fn an_unusable_token_fails_without_echoing_it() {
        let c = client("https://a.klaviyo.com");
        let token = SecretString::from("secret\nvalue");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let error = runtime.block_on(c.account_id(&token)).unwrap_err();
        assert!(matches!(error.kind, ErrorKind::InvalidRequest(_)));
        assert_eq!(error.attempts, 0);
        assert!(!error.to_string().contains("secret"), "{error}");
    }
}
