//! Consent and lists: the subscribe job (202; consent with `custom_source` as
//! `custom_method_detail`; list membership when a list is named; `historical_import` needs
//! `consented_at`), the unsubscribe job (202; the trap: naming a list removes members from it
//! but *globally* unsubscribes profiles that are not in it), and the lists endpoints.
//!
//! Every consent or membership change queues a system event in the outbox (see
//! [`super::deliveries`]). Deviation: jobs are applied before the 202 answers (the real ones are
//! asynchronous), and there is no double opt-in.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::deliveries::{self, SystemEvent, topics};
use super::jsonapi::{ApiError, Data, Doc, Here, ResourceId, document, expect_type, paginate};
use super::state::{Ctx, State as Account, random_alphanumeric};

/// A consent state as Klaviyo reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsentState {
    /// Opted in.
    Subscribed,
    /// Opted out.
    Unsubscribed,
    /// Never asked.
    #[default]
    NeverSubscribed,
}

/// A marketing channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Email marketing.
    Email,
    /// SMS marketing.
    Sms,
}

impl Channel {
    fn topic(self, consent: ConsentState) -> Option<&'static str> {
        match (self, consent) {
            (Self::Email, ConsentState::Subscribed) => Some(topics::SUBSCRIBED_TO_EMAIL),
            (Self::Email, ConsentState::Unsubscribed) => Some(topics::UNSUBSCRIBED_FROM_EMAIL),
            (Self::Sms, ConsentState::Subscribed) => Some(topics::SUBSCRIBED_TO_SMS),
            (Self::Sms, ConsentState::Unsubscribed) => Some(topics::UNSUBSCRIBED_FROM_SMS),
            (_, ConsentState::NeverSubscribed) => None,
        }
    }
}

/// One channel's consent: `subscriptions.email.marketing` and the like.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChannelConsent {
    /// The state.
    pub consent: ConsentState,
    /// When consent was given or withdrawn.
    pub consent_timestamp: Option<jiff::Timestamp>,
    /// How (e.g. `API`, `PREFERENCE_PAGE`).
    pub method: Option<String>,
    /// Klaviyo's detail of the method.
    pub method_detail: Option<String>,
    /// The caller's `custom_source`.
    pub custom_method_detail: Option<String>,
    /// Suppressions (`[{"reason","timestamp"}]`); empty when none.
    pub suppression: Vec<Value>,
}

impl ChannelConsent {
    /// The members every channel reports, plus its `can_receive_…` flag.
    fn common_json(&self, flag: &str, can_receive: bool) -> Value {
        let mut members = json!({
            "consent": self.consent,
            "consent_timestamp": self.consent_timestamp,
            "last_updated": self.consent_timestamp,
            "method": self.method,
            "method_detail": self.method_detail
        });
        members[flag] = can_receive.into();
        members
    }

    /// `email.marketing`: the common members and the email-only ones. It can receive marketing
    /// unless unsubscribed or suppressed.
    fn email_json(&self) -> Value {
        let can_receive = self.consent != ConsentState::Unsubscribed && self.suppression.is_empty();
        let mut members = self.common_json("can_receive_email_marketing", can_receive);
        members["custom_method_detail"] = json!(self.custom_method_detail);
        members["double_optin"] = Value::Null;
        members["suppression"] = json!(self.suppression);
        members["list_suppressions"] = json!([]);
        members
    }

    /// An SMS channel: only the common members (Klaviyo reports no `custom_method_detail` or
    /// suppressions for SMS); `flag` is true when subscribed.
    fn sms_json(&self, flag: &str) -> Value {
        self.common_json(flag, self.consent == ConsentState::Subscribed)
    }
}

/// A profile's consent on every channel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Subscriptions {
    /// `email.marketing`.
    pub email_marketing: ChannelConsent,
    /// `sms.marketing`.
    pub sms_marketing: ChannelConsent,
    /// `sms.transactional`.
    pub sms_transactional: ChannelConsent,
}

