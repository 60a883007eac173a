//! The bodies of the fuzz targets (`tests/fuzz/fuzz_targets/`, `make fuzz`): each feeds arbitrary
//! bytes into the real code path of `shared` — the signature verifiers, the payload parsers behind
//! them, the Omneo event context, the settings validator and the JSON Logic exclusion — and must
//! never panic. The same bodies run over the seed corpus and its mutations in the integration test
//! `fuzz_corpus`, inside `make test`.
//!
//! Every body reads its input the same way ([`Input`]): a mode byte (which route or variant, and
//! whether the body is signed correctly or carries the input's own signature), a length-prefixed
//! header field (a signature, an `X-Omneo-Event`, a query, a JSON Logic rule), then the body. A
//! correctly signed body must verify, so the parser behind the signature is always reached.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;
use shared::api_error::parse_json;
use shared::domain::{DataSourceKind, KlaviyoProfileId, KlaviyoTopic};
use shared::install::settings_api::{merge_patch, stored_form};
use shared::klaviyo::models::KlaviyoEvent;
use shared::omneo::models::Profile;
use shared::outbound::mapping::{MappedProfile, event_context, exclusion};
use shared::queue::{IssueBenefit, IssueReward, RecordInteraction, TaskName};
use shared::receivers::klaviyo::{
    FlowCall, SIGNATURE_HEADER as KLAVIYO_SIGNATURE, SystemDelivery,
    TIMESTAMP_HEADER as KLAVIYO_TIMESTAMP, verify_system_signature,
};
use shared::receivers::omneo::{
    ChangedProfile, DeletedProfile, EVENT_HEADER, ProfileTrigger, RecordCall,
    SIGNATURE_HEADER as OMNEO_SIGNATURE, UpsertProfile, metric_event, with_token,
};
use shared::receivers::{HmacKey, SHARED_SECRET_HEADER, verify_shared_secret};
use shared::settings::{Mapping, Settings};

/// The fixed secret the "correctly signed" inputs are signed with.
pub const FUZZ_SECRET: &str = "fuzz-secret-0123456789abcdef";

/// The `Klaviyo-Timestamp` of the correctly signed system-webhook inputs.
const TIMESTAMP: &str = "Wed, 02 Dec 2026 07:00:00 GMT";

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The names of the fuzz targets, each the name of its body here, its file in
/// `tests/fuzz/fuzz_targets/` and its seed folder in `tests/fuzz/corpus/`.
pub const TARGETS: [(&str, Target); 5] = [
    ("klaviyo_webhook", klaviyo_webhook),
    ("omneo_webhook", omneo_webhook),
    ("omneo_event_context", omneo_event_context),
    ("settings", settings),
    ("exclude_logic", exclude_logic),
];

/// A fuzz input: `[mode][n][n bytes of field][body…]` (a short input is all mode, or all field).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Selects the route or variant, and (low bit) a correct signature or the input's own.
    pub mode: u8,
    /// The header field: a signature, an event name, a query or a rule.
    pub field: &'a [u8],
    /// The body.
    pub body: &'a [u8],
}

impl<'a> Input<'a> {
    /// Splits `data` as above.
    pub fn of(data: &'a [u8]) -> Self {
        let mode = data.first().copied().unwrap_or_default();
        let rest = data.get(1..).unwrap_or_default();
        let n = rest.first().copied().map_or(0, usize::from);
        let rest = rest.get(1..).unwrap_or_default();
        let (field, body) = rest.split_at(n.min(rest.len()));
        Self { mode, field, body }
    }

    /// Encodes the parts so that [`Input::of`] gives them back (a field longer than 255 bytes
    /// is cut).
    pub fn encode(mode: u8, field: &[u8], body: &[u8]) -> Vec<u8> {
        let field = &field[..field.len().min(255)];
        let mut data = vec![mode, field.len() as u8];
        data.extend_from_slice(field);
        data.extend_from_slice(body);
        data
    }

    /// Whether the body is to be signed correctly (else the field is the signature).
    fn signed(self) -> bool {
        self.mode & 1 == 1
    }

    /// The field as text (lossy).
    fn field_text(self) -> String {
        String::from_utf8_lossy(self.field).into_owned()
    }
}

