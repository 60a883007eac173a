//! The ID API's `POST /{tenant}/id/api/v1/auth/token`: with the admin bearer and
//! `{"id", "id_handle"?}`, mints a short-lived JWT for a profile → `{"data":{"token","exp"}}`.
//!
//! `id` is the profile id, or with `id_handle` an identity identifier of that handle (404 when no
//! profile matches). The JWT is HS256, keyed with the tenant's signing secret (the simulator's
//! choice), with claims `iss`, `sub` = `pid` = the profile id, `tenant`, `iat`, `exp`.

use anyhow::{Context as _, ensure};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::responses::{ApiError, Validator, data, json_object};
use super::state::{Caller, Shared};
use super::webhooks::sign_raw;

/// The claims of a minted ID token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdTokenClaims {
    /// Issuer: `omneo-sim/{tenant}`.
    pub iss: String,
    /// Subject: the profile id.
    pub sub: String,
    /// The profile id.
    pub pid: String,
    /// The tenant.
    pub tenant: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Expires at (unix seconds).
    pub exp: i64,
}

/// An ID token the simulator minted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MintedIdToken {
    /// The profile it is for.
    pub profile_id: String,
    /// The JWT.
    pub token: String,
    /// Expiry (unix seconds).
    pub exp: i64,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Encodes and signs `claims` as an HS256 JWT.
fn encode(secret: &str, claims: &IdTokenClaims) -> String {
    let header = URL_SAFE_NO_PAD.encode(HEADER);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let signing_input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(sign_raw(secret, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// Checks an HS256 JWT's signature and answers its claims (expiry is not checked).
pub(crate) fn decode(secret: &str, token: &str) -> anyhow::Result<IdTokenClaims> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        anyhow::bail!("an ID token has three dot-separated parts");
    };
    let expected = sign_raw(secret, format!("{header}.{payload}").as_bytes());
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .context("ID token signature is not base64url")?;
    ensure!(signature == expected, "ID token signature does not match");
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .context("ID token payload is not base64url")?;
    serde_json::from_slice(&payload).context("ID token payload is not the expected claims")
}

/// `POST /{tenant}/id/api/v1/auth/token` `{"id","id_handle"?}`.
pub(crate) async fn mint(
    caller: Caller,
    State(sim): State<Shared>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body = json_object(&body)?;
    let mut v = Validator::default();
    let id = match body.get("id") {
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => v.required_string(&body, "id"),
    };
    let handle = v.nullable_string(&body, "id_handle").flatten();
    let id = v.finish_with(id)?;
    let ttl = i64::try_from(sim.id_token_ttl().as_secs()).unwrap_or(i64::MAX);
    let minted = sim.change(&caller.tenant, Some(&caller.namespace), |t| {
        let profile_id = match &handle {
            Some(handle) => t.profile_by_identity(handle, &id).map(|p| p.id.clone()),
            None => t.record(&id).ok().map(|r| r.profile.id.clone()),
        }
        .ok_or_else(|| ApiError::not_found("Profile"))?;
        let iat = jiff::Timestamp::now().as_second();
        let claims = IdTokenClaims {
            iss: format!("omneo-sim/{}", t.name),
            sub: profile_id.clone(),
            pid: profile_id.clone(),
            tenant: t.name.clone(),
            iat,
            exp: iat.saturating_add(ttl),
        };
        let minted = MintedIdToken {
            profile_id,
            token: encode(&t.signing_secret, &claims),
            exp: claims.exp,
        };
        t.id_tokens.push(minted.clone());
        Ok((minted, None))
    })?;
    Ok(data(json!({ "token": minted.token, "exp": minted.exp })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_another_key() {
        let claims = IdTokenClaims {
            iss: "omneo-sim/acme".into(),
            sub: "p".into(),
            pid: "p".into(),
            tenant: "acme".into(),
            iat: 1,
            exp: 2,
        };
        let token = encode("k1", &claims);
        assert_eq!(decode("k1", &token).unwrap(), claims);
        assert!(decode("k2", &token).is_err());
        assert!(decode("k1", "a.b").is_err());
    }
}