impl Subscriptions {
    /// The `subscriptions` attribute as `GET /api/profiles/{id}` shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "email": {"marketing": self.email_marketing.email_json()},
            "sms": {
                "marketing": self.sms_marketing.sms_json("can_receive_sms_marketing"),
                "transactional": self.sms_transactional.sms_json("can_receive_sms_transactional")
            },
            "mobile_push": null
        })
    }

    fn channel_mut(&mut self, channel: Channel) -> &mut ChannelConsent {
        match channel {
            Channel::Email => &mut self.email_marketing,
            Channel::Sms => &mut self.sms_marketing,
        }
    }
}

/// A list and its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct List {
    /// 6-character id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Member profile ids, in joining order.
    pub members: Vec<String>,
    /// When it was created.
    pub created: jiff::Timestamp,
}

impl List {
    fn resource(&self, here: &Here) -> Value {
        json!({
            "type": "list",
            "id": self.id,
            "attributes": {
                "name": self.name,
                "created": self.created,
                "updated": self.created,
                "opt_in_process": "single_opt_in"
            },
            "links": {"self": here.link(&format!("/api/lists/{}/", self.id))}
        })
    }
}

// ---- request documents ----

#[derive(Deserialize)]
pub(crate) struct JobDocument {
    data: JobData,
}

#[derive(Deserialize)]
struct JobData {
    #[serde(rename = "type")]
    kind: String,
    attributes: JobAttributes,
    #[serde(default)]
    relationships: Option<JobRelationships>,
}

#[derive(Deserialize)]
struct JobAttributes {
    #[serde(default)]
    custom_source: Option<String>,
    #[serde(default)]
    historical_import: bool,
    profiles: Data<Vec<JobProfile>>,
}

#[derive(Deserialize)]
struct JobRelationships {
    #[serde(default)]
    list: Option<Data<ResourceId>>,
}

#[derive(Deserialize)]
struct JobProfile {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    attributes: JobProfileAttributes,
}

#[derive(Deserialize)]
struct JobProfileAttributes {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    phone_number: Option<String>,
    #[serde(default)]
    subscriptions: Option<RequestedSubscriptions>,
}

#[derive(Deserialize, Default)]
struct RequestedSubscriptions {
    #[serde(default)]
    email: Option<EmailRequest>,
    #[serde(default)]
    sms: Option<SmsRequest>,
}

#[derive(Deserialize)]
struct EmailRequest {
    #[serde(default)]
    marketing: Option<ConsentRequest>,
}

#[derive(Deserialize)]
struct SmsRequest {
    #[serde(default)]
    marketing: Option<ConsentRequest>,
    #[serde(default)]
    transactional: Option<ConsentRequest>,
}

#[derive(Deserialize)]
struct ConsentRequest {
    consent: String,
    #[serde(default)]
    consented_at: Option<jiff::Timestamp>,
}

/// Which consent a job asks for on one profile.
enum Requested<'a> {
    Marketing(Channel, &'a ConsentRequest),
    SmsTransactional(&'a ConsentRequest),
}

impl JobProfile {
    fn requested(&self) -> Vec<(Requested<'_>, &'static str)> {
        let Some(subscriptions) = &self.attributes.subscriptions else {
            return Vec::new();
        };
        let mut requested = Vec::new();
        if let Some(c) = subscriptions
            .email
            .as_ref()
            .and_then(|e| e.marketing.as_ref())
        {
            requested.push((Requested::Marketing(Channel::Email, c), "email/marketing"));
        }
        if let Some(sms) = &subscriptions.sms {
            if let Some(c) = &sms.marketing {
                requested.push((Requested::Marketing(Channel::Sms, c), "sms/marketing"));
            }
            if let Some(c) = &sms.transactional {
                requested.push((Requested::SmsTransactional(c), "sms/transactional"));
            }
        }
        requested
    }
}

impl Requested<'_> {
    fn request(&self) -> &ConsentRequest {
        match self {
            Self::Marketing(_, c) | Self::SmsTransactional(c) => c,
        }
    }
}

