//! Marketing consent, Omneo → Klaviyo (product.md §6.2 step 6, §6.4).
//!
//! Omneo is the source of truth. A channel is subscribed iff `X_promo` is not `false`, `X_optout`
//! is not `true` and `X_bounced` is not `true` (null passes); email needs an email, SMS a phone
//! that normalised to E.164. Each channel is compared with Klaviyo's current consent and written
//! only on a difference: subscribe (the master list attached whenever email is subscribed) or
//! unsubscribe (never naming a list: Klaviyo would unsubscribe non-members globally anyway, and
//! members would only leave the list), always with `custom_source: omneo`, which is what lets the
//! inbound side drop the echo. A profile without a comms object says nothing about consent, so
//! nothing is written.
//!
//! **Omneo's changes win; Klaviyo's are carried back** (ours, found by the soak): a channel whose
//! desired state equals what this extension last sent for the profile (`last_sent`, from the sync
//! state) has not changed in Omneo since; if Klaviyo differs, the customer changed it in Klaviyo
//! and that change is on its way to Omneo through the inbound path, so it is left alone — writing
//! Omneo's older state would undo the customer's newer choice. A profile never synced before has
//! nothing last sent, so Omneo's state is written.
//!
//! **Resyncs** (ours): when the Klaviyo profile existed before this sync, consent Omneo recorded
//! at a known time (`email_consent_updated_at`, `sms_consent_updated_at`) is imported as history
//! (`historical_import` with that time), so Klaviyo sends no confirmation for a choice the
//! customer made long ago. A profile new to Klaviyo is subscribed the ordinary way.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::domain::{ConsentState, E164Phone};
use crate::klaviyo::models::{
    ChannelConsent, SubscribeJob, Subscriber, Subscriptions, UnsubscribeJob,
};
use crate::omneo::models::{Channel, Comms};
use crate::queue::OUR_CUSTOM_SOURCE;
use crate::store::ConsentSent;

/// What Omneo wants per channel (`None`: nothing to say — no comms, or no email/phone).
pub fn desired(comms: Option<&Comms>, has_email: bool, phone: Option<&E164Phone>) -> ConsentSent {
    let Some(comms) = comms else {
        return ConsentSent::default();
    };
    ConsentSent {
        email: has_email.then(|| comms.consent(Channel::Email)),
        sms: phone.map(|_| comms.consent(Channel::Sms)),
    }
}

/// Klaviyo's current marketing consent per channel; a profile without subscriptions (a new one)
/// is not subscribed, and a state Klaviyo added after this code is unknown (`None`).
pub fn current(subscriptions: Option<&Subscriptions>) -> ConsentSent {
    let state = |consent: Option<&ChannelConsent>| {
        consent.map_or(Some(ConsentState::NotSubscribed), |c| c.consent.state())
    };
    let email = subscriptions
        .and_then(|s| s.email.as_ref())
        .and_then(|e| e.marketing.as_ref());
    let sms = subscriptions
        .and_then(|s| s.sms.as_ref())
        .and_then(|s| s.marketing.as_ref());
    ConsentSent {
        email: state(email),
        sms: state(sms),
    }
}

/// The consent writes one sync makes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsentWrites {
    /// Subscribe jobs (one per distinct historical consent time; usually one or none).
    pub subscribe: Vec<SubscribeJob>,
    /// The unsubscribe job, when a channel must be unsubscribed.
    pub unsubscribe: Option<UnsubscribeJob>,
}

impl ConsentWrites {
    /// How many Klaviyo calls these writes take.
    pub fn calls(&self) -> usize {
        self.subscribe.len() + usize::from(self.unsubscribe.is_some())
    }
}

/// Who the consent writes are for, and how.
#[derive(Debug, Clone, Copy)]
pub struct ConsentTarget<'a> {
    /// The profile's email.
    pub email: Option<&'a str>,
    /// The profile's E.164 phone.
    pub phone: Option<&'a E164Phone>,
    /// The tenant's master list.
    pub master_list: Option<&'a str>,
    /// Whether this is a resync (the Klaviyo profile existed before): known consent times are
    /// imported as history.
    pub resync: bool,
    /// What this extension last sent for the profile (the sync state's; default when none).
    pub last_sent: ConsentSent,
}

