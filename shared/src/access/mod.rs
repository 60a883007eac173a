//! Reaching a tenant's Klaviyo account with its credentials — what install, the outbound worker
//! and the inbound worker all need, so it lives beside them rather than inside any of them.
//!
//! | module | concern |
//! |---|---|
//! | [`tokens`] | valid access tokens: proactive, single-flight refresh across instances |
//! | [`pacing`] | spacing calls under Klaviyo's per-endpoint rate limits within one run |
//!
//! [`klaviyo_call`] runs one Klaviyo call of a run with the tenant's token (refreshed once on a
//! 401), in its [`Pacer`]'s rate-limit slot.

pub mod pacing;
pub mod tokens;

use std::future::Future;

use secrecy::SecretString;

pub use self::pacing::{Pacer, RateClass};
pub use self::tokens::{KlaviyoCallError, TokenError, TokenProvider};
use crate::domain::TenantId;
use crate::klaviyo::KlaviyoClient;
use crate::remote::RemoteError;

/// A Klaviyo call with the tenant's token (refreshed once on 401), paced for `class`. `call`
/// receives a client handle and the token; it runs again after a refresh, so it owns (clones)
/// what its future needs.
pub async fn klaviyo_call<T, F, Fut>(
    tokens: &TokenProvider,
    client: &KlaviyoClient,
    tenant: &TenantId,
    (pacer, class): (&Pacer, RateClass),
    call: F,
) -> Result<T, KlaviyoCallError>
where
    F: Fn(KlaviyoClient, SecretString) -> Fut,
    Fut: Future<Output = Result<T, RemoteError>>,
{
    tokens
        .call(tenant, |token| {
            let turn = pacer.turn(class);
            let request = call(client.clone(), token);
            async move {
                turn.await;
                request.await
            }
        })
        .await
}