/// Validates what every job shares; returns the list id named (checked to exist).
fn validate_job(
    state: &Account,
    data: &JobData,
    expected_type: &str,
    max_profiles: usize,
    expected_consent: &str,
) -> Result<Option<String>, ApiError> {
    expect_type(&data.kind, expected_type, "/data/type")?;
    let profiles = &data.attributes.profiles.data;
    if profiles.is_empty() || profiles.len() > max_profiles {
        return Err(ApiError::invalid(
            format!("Between 1 and {max_profiles} profiles are allowed per job."),
            "/data/attributes/profiles/data",
        ));
    }
    for (i, profile) in profiles.iter().enumerate() {
        let at = format!("/data/attributes/profiles/data/{i}");
        expect_type(&profile.kind, "profile", &format!("{at}/type"))?;
        let attributes = &profile.attributes;
        if profile.id.is_none() && attributes.email.is_none() && attributes.phone_number.is_none() {
            return Err(ApiError::invalid(
                "A profile needs an id, email or phone_number.",
                &format!("{at}/attributes"),
            ));
        }
        let requested = profile.requested();
        if requested.is_empty() {
            return Err(ApiError::invalid(
                "At least one subscription is required.",
                &format!("{at}/attributes/subscriptions"),
            ));
        }
        for (requested, path) in &requested {
            let pointer = format!("{at}/attributes/subscriptions/{path}");
            let request = requested.request();
            if request.consent != expected_consent {
                return Err(ApiError::invalid(
                    format!("consent must be {expected_consent}."),
                    &format!("{pointer}/consent"),
                ));
            }
            match (data.attributes.historical_import, request.consented_at) {
                (true, None) => {
                    return Err(ApiError::invalid(
                        "consented_at is required for historical imports.",
                        &format!("{pointer}/consented_at"),
                    ));
                }
                (false, Some(_)) => {
                    return Err(ApiError::invalid(
                        "consented_at is only allowed for historical imports.",
                        &format!("{pointer}/consented_at"),
                    ));
                }
                _ => {}
            }
            let sms = matches!(
                requested,
                Requested::Marketing(Channel::Sms, _) | Requested::SmsTransactional(_)
            );
            let has_phone = attributes.phone_number.is_some()
                || profile
                    .id
                    .as_deref()
                    .and_then(|id| state.profile(id))
                    .is_some_and(|p| p.phone_number.is_some())
                || attributes
                    .email
                    .as_deref()
                    .and_then(|e| state.profile_by_email(e))
                    .is_some_and(|i| state.profiles[i].phone_number.is_some());
            if sms && !has_phone {
                return Err(ApiError::invalid(
                    "SMS consent requires a phone_number.",
                    &format!("{at}/attributes/phone_number"),
                ));
            }
        }
    }
    let list = data
        .relationships
        .as_ref()
        .and_then(|r| r.list.as_ref())
        .map(|l| l.data.id.clone());
    if let Some(list) = &list
        && !state.lists.iter().any(|l| &l.id == list)
    {
        return Err(ApiError::invalid(
            format!("List {list} does not exist."),
            "/data/relationships/list/data/id",
        ));
    }
    Ok(list)
}

impl Account {
    /// Finds the job's profile by id, email, then phone.
    fn find_job_profile(&self, profile: &JobProfile) -> Option<usize> {
        let attributes = &profile.attributes;
        profile
            .id
            .as_deref()
            .and_then(|id| self.profile_by_id(id))
            .or_else(|| {
                attributes
                    .email
                    .as_deref()
                    .and_then(|e| self.profile_by_email(e))
            })
            .or_else(|| {
                attributes
                    .phone_number
                    .as_deref()
                    .and_then(|p| self.profile_by_phone(p))
            })
    }

    /// Sets a channel's consent; queues the system event when the state changed.
    fn set_consent(
        &mut self,
        index: usize,
        channel: Channel,
        consent: ConsentState,
        method: &str,
        custom_method_detail: Option<&str>,
        at: jiff::Timestamp,
    ) {
        let mut profile = self.profiles.get_mut(index);
        let current = profile.subscriptions.channel_mut(channel);
        let changed = current.consent != consent;
        *current = ChannelConsent {
            consent,
            consent_timestamp: Some(at),
            method: Some(method.to_owned()),
            method_detail: None,
            custom_method_detail: custom_method_detail.map(str::to_owned),
            suppression: current.suppression.clone(),
        };
        profile.updated = jiff::Timestamp::now();
        let event = channel.topic(consent).filter(|_| changed).map(|topic| {
            SystemEvent::new(topic, &profile.id, profile.email.as_deref())
                .method(method)
                .custom_method_detail(custom_method_detail)
        });
        drop(profile);
        if let Some(event) = event {
            self.queue_event(event);
        }
    }

