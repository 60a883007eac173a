//! Identities: `POST|GET /profiles/{id}/identities`, `PUT|DELETE /profiles/{id}/identities/{handle}`.
//!
//! A profile has at most one identity per handle, and (handle, identifier) is unique across the
//! tenant (422 on a clash). `PUT` on a handle the profile lacks answers 404, so clients upsert by
//! `PUT`, then `POST` on 404. Every change fires `profile.updated`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::profiles::ProfilePath;
use super::responses::{self, ApiError, Validator, created, data, json_object, no_content};
use super::state::{Caller, Shared, Tenant};

/// An external identity of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Which system, e.g. `klaviyo`.
    pub handle: String,
    /// The profile's id in that system.
    pub identifier: String,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub created_at: String,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub updated_at: String,
}

impl Identity {
    /// A new identity stamped `at`.
    pub(crate) fn new(handle: &str, identifier: &str, at: &str) -> Self {
        Self {
            handle: handle.into(),
            identifier: identifier.into(),
            created_at: at.into(),
            updated_at: at.into(),
        }
    }
}

/// Reads `identifier` (a string, or a number taken as its text).
fn identifier(v: &mut Validator, body: &Map<String, Value>) -> Option<String> {
    match body.get("identifier") {
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => v.required_string(body, "identifier"),
    }
}

impl Tenant {
    /// 422 when another profile than `owner` holds (handle, identifier).
    fn check_identity_free(
        &self,
        owner: &str,
        handle: &str,
        identifier: &str,
    ) -> Result<(), ApiError> {
        match self.profile_by_identity(handle, identifier) {
            Some(holder) if holder.id != owner => Err(ApiError::taken("identifier")),
            _ => Ok(()),
        }
    }

    /// Adds an identity to a profile (422 when the handle is already on it, or the pair is taken).
    pub(crate) fn add_identity(
        &mut self,
        id: &str,
        handle: &str,
        identifier: &str,
    ) -> Result<Identity, ApiError> {
        if self
            .record(id)?
            .profile
            .identities
            .iter()
            .any(|i| i.handle == handle)
        {
            return Err(ApiError::taken("handle"));
        }
        self.check_identity_free(id, handle, identifier)?;
        let identity = Identity::new(handle, identifier, &responses::now());
        self.record_mut(id)?
            .profile
            .identities
            .push(identity.clone());
        Ok(identity)
    }

    /// Changes the identifier of a profile's identity (404 when the profile lacks the handle);
    /// answers the identity and whether it changed.
    pub(super) fn set_identity(
        &mut self,
        id: &str,
        handle: &str,
        identifier: &str,
    ) -> Result<(Identity, bool), ApiError> {
        let current = self
            .record(id)?
            .profile
            .identities
            .iter()
            .find(|i| i.handle == handle)
            .cloned()
            .ok_or_else(|| ApiError::not_found("Identity"))?;
        if current.identifier == identifier {
            return Ok((current, false));
        }
        self.check_identity_free(id, handle, identifier)?;
        let mut record = self.record_mut(id)?;
        let identity = record
            .profile
            .identities
            .iter_mut()
            .find(|i| i.handle == handle)
            .ok_or_else(|| ApiError::not_found("Identity"))?;
        identity.identifier = identifier.into();
        identity.updated_at = responses::now();
        Ok((identity.clone(), true))
    }

    /// Removes a profile's identity (404 when it has none with that handle).
    pub(super) fn remove_identity(&mut self, id: &str, handle: &str) -> Result<(), ApiError> {
        let mut record = self.record_mut(id)?;
        let identities = &mut record.profile.identities;
        let before = identities.len();
        identities.retain(|i| i.handle != handle);
        if identities.len() == before {
            return Err(ApiError::not_found("Identity"));
        }
        Ok(())
    }
}

/// `{id}/{handle}` of an identity path.
#[derive(Debug, Deserialize)]
pub(crate) struct IdentityPath {
    id: String,
    handle: String,
}

/// `GET /profiles/{id}/identities`.
pub(crate) async fn list(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<ProfilePath>,
) -> Result<Response, ApiError> {
    sim.read(&caller.tenant, |t| {
        Ok(data(&t.record(&path.id)?.profile.identities))
    })
}

/// `POST /profiles/{id}/identities` `{"handle","identifier"}` → 201.
pub(crate) async fn create(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<ProfilePath>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let mut v = Validator::default();
    let handle = v.required_string(&body, "handle");
    let identifier = identifier(&mut v, &body);
    let (handle, identifier) = v.finish_with(handle.zip(identifier))?;
    let identity = sim.change(&caller.tenant, Some(&caller.namespace), |t| {
        let identity = t.add_identity(&path.id, &handle, &identifier)?;
        Ok((identity, Some(t.touch(&path.id)?)))
    })?;
    Ok(created(identity))
}

/// `PUT /profiles/{id}/identities/{handle}` `{"identifier"}` (404 when the handle is missing).
pub(crate) async fn update(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<IdentityPath>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let mut v = Validator::default();
    let identifier = identifier(&mut v, &body);
    let identifier = v.finish_with(identifier)?;
    let identity = sim.change(&caller.tenant, Some(&caller.namespace), |t| {
        let (identity, changed) = t.set_identity(&path.id, &path.handle, &identifier)?;
        let event = if changed {
            Some(t.touch(&path.id)?)
        } else {
            None
        };
        Ok((identity, event))
    })?;
    Ok(data(identity))
}

/// `DELETE /profiles/{id}/identities/{handle}` → 204.
pub(crate) async fn delete(
    caller: Caller,
    State(sim): State<Shared>,
    Path(path): Path<IdentityPath>,
) -> Result<Response, ApiError> {
    sim.change(&caller.tenant, Some(&caller.namespace), |t| {
        t.remove_identity(&path.id, &path.handle)?;
        Ok(((), Some(t.touch(&path.id)?)))
    })?;
    Ok(no_content())
}
