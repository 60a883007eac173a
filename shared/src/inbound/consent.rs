//! Klaviyo consent events → Omneo comms (product.md §7.2 steps 3–4, and the event → comms →
//! interaction table).
//!
//! [`effect`] is the table: what each topic writes to comms and which interaction records it.
//! [`merge`] folds one profile's events, oldest first, into the one comms update to send:
//! - a later event overrides an earlier one field by field;
//! - a consent field (`X_promo`, `X_optout`) is only written by an event newer than the
//!   channel's consent time Omneo holds (`X_consent_updated_at`): an event delivered late never
//!   undoes a newer choice;
//! - only fields whose value differs from Omneo's are sent, so a batch that changes nothing
//!   writes nothing;
//! - a channel whose consent fields change is stamped with the time of the latest event that set
//!   a changed field (`Y-m-d H:i:s`, UTC); bounces (`X_bounced`) change no consent time.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::domain::{InteractionAction, InteractionChannel, KlaviyoTopic, Signal};
use crate::omneo::models::{Channel, Comms, OmneoTime};
use crate::queue::ConsentEvent;

/// A comms field the inbound side writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CommsField {
    /// `email_promo`.
    EmailPromo,
    /// `email_optout`.
    EmailOptout,
    /// `email_bounced`.
    EmailBounced,
    /// `sms_promo`.
    SmsPromo,
    /// `sms_optout`.
    SmsOptout,
    /// `sms_bounced`.
    SmsBounced,
}

impl CommsField {
    /// The channel the field belongs to.
    pub fn channel(self) -> Channel {
        match self {
            Self::EmailPromo | Self::EmailOptout | Self::EmailBounced => Channel::Email,
            Self::SmsPromo | Self::SmsOptout | Self::SmsBounced => Channel::Sms,
        }
    }

    /// Whether it is a consent field (promo, optout), which moves the channel's consent time.
    pub fn is_consent(self) -> bool {
        !matches!(self, Self::EmailBounced | Self::SmsBounced)
    }

    /// The field's value in `comms`.
    pub fn get(self, comms: &Comms) -> Option<bool> {
        *self.slot(&mut comms.clone())
    }

    /// Sets the field in `comms`.
    pub fn set(self, comms: &mut Comms, value: bool) {
        *self.slot(comms) = Some(value);
    }

    fn slot(self, comms: &mut Comms) -> &mut Option<bool> {
        match self {
            Self::EmailPromo => &mut comms.email_promo,
            Self::EmailOptout => &mut comms.email_optout,
            Self::EmailBounced => &mut comms.email_bounced,
            Self::SmsPromo => &mut comms.sms_promo,
            Self::SmsOptout => &mut comms.sms_optout,
            Self::SmsBounced => &mut comms.sms_bounced,
        }
    }
}

/// What one topic does: the comms it writes and the interaction that records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect {
    /// The comms fields written, with their values.
    pub writes: &'static [(CommsField, bool)],
    /// The interaction's signal.
    pub signal: Signal,
    /// The interaction's action.
    pub action: InteractionAction,
    /// The interaction's channel.
    pub channel: InteractionChannel,
    /// The interaction's name.
    pub name: &'static str,
}