    /// Adds or removes a list member; queues the system event when membership changed.
    fn set_membership(
        &mut self,
        index: usize,
        list_id: &str,
        member: bool,
        custom_source: Option<&str>,
    ) {
        let profile = &self.profiles[index];
        let Some(list) = self.lists.iter_mut().find(|l| l.id == list_id) else {
            return;
        };
        let is_member = list.members.contains(&profile.id);
        if is_member == member {
            return;
        }
        let topic = if member {
            list.members.push(profile.id.clone());
            topics::SUBSCRIBED_TO_LIST
        } else {
            list.members.retain(|m| m != &profile.id);
            topics::UNSUBSCRIBED_FROM_LIST
        };
        let event = SystemEvent::new(topic, &profile.id, profile.email.as_deref())
            .method("API")
            .custom_method_detail(custom_source)
            .list_id(list_id);
        self.queue_event(event);
    }

    /// A change made on Klaviyo's side (see [`super::KlaviyoSim::change_consent`]).
    pub fn change_consent(
        &mut self,
        profile_id: &str,
        channel: Channel,
        consent: ConsentState,
        method: &str,
    ) -> Result<(), ApiError> {
        let index = self
            .profile_by_id(profile_id)
            .ok_or_else(|| ApiError::not_found(format!("Profile {profile_id} not found.")))?;
        self.set_consent(
            index,
            channel,
            consent,
            method,
            None,
            jiff::Timestamp::now(),
        );
        Ok(())
    }

    /// Creates an empty list.
    pub fn create_list(&mut self, name: &str) -> String {
        let id = random_alphanumeric(6);
        self.lists.push(List {
            id: id.clone(),
            name: name.into(),
            members: Vec::new(),
            created: jiff::Timestamp::now(),
        });
        id
    }
}

fn accepted(ctx: &Ctx) -> Response {
    if ctx.lock().options.auto_deliver {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(error) = deliveries::deliver_pending(&ctx).await {
                tracing::warn!(error = %format!("{error:#}"), "automatic delivery failed");
            }
        });
    }
    StatusCode::ACCEPTED.into_response()
}

/// `POST /api/profile-subscription-bulk-create-jobs` — at most 1000 profiles, 202 empty.
///
/// The unconfirmed trap is reproduced: without a list and without `historical_import`, an
/// email that is not a profile yet does not become one.
pub(crate) async fn subscribe(
    State(ctx): State<Ctx>,
    Doc(doc): Doc<JobDocument>,
) -> Result<Response, ApiError> {
    {
        let mut state = ctx.lock();
        let data = &doc.data;
        let list = validate_job(
            &state,
            data,
            "profile-subscription-bulk-create-job",
            1000,
            "SUBSCRIBED",
        )?;
        let source = data.attributes.custom_source.as_deref();
        for profile in &data.attributes.profiles.data {
            let attributes = &profile.attributes;
            let index = match state.find_job_profile(profile) {
                Some(index) => index,
                None if list.is_none() && !data.attributes.historical_import => continue,
                None => state.create_profile(
                    attributes.email.as_deref(),
                    attributes.phone_number.as_deref(),
                ),
            };
            if let Some(phone) = &attributes.phone_number
                && state.profiles[index].phone_number.is_none()
            {
                state.profiles.get_mut(index).phone_number = Some(phone.clone());
            }
            for (requested, _) in profile.requested() {
                let at = requested
                    .request()
                    .consented_at
                    .unwrap_or_else(jiff::Timestamp::now);
                match requested {
                    Requested::Marketing(channel, _) => {
                        state.set_consent(
                            index,
                            channel,
                            ConsentState::Subscribed,
                            "API",
                            source,
                            at,
                        );
                    }
                    Requested::SmsTransactional(_) => {
                        state
                            .profiles
                            .get_mut(index)
                            .subscriptions
                            .sms_transactional = ChannelConsent {
                            consent: ConsentState::Subscribed,
                            consent_timestamp: Some(at),
                            method: Some("API".into()),
                            method_detail: None,
                            custom_method_detail: source.map(str::to_owned),
                            suppression: Vec::new(),
                        };
                    }
                }
            }
            if let Some(list) = &list {
                state.set_membership(index, list, true, source);
            }
        }
    }
    Ok(accepted(&ctx))
}