fn hex_hmac(parts: &[&[u8]]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(FUZZ_SECRET.as_bytes()).expect("any key length is fine");
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn key() -> HmacKey {
    HmacKey::new(&SecretString::from(FUZZ_SECRET))
}

/// Sets `name` to `value` when the bytes make a header value (a real request could not carry
/// the others).
fn set(headers: &mut HeaderMap, name: &'static str, value: &[u8]) {
    if let Ok(value) = HeaderValue::from_bytes(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// Klaviyo's system webhook (`Klaviyo-Signature` over body ‖ `Klaviyo-Timestamp`, then the batch
/// and each entry's event as the receiver reads them) and, for modes `≥ 0x80`, the three Flow
/// webhooks (`x-omneo-secret`, then the call).
pub fn klaviyo_webhook(data: &[u8]) {
    let input = Input::of(data);
    if input.mode >= 0x80 {
        return klaviyo_flow(input);
    }
    let mut headers = HeaderMap::new();
    if input.signed() {
        set(&mut headers, KLAVIYO_TIMESTAMP, TIMESTAMP.as_bytes());
        let signature = hex_hmac(&[input.body, TIMESTAMP.as_bytes()]);
        set(&mut headers, KLAVIYO_SIGNATURE, signature.as_bytes());
    } else {
        set(&mut headers, KLAVIYO_SIGNATURE, input.field);
        if input.mode & 2 == 2 {
            set(&mut headers, KLAVIYO_TIMESTAMP, input.field);
        }
    }
    let key = key();
    let verified = verify_system_signature(&headers, input.body, std::iter::once(&key));
    if input.signed() {
        assert!(verified.is_ok(), "a correctly signed body must verify");
    }
    if parse_json::<SystemDelivery>(input.body).is_err() {
        return;
    }
    // The batch parsed: each entry's event as the receiver turns it into a consent event.
    let Ok(batch) = serde_json::from_slice::<Value>(input.body) else {
        return;
    };
    let mut external_ids = Vec::new();
    for entry in batch["data"].as_array().into_iter().flatten() {
        let Some(topic) = entry["topic"].as_str().and_then(KlaviyoTopic::from_id) else {
            continue;
        };
        let Ok(event) = serde_json::from_value::<KlaviyoEvent>(entry["payload"]["data"].clone())
        else {
            continue;
        };
        let (profile, _email, event) = event.consent_event(topic);
        let _ = event.is_circular();
        external_ids.push(entry["external_id"].as_str().unwrap_or_default().to_owned());
        let mut parts = vec!["klaviyo-events", "fuzz", profile.as_str()];
        parts.extend(external_ids.iter().map(String::as_str));
        let _ = TaskName::from_parts(&parts);
    }
}

/// The Flow webhooks: the shared secret, then the call of the action the mode names.
fn klaviyo_flow(input: Input<'_>) {
    let mut headers = HeaderMap::new();
    if input.signed() {
        set(&mut headers, SHARED_SECRET_HEADER, FUZZ_SECRET.as_bytes());
    } else {
        set(&mut headers, SHARED_SECRET_HEADER, input.field);
    }
    let secret = SecretString::from(FUZZ_SECRET);
    let verified = verify_shared_secret(&headers, SHARED_SECRET_HEADER, [&secret]);
    if input.signed() {
        assert!(verified.is_ok(), "the right shared secret must verify");
    }
    let parsed = match (input.mode >> 1) % 3 {
        0 => parse_json::<FlowCall<IssueReward>>(input.body).is_ok(),
        1 => parse_json::<FlowCall<IssueBenefit>>(input.body).is_ok(),
        _ => parse_json::<FlowCall<RecordInteraction>>(input.body).is_ok(),
    };
    if parsed
        && let Ok(call) = serde_json::from_slice::<Value>(input.body)
        && let Some(id) = call["person_id"].as_str()
    {
        let _ = KlaviyoProfileId::parse(id.trim());
    }
}

/// Omneo's profile webhook (`X-Omneo-Hmac-SHA256`, `X-Omneo-Event`, the changed or deleted
/// profile) and the three Klaviyo targets (signature or `x-omneo-secret`, then `metric` with its
/// `withToken` query, `upsert-profile-data`, `data-source-record`); `mode >> 1 & 3` is the route.
pub fn omneo_webhook(data: &[u8]) {
    let input = Input::of(data);
    let route = (input.mode >> 1) & 3;
    let mut headers = HeaderMap::new();
    let key = key();
    let verified = if input.signed() {
        let signature = hex_hmac(&[input.body]);
        set(&mut headers, OMNEO_SIGNATURE, signature.as_bytes());
        let verified =
            shared::receivers::verify_hex_hmac(&headers, OMNEO_SIGNATURE, &key, &[input.body]);
        assert!(verified.is_ok(), "a correctly signed body must verify");
        verified
    } else if route != 0 && input.mode & 0x80 == 0x80 {
        set(&mut headers, SHARED_SECRET_HEADER, input.field);
        let secret = SecretString::from(FUZZ_SECRET);
        verify_shared_secret(&headers, SHARED_SECRET_HEADER, [&secret])
    } else {
        set(&mut headers, OMNEO_SIGNATURE, input.field);
        shared::receivers::verify_hex_hmac(&headers, OMNEO_SIGNATURE, &key, &[input.body])
    };
    let _ = verified;
    match route {
        0 => {
            // A correctly signed webhook names its event with the field; an unsigned one has a
            // fixed event, so its body reaches a parser too.
            let event = if input.signed() {
                input.field_text()
            } else {
                ["profile.updated", "profile.deleted"][usize::from(input.mode >> 3 & 1)].into()
            };
            set(&mut headers, EVENT_HEADER, event.as_bytes());
            let event = headers
                .get(EVENT_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .unwrap_or_default();
            match ProfileTrigger::parse(event) {
                Some(ProfileTrigger::Changed) => {
                    let _ = parse_json::<ChangedProfile>(input.body);
                }
                Some(ProfileTrigger::Deleted) => {
                    let _ = parse_json::<DeletedProfile>(input.body);
                }
                None => {}
            }
        }
        1 => {
            let query = input.signed().then(|| input.field_text());
            let _ = with_token(query.as_deref());
            let _ = metric_event(input.body);
        }
        2 => {
            let _ = parse_json::<UpsertProfile>(input.body);
        }
        _ => {
            if parse_json::<RecordCall>(input.body).is_ok()
                && let Ok(call) = serde_json::from_slice::<Value>(input.body)
            {
                let _ = DataSourceKind::from_name(call["data_source"].as_str().unwrap_or_default());
            }
        }
    }
}

/// The settings the event-context target maps under: mappings of each kind of target, and an
/// exclusion rule reading the context.
fn mapping_settings(mode: u8) -> Settings {
    let mapping = |source: &str, target: &str| Mapping {
        source: source.into(),
        target: target.into(),
    };
    Settings {
        phone_default_country: ["AU", "US", "GB", "NZ"][usize::from(mode & 3)].into(),
        mappings: vec![
            mapping("tier.name", "properties.tier"),
            mapping("custom_attributes.prefs.colour", "properties.colour"),
            mapping("address.city", "location.city"),
            mapping("attributes.comms", "properties.comms"),
            mapping("first_name", "title"),
            mapping("tags", "organization"),
        ],
        exclude_logic: Some(
            r#"{"or": [{"in": ["vip", {"var": "tags"}]}, {"==": [{"var": "custom_attributes.prefs.colour"}, "red"]}]}"#
                .into(),
        ),
        ..Settings::default()
    }
}

/// The Omneo event context: a profile as a webhook or the API carries it (the `X-Omneo-Event`
/// field names the trigger), its event context, the exclusions and the mapping to a Klaviyo
/// profile import.
pub fn omneo_event_context(data: &[u8]) {
    let input = Input::of(data);
    let _ = std::str::from_utf8(input.field).map(|event| ProfileTrigger::parse(event.trim()));
    let Ok(profile) = parse_json::<Profile>(input.body) else {
        return;
    };
    let settings = mapping_settings(input.mode);
    let context = event_context(&profile);
    let _ = exclusion(&profile, &context, &settings);
    let mapped = MappedProfile::of(&profile, &context, &settings);
    let _ = serde_json::to_value(&mapped.upsert);
    let _ = profile.identity("klaviyo");
}

/// The settings validator: the body as a PUT (`Settings::from_json`) and as a PATCH merged onto
/// the stored settings; a valid result must validate again and survive its stored form.
pub fn settings(data: &[u8]) {
    let input = Input::of(data);
    let Ok(body) = serde_json::from_slice::<Value>(input.body) else {
        return;
    };
    let document = if input.mode & 1 == 1 {
        body
    } else {
        let Value::Object(patch) = body else {
            return;
        };
        let mut document = stored_form(&mapping_settings(input.mode)).expect("a stored form");
        merge_patch(&mut document, patch);
        Value::Object(document)
    };
    let Ok(settings) = Settings::from_json(&document) else {
        return;
    };
    assert_eq!(settings.validate(), Ok(()), "valid settings validate again");
    let stored = stored_form(&settings).expect("valid settings have a stored form");
    let again = Settings::from_json(&Value::Object(stored));
    assert_eq!(again.as_ref(), Ok(&settings), "the stored form reads back");
    let _ = settings.exclude_logic_value();
}

/// The JSON Logic exclusion: the field is the rule (its text; as a PUT's `exclude_logic` too), the
/// body the data it is evaluated on (a profile's event context when it parses as one). A rule the
/// validator accepts is evaluated; one it refuses never is (as in production).
pub fn exclude_logic(data: &[u8]) {
    let input = Input::of(data);
    let rule = input.field_text();
    let settings = Settings {
        exclude_logic: Some(rule.clone()),
        ..Settings::default()
    };
    if input.mode & 2 == 2
        && let Ok(value) = serde_json::from_str::<Value>(&rule)
    {
        let _ = Settings::from_json(&json!({ "exclude_logic": value }));
    }
    if settings.validate().is_err() {
        return;
    }
    let data = match parse_json::<Profile>(input.body) {
        Ok(profile) => {
            let context = event_context(&profile);
            let _ = exclusion(&profile, &context, &settings);
            context.to_string()
        }
        Err(_) => String::from_utf8_lossy(input.body).into_owned(),
    };
    let _ = settings.excludes(&data);
}
