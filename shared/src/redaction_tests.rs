//! No plaintext secret in `Debug`: every type that holds one is formatted here, with known
//! plaintexts, and the output must contain none of them.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;
use secrecy::SecretString;

use crate::config::Config;
use crate::domain::TenantId;
use crate::install::link;
use crate::install::registration::Registration;
use crate::klaviyo::models::{NewWebhook, WebhookUpdate};
use crate::klaviyo::oauth::{KlaviyoOAuth, TokenGrant};
use crate::omneo::models::IdToken;
use crate::settings::Settings;
use crate::store::{
    Install, Lease, OAuthState, OAuthTokens, Resources, Tenant, TenantSecret, TokenSecret,
};

/// Every plaintext the values below are built from.
const PLAINTEXTS: [&str; 9] = [
    "client-secret-plaintext",
    "operator-token-plaintext-0123",
    "omneo-token-plaintext",
    "signing-secret-plaintext",
    "webhook-secret-plaintext",
    "access-token-plaintext",
    "refresh-token-plaintext",
    "pkce-verifier-plaintext-0123456789abcdefghijk",
    "id-token-plaintext",
];

/// The base64 of the 32 key bytes in the configuration below.
const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

fn secret(text: &str) -> SecretString {
    SecretString::from(text.to_owned())
}

fn assert_no_plaintext(what: &str, formatted: &str) {
    for plaintext in PLAINTEXTS.iter().chain([&KEY]) {
        assert!(
            !formatted.contains(plaintext),
            "{what}'s Debug shows {plaintext:?}: {formatted}"
        );
    }
}

fn config() -> Config {
    let vars = HashMap::from([
        ("PUBLIC_URL", "https://ext.example.com".to_owned()),
        ("KLAVIYO_CLIENT_ID", "client".to_owned()),
        ("KLAVIYO_CLIENT_SECRET", PLAINTEXTS[0].to_owned()),
        ("STORE", "memory".to_owned()),
        ("QUEUE", "local".to_owned()),
        ("ENCRYPTION_KEY", format!("k1:{KEY}")),
        ("OPERATOR_TOKEN", PLAINTEXTS[1].to_owned()),
    ]);
    Config::from_env(&|name: &str| vars.get(name).cloned()).expect("configuration")
}

#[test]
fn no_type_holding_a_secret_shows_it_in_debug() {
    let config = config();
    let keyring = &config.keyring;
    let acme = TenantId::parse("acme").unwrap();
    let now = Timestamp::now();

    let registration: Registration = serde_json::from_value(serde_json::json!({
        "omneo_api_token": PLAINTEXTS[2],
        "omneo_signing_secret": PLAINTEXTS[3],
    }))
    .unwrap();
    let tenant = Tenant {
        id: acme.clone(),
        omneo_api_url: "https://api.acme.getomneo.com".into(),
        omneo_api_token: TenantSecret::OmneoApiToken.seal(keyring, &acme, &secret(PLAINTEXTS[2])),
        omneo_signing_secret: TenantSecret::OmneoSigningSecret.seal(
            keyring,
            &acme,
            &secret(PLAINTEXTS[3]),
        ),
        webhook_secret: TenantSecret::WebhookSecret.seal(keyring, &acme, &secret(PLAINTEXTS[4])),
        previous_webhook_secret: None,
        webhook_secret_pending_since: None,
        admin_key_hash: "ab".repeat(32),
        settings: Settings::default(),
        created_at: now,
        updated_at: now,
    };
    let tokens = OAuthTokens {
        access_token: TokenSecret::AccessToken.seal(keyring, &acme, &secret(PLAINTEXTS[5])),
        refresh_token: TokenSecret::RefreshToken.seal(keyring, &acme, &secret(PLAINTEXTS[6])),
        expires_at: now,
        scopes: vec!["accounts:read".into()],
        last_refreshed_at: None,
    };
    let install = Install {
        tokens: Some(tokens.clone()),
        refresh_lease: Some(Lease {
            holder: "instance/attempt".into(),
            until: now,
            refused_grant: false,
        }),
        resources: Resources::default(),
        ..Install::pending(acme.clone(), now)
    };
    let state = secret("the-state-value-0123456789abcdefghijklmnopq");
    let state_hash = OAuthState::hash(&state);
    let oauth_state = OAuthState {
        pkce_verifier: keyring.seal(
            &secret(PLAINTEXTS[7]),
            &OAuthState::verifier_at(&state_hash),
        ),
        state_hash,
        tenant: acme.clone(),
        expires_at: now,
    };
    let grant = TokenGrant {
        access_token: secret(PLAINTEXTS[5]),
        refresh_token: Some(secret(PLAINTEXTS[6])),
        expires_in: Duration::from_secs(3600),
        scopes: Vec::new(),
    };
    let oauth = KlaviyoOAuth::new(
        &config.klaviyo,
        &config.redirect_uri(),
        reqwest::Client::new(),
    );
    let webhook = NewWebhook {
        name: "Omneo acme".into(),
        endpoint_url: "https://ext.example.com/acme".parse().unwrap(),
        secret_key: secret(PLAINTEXTS[4]),
        description: None,
        topics: Vec::new(),
    };
    let update = WebhookUpdate {
        secret_key: Some(secret(PLAINTEXTS[4])),
        ..WebhookUpdate::default()
    };
    let id_token = IdToken {
        token: secret(PLAINTEXTS[8]),
        expires_at: now,
    };
    let install_link = link::issue(keyring, &acme, now);

    for (what, formatted) in [
        ("Config", format!("{config:?}")),
        ("Keyring", format!("{keyring:?}")),
        ("Registration", format!("{registration:?}")),
        ("Tenant", format!("{tenant:?}")),
        ("OAuthTokens", format!("{tokens:?}")),
        ("Install", format!("{install:?}")),
        ("OAuthState", format!("{oauth_state:?}")),
        ("TokenGrant", format!("{grant:?}")),
        ("KlaviyoOAuth", format!("{oauth:?}")),
        ("NewWebhook", format!("{webhook:?}")),
        ("WebhookUpdate", format!("{update:?}")),
        ("IdToken", format!("{id_token:?}")),
        ("InstallLink", format!("{install_link:?}")),
    ] {
        assert_no_plaintext(what, &formatted);
        assert!(!formatted.is_empty());
    }
    // The state value is not stored (only its hash) and so cannot show; the link token is a
    // capability and does not show either.
    assert!(!format!("{oauth_state:?}").contains("the-state-value"));
    assert!(!format!("{install_link:?}").contains(&install_link.token));
    // The sealed forms show their key id only.
    assert!(format!("{tenant:?}").contains("Sealed(k1:…)"));
}