/// The event → comms → interaction table of product.md §7.2.
pub fn effect(topic: KlaviyoTopic) -> Effect {
    use CommsField::*;
    use InteractionAction::{Disclose, Feedback, Reach};
    use InteractionChannel::{Email, Sms};
    use KlaviyoTopic as T;
    use Signal::{Negative, Neutral, Positive};
    let (writes, signal, action, channel, name): (&'static [(CommsField, bool)], _, _, _, _) =
        match topic {
            T::BouncedEmail => (
                &[(EmailBounced, true)],
                Negative,
                Reach,
                Email,
                "Klaviyo: email bounced",
            ),
            T::MarkedEmailAsSpam => (
                &[(EmailPromo, false), (EmailOptout, true)],
                Negative,
                Feedback,
                Email,
                "Klaviyo: email marked as spam",
            ),
            T::SubscribedToEmailMarketing => (
                &[(EmailPromo, true), (EmailOptout, false)],
                Positive,
                Disclose,
                Email,
                "Klaviyo: subscribed to email marketing",
            ),
            T::SubscribedToList => (
                &[(EmailPromo, true), (EmailOptout, false)],
                Positive,
                Disclose,
                Email,
                "Klaviyo: subscribed to a list",
            ),
            T::UnsubscribedFromEmailMarketing => (
                &[(EmailPromo, false)],
                Negative,
                Disclose,
                Email,
                "Klaviyo: unsubscribed from email marketing",
            ),
            T::ManuallySuppressedFromEmailMarketing => (
                &[(EmailOptout, true)],
                Negative,
                Disclose,
                Email,
                "Klaviyo: suppressed from email marketing",
            ),
            T::ManuallyUnsuppressedFromEmailMarketing => (
                &[(EmailOptout, false)],
                Neutral,
                Disclose,
                Email,
                "Klaviyo: unsuppressed from email marketing",
            ),
            T::SubscribedToSmsMarketing => (
                &[(SmsPromo, true), (SmsOptout, false)],
                Positive,
                Disclose,
                Sms,
                "Klaviyo: subscribed to SMS marketing",
            ),
            T::UnsubscribedFromSmsMarketing => (
                &[(SmsPromo, false)],
                Negative,
                Disclose,
                Sms,
                "Klaviyo: unsubscribed from SMS marketing",
            ),
            T::FailedToDeliverSms => (
                &[(SmsBounced, true)],
                Negative,
                Reach,
                Sms,
                "Klaviyo: SMS not delivered",
            ),
            T::UnsubscribedFromList => (
                &[],
                Neutral,
                Disclose,
                Email,
                "Klaviyo: unsubscribed from a list",
            ),
        };
    Effect {
        writes,
        signal,
        action,
        channel,
        name,
    }
}

impl Effect {
    /// Whether the effect can leave email marketing subscribed (it opts in or lifts an opt-out):
    /// what makes the master-list check worth its calls.
    pub fn may_subscribe_email(&self) -> bool {
        self.writes.iter().any(|&(field, value)| {
            matches!(
                (field, value),
                (CommsField::EmailPromo, true) | (CommsField::EmailOptout, false)
            )
        })
    }
}

/// The consent time Omneo holds for a channel.
fn consent_time(comms: &Comms, channel: Channel) -> Option<Timestamp> {
    match channel {
        Channel::Email => comms.email_consent_updated_at,
        Channel::Sms => comms.sms_consent_updated_at,
        _ => None,
    }
    .map(|at| at.0)
}

fn stamp(comms: &mut Comms, channel: Channel, at: Timestamp) {
    let at = Some(OmneoTime(at));
    match channel {
        Channel::Email => comms.email_consent_updated_at = at,
        Channel::Sms => comms.sms_consent_updated_at = at,
        _ => {}
    }
}

/// Whether an event at `at` is older than the consent time Omneo holds (compared to the
/// second, the precision Omneo keeps).
fn is_stale(at: Timestamp, held: Option<Timestamp>) -> bool {
    held.is_some_and(|held| at.as_second() < held.as_second())
}

/// The comms update `events` make to `current`: only the fields that change, with the consent
/// times of the channels whose consent changes; an empty `Comms` (the default) when nothing
/// changes. Events are applied oldest first whatever their order.
pub fn merge<'e>(current: &Comms, events: impl IntoIterator<Item = &'e ConsentEvent>) -> Comms {
    let mut events: Vec<&ConsentEvent> = events.into_iter().collect();
    events.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
    // The value each field ends with, and the time of the event that set it.
    let mut merged: BTreeMap<CommsField, (bool, Timestamp)> = BTreeMap::new();
    for event in events {
        for &(field, value) in effect(event.topic).writes {
            if field.is_consent() && is_stale(event.at, consent_time(current, field.channel())) {
                continue;
            }
            merged.insert(field, (value, event.at));
        }
    }
    let mut update = Comms::default();
    // Per channel (email first): the latest consent choice, and whether it changes a value.
    let mut stamps: BTreeMap<bool, (Timestamp, bool)> = BTreeMap::new();
    for (field, (value, at)) in merged {
        let changes = field.get(current) != Some(value);
        if changes {
            field.set(&mut update, value);
        }
        if field.is_consent() {
            let is_email = field.channel() == Channel::Email;
            let latest = stamps.entry(is_email).or_insert((at, changes));
            *latest = (latest.0.max(at), latest.1 || changes);
        }
    }
    for (is_email, (at, changes)) in stamps {
        let channel = if is_email {
            Channel::Email
        } else {
            Channel::Sms
        };
        // A newer choice stamps its time even when Omneo already holds its value: an older
        // event delivered after it must find it newer, or it would undo the customer's choice.
        // A choice no newer than the held time (a replay, a retry) writes nothing.
        if changes || is_newer(at, consent_time(current, channel)) {
            stamp(&mut update, channel, at);
        }
    }
    update
}

