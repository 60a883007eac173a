//! Communication preferences: `GET|PUT /profiles/{id}/attributes/comms`.
//!
//! Per channel X ∈ {email, sms, push, phone, post}: `X_promo`, `X_optout`, `X_bounced` (nullable
//! booleans), plus `email_consent_updated_at` / `sms_consent_updated_at`, which accept `Y-m-d H:i:s`
//! and ISO 8601 and are stored as `YYYY-MM-DD HH:MM:SS` UTC. A `PUT` is partial; a change fires
//! `profile.updated`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::profiles::ProfilePath;
use super::responses::{ApiError, Validator, data, json_object};
use super::state::{Caller, Shared, Tenant};

/// The consent-time fields of comms, email's then SMS's.
const CONSENT_TIMES: [&str; 2] = ["email_consent_updated_at", "sms_consent_updated_at"];

/// `attributes.comms` of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comms {
    /// Email marketing opted in.
    pub email_promo: Option<bool>,
    /// Email opted out.
    pub email_optout: Option<bool>,
    /// Email bounced.
    pub email_bounced: Option<bool>,
    /// SMS marketing opted in.
    pub sms_promo: Option<bool>,
    /// SMS opted out.
    pub sms_optout: Option<bool>,
    /// SMS undeliverable.
    pub sms_bounced: Option<bool>,
    /// Push marketing opted in.
    pub push_promo: Option<bool>,
    /// Push opted out.
    pub push_optout: Option<bool>,
    /// Push undeliverable.
    pub push_bounced: Option<bool>,
    /// Phone marketing opted in.
    pub phone_promo: Option<bool>,
    /// Phone opted out.
    pub phone_optout: Option<bool>,
    /// Phone undeliverable.
    pub phone_bounced: Option<bool>,
    /// Post marketing opted in.
    pub post_promo: Option<bool>,
    /// Post opted out.
    pub post_optout: Option<bool>,
    /// Post undeliverable.
    pub post_bounced: Option<bool>,
    /// When the end user last changed email consent (`YYYY-MM-DD HH:MM:SS` UTC).
    pub email_consent_updated_at: Option<String>,
    /// When the end user last changed SMS consent (`YYYY-MM-DD HH:MM:SS` UTC).
    pub sms_consent_updated_at: Option<String>,
}

impl Comms {
    /// Every boolean flag with its field name.
    fn flags_mut(&mut self) -> [(&'static str, &mut Option<bool>); 15] {
        [
            ("email_promo", &mut self.email_promo),
            ("email_optout", &mut self.email_optout),
            ("email_bounced", &mut self.email_bounced),
            ("sms_promo", &mut self.sms_promo),
            ("sms_optout", &mut self.sms_optout),
            ("sms_bounced", &mut self.sms_bounced),
            ("push_promo", &mut self.push_promo),
            ("push_optout", &mut self.push_optout),
            ("push_bounced", &mut self.push_bounced),
            ("phone_promo", &mut self.phone_promo),
            ("phone_optout", &mut self.phone_optout),
            ("phone_bounced", &mut self.phone_bounced),
            ("post_promo", &mut self.post_promo),
            ("post_optout", &mut self.post_optout),
            ("post_bounced", &mut self.post_bounced),
        ]
    }

    /// Whether `name` is a comms field: a flag or one of the two consent times.
    pub(crate) fn is_field(name: &str) -> bool {
        CONSENT_TIMES.contains(&name) || Self::default().flags_mut().iter().any(|(n, _)| *n == name)
    }

    /// Subscribed to email marketing: `email_promo != false && email_optout != true &&
    /// email_bounced != true` (null passes).
    pub fn email_subscribed(&self) -> bool {
        subscribed(self.email_promo, self.email_optout, self.email_bounced)
    }

    /// Subscribed to SMS marketing (same rule as email).
    pub fn sms_subscribed(&self) -> bool {
        subscribed(self.sms_promo, self.sms_optout, self.sms_bounced)
    }

    /// Applies a partial `PUT` body (422 on a non-boolean flag or an unparsable date).
    pub(crate) fn apply(&mut self, body: &Map<String, Value>) -> Result<(), ApiError> {
        let mut v = Validator::default();
        let mut next = self.clone();
        for (name, slot) in next.flags_mut() {
            if let Some(value) = v.nullable_bool(body, name) {
                *slot = value;
            }
        }
        let [email_at, sms_at] = CONSENT_TIMES;
        if let Some(at) = v.nullable_datetime(body, email_at) {
            next.email_consent_updated_at = at;
        }
        if let Some(at) = v.nullable_datetime(body, sms_at) {
            next.sms_consent_updated_at = at;
        }
        v.finish()?;
        *self = next;
        Ok(())
    }
}

fn subscribed(promo: Option<bool>, optout: Option<bool>, bounced: Option<bool>) -> bool {
    promo != Some(false) && optout != Some(true) && bounced != Some(true)
}

impl Tenant {
    /// Applies a comms `PUT` body; answers the comms and whether they changed.
    fn update_comms(
        &mut self,
        id: &str,
        body: &Map<String, Value>,
    ) -> Result<(Comms, bool), ApiError> {
        let mut record = self.record_mut(id)?;
        let before = record.profile.attributes.comms.clone();
        record.profile.attributes.comms.apply(body)?;
        let after = record.profile.attributes.comms.clone();
        Ok((after.clone(), after != before))
    }
}

/// `GET /profiles/{id}/attributes/comms`.
pub(crate) async fn show(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<ProfilePath>,
) -> Result<Response, ApiError> {
    sim.read(&caller.tenant, |t| {
        Ok(data(&t.record(&path.id)?.profile.attributes.comms))
    })
}

/// `PUT /profiles/{id}/attributes/comms`: partial; `profile.updated` when something changed.
pub(crate) async fn update(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<ProfilePath>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let comms = sim.change(&caller.tenant, Some(&caller.namespace), |t| {
        let (comms, changed) = t.update_comms(&path.id, &body)?;
        let event = if changed {
            Some(t.touch(&path.id)?)
        } else {
            None
        };
        Ok((comms, event))
    })?;
    Ok(data(comms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subscription_rule_lets_null_pass() {
        let mut comms = Comms::default();
        assert!(comms.email_subscribed());
        comms.email_bounced = Some(true);
        assert!(!comms.email_subscribed());
        comms.sms_promo = Some(false);
        assert!(!comms.sms_subscribed());
    }

    #[test]
    fn apply_is_partial_and_all_or_nothing() {
        let mut comms = Comms {
            sms_promo: Some(true),
            ..Comms::default()
        };
        let body =
            json!({"email_promo": false, "email_consent_updated_at": "2024-05-01T12:00:00+02:00"});
        comms.apply(body.as_object().unwrap()).unwrap();
        assert_eq!(comms.email_promo, Some(false));
        assert_eq!(comms.sms_promo, Some(true));
        assert_eq!(
            comms.email_consent_updated_at.as_deref(),
            Some("2024-05-01 10:00:00")
        );

        let bad = json!({"sms_promo": null, "email_optout": "yes"});
        let before = comms.clone();
        assert!(comms.apply(bad.as_object().unwrap()).is_err());
        assert_eq!(comms, before);
    }
}
