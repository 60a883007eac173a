//! The outbound HTTP policy of the process-wide client (`shared::app::http_client`) that every
//! remote call goes through: redirects are answers, never followed (a token must not travel to
//! wherever a `Location` points); answers larger than the cap are refused, announced or streamed;
//! the OAuth endpoints get the same treatment with a smaller cap.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures_util::stream;
use secrecy::SecretString;
use shared::config::{ApiRevision, Config};
use shared::klaviyo::KlaviyoClient;
use shared::klaviyo::oauth::{KlaviyoOAuth, OAuthError};
use shared::omneo::OmneoClient;
use shared::remote::{ErrorKind, MAX_ANSWER_BYTES, RetryPolicy};
use tokio::net::TcpListener;

use super::fast_retries;

/// What a bait server received: the `Authorization` headers of every request.
type Received = Arc<Mutex<Vec<Option<String>>>>;

/// Serves `router` on a free loopback port; its base URL.
async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// A server that records every request it gets and answers 200 `{}`.
async fn bait() -> (String, Received) {
    let received: Received = Arc::default();
    let seen = received.clone();
    let router = Router::new().fallback(any(move |headers: HeaderMap| {
        let seen = seen.clone();
        async move {
            let authorization = headers
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            seen.lock().unwrap().push(authorization);
            (StatusCode::OK, "{}")
        }
    }));
    (serve(router).await, received)
}

/// A server that redirects every request to `target` (with 302, and 307 which keeps the method).
async fn redirector(target: String) -> String {
    let router = Router::new().fallback(any(move || {
        let target = target.clone();
        async move {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, format!("{target}/steal"))],
            )
        }
    }));
    serve(router).await
}

fn app_config(api_url: &str, token_url: &str) -> Config {
    let vars = std::collections::HashMap::from([
        ("PUBLIC_URL", "http://127.0.0.1:9".to_owned()),
        ("KLAVIYO_CLIENT_ID", "client".to_owned()),
        ("KLAVIYO_CLIENT_SECRET", "client-secret".to_owned()),
        ("KLAVIYO_API_URL", api_url.to_owned()),
        ("KLAVIYO_TOKEN_URL", token_url.to_owned()),
        ("KLAVIYO_REVOKE_URL", format!("{token_url}/revoke")),
        ("STORE", "memory".to_owned()),
        ("QUEUE", "local".to_owned()),
        (
            "ENCRYPTION_KEY",
            "k1:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=".to_owned(),
        ),
        ("OPERATOR_TOKEN", "operator-token-0123456789".to_owned()),
    ]);
    Config::from_env(&|name: &str| vars.get(name).cloned()).expect("configuration")
}

/// The Klaviyo OAuth app with its token and revocation endpoints at `base`.
fn oauth_at(base: &str) -> KlaviyoOAuth {
    let config = app_config(base, &format!("{base}/oauth/token"));
    KlaviyoOAuth::new(
        &config.klaviyo,
        &config.redirect_uri(),
        shared::app::http_client().unwrap(),
    )
}

fn klaviyo(base: &str) -> KlaviyoClient {
    KlaviyoClient::new(
        shared::app::http_client().unwrap(),
        base.parse().unwrap(),
        &ApiRevision::parse("2026-07-15").unwrap(),
        RetryPolicy::no_retries(),
    )
}

fn token() -> SecretString {
    SecretString::from("pk_bearer_that_must_not_travel")
}

#[tokio::test]
async fn redirects_are_answers_and_the_token_stays_home() {
    let (bait_url, received) = bait().await;
    let redirecting = redirector(bait_url).await;

    let omneo = OmneoClient::new(
        shared::app::http_client().unwrap(),
        redirecting.parse().unwrap(),
        token(),
        fast_retries(1),
    );
    for error in [
        klaviyo(&redirecting).account_id(&token()).await.map(drop),
        omneo
            .find_profiles_by_email("ann@example.org")
            .await
            .map(drop),
    ] {
        let error = error.unwrap_err();
        assert_eq!(
            error.status(),
            Some(StatusCode::TEMPORARY_REDIRECT),
            "{error}"
        );
    }

    let oauth = oauth_at(&redirecting);
    let refused = oauth.refresh(&SecretString::from("a-refresh-token")).await;
    assert!(
        refused.is_err(),
        "a redirected token call is not followed: {refused:?}"
    );
    let revoked = oauth.revoke(&SecretString::from("a-refresh-token")).await;
    assert!(
        revoked.is_err(),
        "a redirected revocation is not followed: {revoked:?}"
    );

    assert!(
        received.lock().unwrap().is_empty(),
        "a redirect was followed: {:?}",
        received.lock().unwrap()
    );
}

/// A server whose every answer is `bytes` long: announced with `Content-Length`, or streamed in
/// 64 KiB chunks without one.
async fn oversized(bytes: usize, announced: bool) -> String {
    let router = Router::new().fallback(any(move || async move {
        if announced {
            let body = vec![b' '; bytes];
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
        let chunk = 64 * 1024;
        let chunks = stream::iter(
            (0..bytes.div_ceil(chunk)).map(move |_| Ok::<_, std::io::Error>(vec![b' '; chunk])),
        );
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(chunks))
            .unwrap()
    }));
    serve(router).await
}

#[tokio::test]
async fn answers_over_the_cap_are_refused_not_buffered() {
    for announced in [true, false] {
        let base = oversized(MAX_ANSWER_BYTES + 1024, announced).await;
        let error = klaviyo(&base).account_id(&token()).await.unwrap_err();
        match &error.kind {
            ErrorKind::InvalidResponse(why) => assert!(why.contains("larger"), "{why}"),
            other => panic!("announced={announced}: expected a refused answer, got {other:?}"),
        }
    }
    // Under the cap, the same path reads the answer (and fails only on its content).
    let base = oversized(1024, false).await;
    let error = klaviyo(&base).account_id(&token()).await.unwrap_err();
    assert!(
        matches!(&error.kind, ErrorKind::InvalidResponse(why) if !why.contains("larger")),
        "{error:?}"
    );

    // The token endpoint answers a few hundred bytes: 100 KiB is refused.
    let base = oversized(100 * 1024, false).await;
    let error = oauth_at(&base)
        .refresh(&SecretString::from("a-refresh-token"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, OAuthError::Unavailable { .. }),
        "{error:?}"
    );
    assert!(
        shared::api_error::ErrorChain(&error)
            .to_string()
            .contains("larger"),
        "{error:?}"
    );
}