/// The writes that bring Klaviyo's consent (`current`) to Omneo's (`desired`), on the channels
/// Omneo changed since `target.last_sent` (see the module docs).
pub fn writes(
    desired: ConsentSent,
    current: ConsentSent,
    comms: Option<&Comms>,
    target: ConsentTarget<'_>,
) -> ConsentWrites {
    // A channel moves to `state` when Omneo wants it, Klaviyo lacks it, and Omneo changed the
    // channel since it was last sent.
    let moves = |want: Option<ConsentState>,
                 have: Option<ConsentState>,
                 sent: Option<ConsentState>,
                 state: ConsentState| {
        want == Some(state) && have != Some(state) && sent != want
    };
    let last = target.last_sent;
    let email_moves_to = |state| moves(desired.email, current.email, last.email, state);
    let sms_moves_to = |state| moves(desired.sms, current.sms, last.sms, state);
    let consented_at =
        |at: Option<crate::omneo::models::OmneoTime>| at.filter(|_| target.resync).map(|at| at.0);
    // Channels to subscribe, grouped by the consent time they are imported with.
    let mut subscribe: BTreeMap<Option<Timestamp>, Subscriber> = BTreeMap::new();
    if email_moves_to(ConsentState::Subscribed) {
        let at = consented_at(comms.and_then(|c| c.email_consent_updated_at));
        subscribe.entry(at).or_default().email_marketing = true;
    }
    if sms_moves_to(ConsentState::Subscribed) {
        let at = consented_at(comms.and_then(|c| c.sms_consent_updated_at));
        subscribe.entry(at).or_default().sms_marketing = true;
    }
    let subscribe = subscribe
        .into_iter()
        .map(|(at, mut subscriber)| {
            subscriber.email = target.email.map(str::to_owned);
            subscriber.phone_number = target.phone.cloned();
            subscriber.consented_at = at;
            SubscribeJob {
                list_id: target
                    .master_list
                    .filter(|_| subscriber.email_marketing)
                    .map(str::to_owned),
                subscribers: vec![subscriber],
                custom_source: Some(OUR_CUSTOM_SOURCE.into()),
                historical_import: at.is_some(),
            }
        })
        .collect();
    let unsubscriber = Subscriber {
        email: target.email.map(str::to_owned),
        phone_number: target.phone.cloned(),
        email_marketing: email_moves_to(ConsentState::NotSubscribed) && current.email.is_some(),
        sms_marketing: sms_moves_to(ConsentState::NotSubscribed) && current.sms.is_some(),
        consented_at: None,
    };
    let unsubscribe =
        (unsubscriber.email_marketing || unsubscriber.sms_marketing).then(|| UnsubscribeJob {
            subscribers: vec![unsubscriber],
            list_id: None,
            custom_source: Some(OUR_CUSTOM_SOURCE.into()),
        });
    ConsentWrites {
        subscribe,
        unsubscribe,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::omneo::models::OmneoTime;

    const SUB: Option<ConsentState> = Some(ConsentState::Subscribed);
    const NOT: Option<ConsentState> = Some(ConsentState::NotSubscribed);

    fn comms(value: serde_json::Value) -> Comms {
        serde_json::from_value(value).unwrap()
    }

    fn phone() -> E164Phone {
        E164Phone::parse("+61412345678").unwrap()
    }

    #[test]
    fn the_truth_table_of_one_channel() {
        // (promo, optout, bounced) → subscribed? for every combination of null/true/false.
        let values = [json!(null), json!(true), json!(false)];
        for promo in &values {
            for optout in &values {
                for bounced in &values {
                    let expected =
                        promo != &json!(false) && optout != &json!(true) && bounced != &json!(true);
                    let c = comms(json!({
                        "email_promo": promo, "email_optout": optout, "email_bounced": bounced,
                        "sms_promo": promo, "sms_optout": optout, "sms_bounced": bounced}));
                    let want = desired(Some(&c), true, Some(&phone()));
                    let state = Some(ConsentState::from_subscribed(expected));
                    assert_eq!(
                        want,
                        ConsentSent {
                            email: state,
                            sms: state
                        },
                        "{promo} {optout} {bounced}"
                    );
                }
            }
        }
    }

    #[test]
    fn channels_without_an_identifier_or_comms_say_nothing() {
        let c = comms(json!({"email_promo": true, "sms_promo": true}));
        assert_eq!(
            desired(Some(&c), true, None),
            ConsentSent {
                email: SUB,
                sms: None
            }
        );
        assert_eq!(
            desired(Some(&c), false, Some(&phone())),
            ConsentSent {
                email: None,
                sms: SUB
            }
        );
        assert_eq!(desired(None, true, Some(&phone())), ConsentSent::default());
    }

    fn target(master_list: Option<&'static str>, resync: bool) -> ConsentTarget<'static> {
        static PHONE: std::sync::LazyLock<E164Phone> = std::sync::LazyLock::new(phone);
        ConsentTarget {
            email: Some("a@shop.test"),
            phone: Some(&PHONE),
            master_list,
            resync,
            last_sent: ConsentSent::default(),
        }
    }

    #[test]
    fn a_channel_omneo_has_not_changed_since_it_was_sent_is_left_to_klaviyo() {
        let omneo = ConsentSent {
            email: NOT,
            sms: SUB,
        };
        let klaviyo = ConsentSent {
            email: SUB,
            sms: NOT,
        };
        // Email was last sent as it is now (the customer subscribed in Klaviyo since, and that is
        // on its way to Omneo); SMS changed in Omneo since it was last sent.
        let last_sent = ConsentSent {
            email: NOT,
            sms: NOT,
        };
        let w = writes(
            omneo,
            klaviyo,
            None,
            ConsentTarget {
                last_sent,
                ..target(None, true)
            },
        );
        assert!(w.unsubscribe.is_none(), "{w:?}");
        assert_eq!(w.subscribe.len(), 1);
        let subscriber = &w.subscribe[0].subscribers[0];
        assert!(subscriber.sms_marketing && !subscriber.email_marketing);
        // Never sent before: Omneo's state is written on both channels.
        let first = writes(omneo, klaviyo, None, target(None, true));
        assert_eq!(first.calls(), 2);
    }

    #[test]
    fn only_differences_are_written() {
        let same = writes(
            ConsentSent {
                email: SUB,
                sms: NOT,
            },
            ConsentSent {
                email: SUB,
                sms: NOT,
            },
            None,
            target(None, false),
        );
        assert_eq!(same.calls(), 0);
        let unknown_stays = writes(
            ConsentSent {
                email: NOT,
                sms: None,
            },
            ConsentSent {
                email: None,
                sms: SUB,
            },
            None,
            target(None, false),
        );
        assert_eq!(
            unknown_stays.calls(),
            0,
            "an unknown Klaviyo state is not unsubscribed blindly; no SMS wish"
        );
    }

    #[test]
    fn subscribing_email_carries_the_master_list_and_the_source() {
        let w = writes(
            ConsentSent {
                email: SUB,
                sms: SUB,
            },
            ConsentSent {
                email: NOT,
                sms: NOT,
            },
            None,
            target(Some("MASTER"), false),
        );
        assert_eq!(w.calls(), 1);
        let job = &w.subscribe[0];
        assert_eq!(job.list_id.as_deref(), Some("MASTER"));
        assert_eq!(job.custom_source.as_deref(), Some(OUR_CUSTOM_SOURCE));
        assert!(!job.historical_import);
        assert!(job.subscribers[0].email_marketing && job.subscribers[0].sms_marketing);
        let sms_only = writes(
            ConsentSent {
                email: SUB,
                sms: SUB,
            },
            ConsentSent {
                email: SUB,
                sms: NOT,
            },
            None,
            target(Some("MASTER"), false),
        );
        assert_eq!(
            sms_only.subscribe[0].list_id, None,
            "SMS alone never touches the master list"
        );
    }

    #[test]
    fn unsubscribing_names_no_list_and_keeps_the_source() {
        let w = writes(
            ConsentSent {
                email: NOT,
                sms: NOT,
            },
            ConsentSent {
                email: SUB,
                sms: NOT,
            },
            None,
            target(Some("MASTER"), false),
        );
        let job = w.unsubscribe.unwrap();
        assert_eq!(job.list_id, None);
        assert_eq!(job.custom_source.as_deref(), Some(OUR_CUSTOM_SOURCE));
        assert!(job.subscribers[0].email_marketing && !job.subscribers[0].sms_marketing);
        assert!(w.subscribe.is_empty());
    }

    #[test]
    fn resyncs_import_known_consent_times_as_history() {
        let c = comms(
            json!({"email_promo": true, "email_consent_updated_at": "2025-05-01 10:00:00",
            "sms_promo": true, "sms_consent_updated_at": "2025-06-01 10:00:00"}),
        );
        let want = desired(Some(&c), true, Some(&phone()));
        let none = ConsentSent {
            email: NOT,
            sms: NOT,
        };
        let resync = writes(want, none, Some(&c), target(None, true));
        assert_eq!(resync.subscribe.len(), 2, "two consent times, two jobs");
        assert_eq!(
            resync.subscribe[0].subscribers[0].consented_at,
            Some(OmneoTime::parse("2025-05-01 10:00:00").unwrap().0)
        );
        assert!(resync.subscribe[0].historical_import);
        assert!(resync.subscribe[0].subscribers[0].email_marketing);
        assert!(resync.subscribe[1].subscribers[0].sms_marketing);
        let first = writes(want, none, Some(&c), target(None, false));
        assert_eq!(first.subscribe.len(), 1);
        assert_eq!(
            (
                first.subscribe[0].historical_import,
                first.subscribe[0].subscribers[0].consented_at
            ),
            (false, None),
            "a new profile subscribes the ordinary way"
        );
    }
}