/// Whether `at` is later than the consent time Omneo holds, to the second.
fn is_newer(at: Timestamp, held: Option<Timestamp>) -> bool {
    held.is_none_or(|held| at.as_second() > held.as_second())
}

/// `current` with `update` applied (what Omneo holds after the update).
pub fn applied(current: &Comms, update: &Comms) -> Comms {
    let mut after = current.clone();
    for field in [
        CommsField::EmailPromo,
        CommsField::EmailOptout,
        CommsField::EmailBounced,
        CommsField::SmsPromo,
        CommsField::SmsOptout,
        CommsField::SmsBounced,
    ] {
        if let Some(value) = field.get(update) {
            field.set(&mut after, value);
        }
    }
    after.email_consent_updated_at = update
        .email_consent_updated_at
        .or(after.email_consent_updated_at);
    after.sms_consent_updated_at = update
        .sms_consent_updated_at
        .or(after.sms_consent_updated_at);
    after
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_790_000_000 + second).unwrap()
    }

    fn event(id: &str, topic: KlaviyoTopic, second: i64) -> ConsentEvent {
        ConsentEvent {
            id: id.into(),
            topic,
            at: at(second),
            method: None,
            method_detail: None,
            custom_method_detail: None,
            list_id: None,
        }
    }

    #[test]
    fn every_topic_has_a_row() {
        for topic in KlaviyoTopic::ALL {
            let effect = effect(topic);
            assert!(effect.name.starts_with("Klaviyo: "), "{topic:?}");
        }
        let bounce = effect(KlaviyoTopic::BouncedEmail);
        assert_eq!(bounce.writes, &[(CommsField::EmailBounced, true)]);
        assert_eq!(bounce.signal, Signal::Negative);
        assert!(effect(KlaviyoTopic::UnsubscribedFromList).writes.is_empty());
        assert!(effect(KlaviyoTopic::SubscribedToList).may_subscribe_email());
        assert!(!effect(KlaviyoTopic::SubscribedToSmsMarketing).may_subscribe_email());
    }

    #[test]
    fn events_merge_by_time_whatever_their_order() {
        let current = Comms {
            email_promo: Some(false),
            ..Comms::default()
        };
        let subscribe = event("a", KlaviyoTopic::SubscribedToEmailMarketing, 10);
        let unsubscribe = event("b", KlaviyoTopic::UnsubscribedFromEmailMarketing, 20);
        let update = merge(&current, [&unsubscribe, &subscribe]);
        // Ends unsubscribed: promo stays false; optout false is new; stamped at the latest choice.
        assert_eq!(update.email_promo, None);
        assert_eq!(update.email_optout, Some(false));
        assert_eq!(update.email_consent_updated_at, Some(OmneoTime(at(20))));
        let reversed = merge(&current, [&subscribe, &unsubscribe]);
        assert_eq!(reversed, update);
    }

    #[test]
    fn an_older_choice_sends_nothing() {
        let current = Comms {
            email_promo: Some(true),
            email_optout: Some(false),
            email_consent_updated_at: Some(OmneoTime(at(10))),
            ..Comms::default()
        };
        let update = merge(
            &current,
            [&event("a", KlaviyoTopic::UnsubscribedFromEmailMarketing, 5)],
        );
        assert_eq!(update, Comms::default());
    }

    /// Found by the soak: a customer unsubscribed, then subscribed again; the subscribe arrived
    /// first and found Omneo already subscribed, so nothing was written, and the older
    /// unsubscribe, delivered later, then won.
    #[test]
    fn a_newer_choice_omneo_already_holds_stamps_its_time_so_an_older_one_cannot_undo_it() {
        let current = Comms {
            email_promo: Some(true),
            email_optout: Some(false),
            ..Comms::default()
        };
        let subscribe = event("b", KlaviyoTopic::SubscribedToEmailMarketing, 20);
        let update = merge(&current, [&subscribe]);
        assert_eq!(
            update,
            Comms {
                email_consent_updated_at: Some(OmneoTime(at(20))),
                ..Comms::default()
            }
        );
        let after = applied(&current, &update);
        let unsubscribe = event("a", KlaviyoTopic::UnsubscribedFromEmailMarketing, 10);
        assert_eq!(merge(&after, [&unsubscribe]), Comms::default());
        // Its replay (a retried task) finds the time already held and writes nothing.
        assert_eq!(merge(&after, [&subscribe]), Comms::default());
    }

    #[test]
    fn a_bounce_changes_no_consent_time() {
        let update = merge(
            &Comms::default(),
            [&event("a", KlaviyoTopic::BouncedEmail, 5)],
        );
        assert_eq!(update.email_bounced, Some(true));
        assert_eq!(update.email_consent_updated_at, None);
        assert_eq!(update.sms_consent_updated_at, None);
    }

    #[test]
    fn an_event_older_than_omneos_consent_time_changes_no_consent() {
        let current = Comms {
            email_promo: Some(true),
            email_consent_updated_at: Some(OmneoTime(at(100))),
            ..Comms::default()
        };
        let late = event("a", KlaviyoTopic::UnsubscribedFromEmailMarketing, 50);
        assert_eq!(merge(&current, [&late]), Comms::default());
        let newer = event("b", KlaviyoTopic::UnsubscribedFromEmailMarketing, 150);
        let update = merge(&current, [&newer]);
        assert_eq!(update.email_promo, Some(false));
        assert_eq!(update.email_consent_updated_at, Some(OmneoTime(at(150))));
        // A bounce is no consent change: it applies however old.
        let bounce = event("c", KlaviyoTopic::BouncedEmail, 50);
        assert_eq!(merge(&current, [&bounce]).email_bounced, Some(true));
    }

    #[test]
    fn each_channel_is_stamped_by_its_own_latest_change() {
        let update = merge(
            &Comms::default(),
            [
                &event("a", KlaviyoTopic::UnsubscribedFromSmsMarketing, 30),
                &event("b", KlaviyoTopic::UnsubscribedFromEmailMarketing, 10),
                &event("c", KlaviyoTopic::MarkedEmailAsSpam, 20),
            ],
        );
        assert_eq!(update.email_promo, Some(false));
        assert_eq!(update.email_optout, Some(true));
        assert_eq!(update.sms_promo, Some(false));
        assert_eq!(update.email_consent_updated_at, Some(OmneoTime(at(20))));
        assert_eq!(update.sms_consent_updated_at, Some(OmneoTime(at(30))));
        let after = applied(&Comms::default(), &update);
        assert!(!after.consent(Channel::Email).is_subscribed());
        assert_eq!(
            after.sms_consent_updated_at.map(|t| t.0),
            Some(at(0) + SignedDuration::from_secs(30))
        );
    }
}
