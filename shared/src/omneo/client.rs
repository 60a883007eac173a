//! The Omneo client: Admin API (`/api/v3`) and ID API (`/id/api/v1`) calls the product makes.

use http::{HeaderMap, HeaderValue, Method, header};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use url::Url;

use super::models::{
    Comms, Created, IdToken, Identity, NewBenefit, NewInteraction, NewReward, NewWebhook,
    OmneoTime, Page, Profile, ProfileListing, ProfileUpdate, Webhook, WebhookUpdate,
};
use crate::domain::OmneoProfileId;
use crate::remote::{
    Answer, Idempotency, Remote, RemoteError, RetryPolicy, Service, bearer, endpoint, found,
};

/// `{"data": …}`.
#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

/// An Omneo client for one tenant, holding that tenant's API token.
///
/// A 401 means the token is bad: [`Disposition::Permanent`](crate::remote::Disposition::Permanent)
/// with a message saying to replace it (Omneo tokens cannot be refreshed).
#[derive(Debug, Clone)]
pub struct OmneoClient {
    remote: Remote,
    base_url: Url,
    token: SecretString,
}

impl OmneoClient {
    /// A client of the tenant at `base_url` (`https://api.{tenant}.getomneo.com`; calls go to
    /// `/api/v3/…` and `/id/api/v1/…` below it).
    pub fn new(
        http: reqwest::Client,
        base_url: Url,
        token: SecretString,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            remote: Remote::new(http, retry, Service::Omneo),
            base_url,
            token,
        }
    }

    /// `GET /profiles/{id}`; `None` when it does not exist (treat as deleted).
    pub async fn profile(&self, id: &OmneoProfileId) -> Result<Option<Profile>, RemoteError> {
        found(
            self.get::<Data<Profile>>(self.api(&["profiles", id.as_str()]))
                .await,
        )
        .map(|d| d.map(|d| d.data))
    }

    /// `GET /profiles?filter[email]=…`: the first page of profiles with this email.
    pub async fn find_profiles_by_email(&self, email: &str) -> Result<Vec<Profile>, RemoteError> {
        let mut url = self.api(&["profiles"]);
        url.query_pairs_mut().append_pair("filter[email]", email);
        Ok(self.get::<Page<Profile>>(url).await?.data)
    }

    /// One page of the listing a backfill walks: `GET /profiles?page[size]=…&page[number]=…
    /// &sort=created_at`, plus `filter[updated_at][gte]=…` (`Y-m-d H:i:s` UTC) when
    /// `updated_since` is set.
    ///
    /// Sorted by `created_at` on purpose: paging is by offset, and every write to a profile
    /// (an identity this very run writes back included) bumps its `updated_at`, so pages sorted by
    /// `updated_at` would shift under the run and skip or repeat profiles. A profile's
    /// `created_at` does not move; one created mid-run lands on a later page.
    pub async fn profiles_page(
        &self,
        query: &ProfileListing,
    ) -> Result<Page<Profile>, RemoteError> {
        let mut url = self.api(&["profiles"]);
        {
            let mut pairs = url.query_pairs_mut();
            pairs
                .append_pair("page[size]", &query.size.to_string())
                .append_pair("page[number]", &query.page.to_string())
                .append_pair("sort", "created_at");
            if let Some(since) = query.updated_since {
                pairs.append_pair("filter[updated_at][gte]", &OmneoTime(since).to_string());
            }
        }
        self.get(url).await
    }

    /// `POST /profiles/search-id {"type": handle, "id": identifier}`: the profile holding that
    /// identity; `None` when there is none. A read, so retried.
    pub async fn find_profile_by_identity(
        &self,
        handle: &str,
        identifier: &str,
    ) -> Result<Option<Profile>, RemoteError> {
        let body = json!({"type": handle, "id": identifier});
        let url = self.api(&["profiles", "search-id"]);
        let answer = found(
            self.send(Method::POST, url, Some(&body), Idempotency::Safe)
                .await,
        )?;
        answer
            .map(|a| a.json::<Data<Profile>>().map(|d| d.data))
            .transpose()
    }

    /// `PUT /profiles/{id}`: a partial update.
    pub async fn update_profile(
        &self,
        id: &OmneoProfileId,
        update: &ProfileUpdate,
    ) -> Result<Profile, RemoteError> {
        self.put(self.api(&["profiles", id.as_str()]), &json!(update))
            .await
    }

    /// `GET /profiles/{id}/attributes/comms`.
    pub async fn comms(&self, profile_id: &OmneoProfileId) -> Result<Comms, RemoteError> {
        let url = self.api(&["profiles", profile_id.as_str(), "attributes", "comms"]);
        Ok(self.get::<Data<Comms>>(url).await?.data)
    }

    /// `PUT /profiles/{id}/attributes/comms` with the fields that are set; returns the result.
    pub async fn update_comms(
        &self,
        profile_id: &OmneoProfileId,
        comms: &Comms,
    ) -> Result<Comms, RemoteError> {
        let url = self.api(&["profiles", profile_id.as_str(), "attributes", "comms"]);
        self.put(url, &json!(comms)).await
    }

    /// `GET /profiles/{id}/identities`.
    pub async fn identities(
        &self,
        profile_id: &OmneoProfileId,
    ) -> Result<Vec<Identity>, RemoteError> {
        let url = self.api(&["profiles", profile_id.as_str(), "identities"]);
        Ok(self.get::<Data<Vec<Identity>>>(url).await?.data)
    }

    /// Sets the profile's identity with this handle: `PUT /profiles/{id}/identities/{handle}`,
    /// and `POST /profiles/{id}/identities` when it does not exist yet (a 422 means another
    /// profile holds the identifier).
    pub async fn upsert_identity(
        &self,
        profile_id: &OmneoProfileId,
        handle: &str,
        identifier: &str,
    ) -> Result<Identity, RemoteError> {
        let url = self.api(&["profiles", profile_id.as_str(), "identities", handle]);
        let body = json!({"identifier": identifier});
        if let Some(identity) = found(self.put::<Identity>(url, &body).await)? {
            return Ok(identity);
        }
        let url = self.api(&["profiles", profile_id.as_str(), "identities"]);
        let body = json!({"handle": handle, "identifier": identifier});
        let answer = self
            .send(Method::POST, url, Some(&body), Idempotency::Unsafe)
            .await?;
        Ok(answer.json::<Data<Identity>>()?.data)
    }

    /// `DELETE /profiles/{id}/identities/{handle}`; an absent one counts as deleted.
    pub async fn delete_identity(
        &self,
        profile_id: &OmneoProfileId,
        handle: &str,
    ) -> Result<(), RemoteError> {
        self.delete(self.api(&["profiles", profile_id.as_str(), "identities", handle]))
            .await
    }

    /// `GET /webhooks?filter[namespace]=…`, every page.
    pub async fn webhooks(&self, namespace: &str) -> Result<Vec<Webhook>, RemoteError> {
        self.webhooks_where("filter[namespace]", namespace).await
    }

    /// `GET /webhooks?filter[trigger]=…`, every page, whatever their namespace.
    pub async fn webhooks_with_trigger(&self, trigger: &str) -> Result<Vec<Webhook>, RemoteError> {
        self.webhooks_where("filter[trigger]", trigger).await
    }

    /// `GET /webhooks?{filter}={value}`, every page.
    async fn webhooks_where(&self, filter: &str, value: &str) -> Result<Vec<Webhook>, RemoteError> {
        let mut webhooks = Vec::new();
        for number in 1.. {
            let mut url = self.api(&["webhooks"]);
            url.query_pairs_mut()
                .append_pair(filter, value)
                .append_pair("page[number]", &number.to_string());
            let page: Page<Webhook> = self.get(url).await?;
            let last = page.is_last();
            webhooks.extend(page.data);
            if last {
                break;
            }
        }
        Ok(webhooks)
    }

    /// `POST /webhooks` (not retried on an unknown outcome: list before creating again).
    pub async fn create_webhook(&self, webhook: &NewWebhook) -> Result<Webhook, RemoteError> {
        self.create(self.api(&["webhooks"]), &json!(webhook)).await
    }

    /// `PUT /webhooks/{id}`: a partial update.
    pub async fn update_webhook(
        &self,
        id: &str,
        update: &WebhookUpdate,
    ) -> Result<Webhook, RemoteError> {
        self.put(self.api(&["webhooks", id]), &json!(update)).await
    }

    /// `DELETE /webhooks/{id}`; an absent one counts as deleted.
    pub async fn delete_webhook(&self, id: &str) -> Result<(), RemoteError> {
        self.delete(self.api(&["webhooks", id])).await
    }

    /// `POST /interactions`. Not retried after an unknown outcome (a repeat records it twice).
    pub async fn create_interaction(
        &self,
        interaction: &NewInteraction,
    ) -> Result<Created, RemoteError> {
        self.create(self.api(&["interactions"]), &interaction.to_body())
            .await
    }

    /// `POST /rewards`. Not retried after an unknown outcome (a repeat issues it twice).
    pub async fn create_reward(&self, reward: &NewReward) -> Result<Created, RemoteError> {
        self.create(self.api(&["rewards"]), &json!(reward)).await
    }

    /// `POST /benefits`. Not retried after an unknown outcome (a repeat issues it twice).
    pub async fn create_benefit(&self, benefit: &NewBenefit) -> Result<Created, RemoteError> {
        self.create(self.api(&["benefits"]), &json!(benefit)).await
    }

    /// Whether the profile already holds a reward with this `external_id`
    /// (`GET /profiles/{id}/rewards`): how a retry after an unknown outcome avoids a second one.
    pub async fn has_reward(
        &self,
        profile_id: &OmneoProfileId,
        external_id: &str,
    ) -> Result<bool, RemoteError> {
        self.holds(profile_id, "rewards", external_id).await
    }

    /// Whether the profile already holds a benefit with this `external_id`
    /// (`GET /profiles/{id}/benefits`).
    pub async fn has_benefit(
        &self,
        profile_id: &OmneoProfileId,
        external_id: &str,
    ) -> Result<bool, RemoteError> {
        self.holds(profile_id, "benefits", external_id).await
    }

    /// Whether the profile's `part` (rewards or benefits) lists an item with this `external_id`.
    /// The filter narrows the page where Omneo supports it; the match is checked here either way.
    async fn holds(
        &self,
        profile_id: &OmneoProfileId,
        part: &str,
        external_id: &str,
    ) -> Result<bool, RemoteError> {
        #[derive(Deserialize)]
        struct Item {
            #[serde(default)]
            external_id: Option<String>,
        }
        let mut url = self.api(&["profiles", profile_id.as_str(), part]);
        url.query_pairs_mut()
            .append_pair("filter[external_id]", external_id)
            .append_pair("page[size]", "100");
        let items = self.get::<Page<Item>>(url).await?.data;
        Ok(items
            .iter()
            .any(|item| item.external_id.as_deref() == Some(external_id)))
    }

    /// `POST {ID API}/auth/token`: a short-lived ID token for a profile id, or for an identity
    /// identifier with its handle. A second token is harmless, so retried.
    pub async fn mint_id_token(
        &self,
        id: &str,
        id_handle: Option<&str>,
    ) -> Result<IdToken, RemoteError> {
        #[derive(Deserialize)]
        struct Minted {
            token: String,
            exp: i64,
        }
        let mut body = json!({ "id": id });
        if let Some(handle) = id_handle {
            body["id_handle"] = json!(handle);
        }
        let url = endpoint(&self.base_url, ["id", "api", "v1", "auth", "token"]);
        let answer = self
            .send(Method::POST, url, Some(&body), Idempotency::Safe)
            .await?;
        let minted = answer.json::<Data<Minted>>()?.data;
        let expires_at = jiff::Timestamp::from_second(minted.exp)
            .map_err(|e| answer.invalid(format!("exp is not a time: {e}")))?;
        Ok(IdToken {
            token: SecretString::from(minted.token),
            expires_at,
        })
    }

    /// `{base}/api/v3/{segments…}`.
    fn api(&self, segments: &[&str]) -> Url {
        endpoint(
            &self.base_url,
            ["api", "v3"].iter().chain(segments).copied(),
        )
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        idempotency: Idempotency,
    ) -> Result<Answer, RemoteError> {
        let mut headers = HeaderMap::new();
        let authorization =
            bearer(&self.token).map_err(|kind| self.remote.refuse(&method, &url, kind))?;
        headers.insert(header::AUTHORIZATION, authorization);
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let body = body.map(|b| {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            b.to_string().into_bytes()
        });
        self.remote
            .send(method, url, &headers, body, idempotency)
            .await
    }

    async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<T, RemoteError> {
        self.send(Method::GET, url, None, Idempotency::Safe)
            .await?
            .json()
    }

    async fn put<T: DeserializeOwned>(&self, url: Url, body: &Value) -> Result<T, RemoteError> {
        let answer = self
            .send(Method::PUT, url, Some(body), Idempotency::Safe)
            .await?;
        Ok(answer.json::<Data<T>>()?.data)
    }

    async fn create<T: DeserializeOwned>(&self, url: Url, body: &Value) -> Result<T, RemoteError> {
        let answer = self
            .send(Method::POST, url, Some(body), Idempotency::Unsafe)
            .await?;
        Ok(answer.json::<Data<T>>()?.data)
    }

    async fn delete(&self, url: Url) -> Result<(), RemoteError> {
        found(
            self.send(Method::DELETE, url, None, Idempotency::Safe)
                .await,
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_id_api_urls_sit_below_the_tenant_base() {
        let client = OmneoClient::new(
            reqwest::Client::new(),
            "https://api.acme.getomneo.com".parse().unwrap(),
            SecretString::from("t"),
            RetryPolicy::no_retries(),
        );
        assert_eq!(
            client
                .api(&["profiles", "a b", "identities", "klaviyo"])
                .as_str(),
            "https://api.acme.getomneo.com/api/v3/profiles/a%20b/identities/klaviyo"
        );
        assert_eq!(
            endpoint(&client.base_url, ["id", "api", "v1", "auth", "token"]).as_str(),
            "https://api.acme.getomneo.com/id/api/v1/auth/token"
        );
    }
}