/// `POST /api/profile-subscription-bulk-delete-jobs` — at most 100 profiles, 202 empty.
///
/// Without a list: global unsubscribe. With a list: members leave the list (consent
/// unchanged) and — the trap — non-members are unsubscribed globally.
pub(crate) async fn unsubscribe(
    State(ctx): State<Ctx>,
    Doc(doc): Doc<JobDocument>,
) -> Result<Response, ApiError> {
    {
        let mut state = ctx.lock();
        let data = &doc.data;
        let list = validate_job(
            &state,
            data,
            "profile-subscription-bulk-delete-job",
            100,
            "UNSUBSCRIBED",
        )?;
        let source = data.attributes.custom_source.as_deref();
        for profile in &data.attributes.profiles.data {
            let index = match state.find_job_profile(profile) {
                Some(index) => index,
                None => state.create_profile(
                    profile.attributes.email.as_deref(),
                    profile.attributes.phone_number.as_deref(),
                ),
            };
            let id = state.profiles[index].id.clone();
            if let Some(list) = &list
                && state
                    .lists
                    .iter()
                    .any(|l| &l.id == list && l.members.contains(&id))
            {
                state.set_membership(index, list, false, source);
                continue;
            }
            for (requested, _) in profile.requested() {
                match requested {
                    Requested::Marketing(channel, _) => {
                        let now = jiff::Timestamp::now();
                        state.set_consent(
                            index,
                            channel,
                            ConsentState::Unsubscribed,
                            "API",
                            source,
                            now,
                        );
                    }
                    Requested::SmsTransactional(_) => {
                        let mut profile = state.profiles.get_mut(index);
                        let consent = &mut profile.subscriptions.sms_transactional;
                        consent.consent = ConsentState::Unsubscribed;
                        consent.consent_timestamp = Some(jiff::Timestamp::now());
                    }
                }
            }
        }
    }
    Ok(accepted(&ctx))
}

/// `GET /api/lists` — page size ≤ 10.
pub(crate) async fn lists(State(ctx): State<Ctx>, here: Here) -> Result<Response, ApiError> {
    let all = ctx.lock().lists.clone();
    let page = paginate(&all, &here, 10, 10)?;
    let data: Vec<Value> = page.items.iter().map(|l| l.resource(&here)).collect();
    Ok(document(
        StatusCode::OK,
        &json!({ "data": data, "links": page.links }),
    ))
}

/// `GET /api/lists/{id}`.
pub(crate) async fn list_one(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    here: Here,
) -> Result<Response, ApiError> {
    let list = find_list(&ctx, &id)?;
    Ok(document(
        StatusCode::OK,
        &json!({ "data": list.resource(&here) }),
    ))
}

fn find_list(ctx: &Ctx, id: &str) -> Result<List, ApiError> {
    ctx.lock()
        .lists
        .iter()
        .find(|l| l.id == id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("List {id} not found.")))
}

/// `GET /api/lists/{id}/relationships/profiles?filter=equals(email,"…")` — member ids.
pub(crate) async fn list_profiles(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    here: Here,
) -> Result<Response, ApiError> {
    let filters = here.params.filters(&["email", "phone_number"], &[])?;
    let list = find_list(&ctx, &id)?;
    let members: Vec<String> = {
        let state = ctx.lock();
        list.members
            .iter()
            .filter_map(|member| state.profile(member))
            .filter(|p| {
                filters.iter().all(|f| match f.field.as_str() {
                    "email" => f.matches_ignoring_case(p.email.as_deref()),
                    _ => f.matches(p.phone_number.as_deref()),
                })
            })
            .map(|p| p.id.clone())
            .collect()
    };
    let page = paginate(&members, &here, 20, 1000)?;
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
