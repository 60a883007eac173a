#!/usr/bin/env python3
"""Drives every endpoint of the Klaviyo simulator through Klaviyo's official Python SDK.

Usage: conformance.py BASE_URL ACCESS_TOKEN

The SDK (PyPI `klaviyo-api`, pinned in requirements.txt next to this file) deserialises every
response into the pydantic models generated from Klaviyo's OpenAPI schemas, so a response the
real Klaviyo could not have sent fails here. Calls whose success has no body (202/204) check that
the simulator accepts the request exactly as the SDK writes it.

The SDK ignores members its schema does not define; this script does not: a member outside the
schema (bar the few klaviyo.md records real responses to carry, in DOCUMENTED_EXTRAS) fails the
call too, so the simulator cannot teach the extension to rely on something Klaviyo never sends.

The calls are the CALLS table, in order; a new simulator endpoint needs a row there. The account
must hold at least one list (the simulator has no endpoint to create one; seed it with
`KlaviyoSim::create_list`). Prints one line per call; exits 1 naming each call that failed.
"""

import importlib.metadata
import json
import pathlib
import re
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

try:
    import pydantic
    from klaviyo_api import KlaviyoAPI
    from openapi_client import models
    from openapi_client.exceptions import ApiException
except ImportError as missing:
    sys.exit(f"{missing}: the Klaviyo SDK is not installed in this Python; run `make venv`")

REQUIREMENTS = pathlib.Path(__file__).with_name("requirements.txt")

# Members outside the OpenAPI schemas that klaviyo.md ("Conventions") records in real responses.
DOCUMENTED_EXTRAS = {"errors[].status", "errors[].meta"}


class Skipped(Exception):
    """A call could not be made because an earlier one failed."""


class Account:
    """What the calls create and find, for the calls after them (None until kept)."""

    def __init__(self):
        self.run = uuid.uuid4().hex[:8]
        self.email = f"sdk-{self.run}@example.com"
        self.other_email = f"sdk-other-{self.run}@example.com"
        self.source_id = self.topic_ids = self.webhook_id = None
        self.profile_id = self.next_link = self.list_id = None
        self.metric_id = None

    def need(self, name):
        """The value an earlier call kept as `name`, or Skipped."""
        value = getattr(self, name)
        if value is None:
            raise Skipped(f"needs {name}, which an earlier call did not provide")
        return value


@dataclass
class Call:
    """One call of the table."""

    name: str
    endpoint: str
    # The model the SDK must return; None for an empty success (202/204).
    expected: Optional[type]
    # `run(sdk, account)` makes the call through the SDK and returns what it returned.
    run: Callable[[Any, Account], Any]
    # `check(result)` complains about the content (a string) or returns None.
    check: Optional[Callable[[Any], Optional[str]]] = None
    # (account attribute, function of the result): what later calls need from this one.
    keep: Optional[tuple] = None


class Conformance:
    """Makes the calls, prints a line for each, remembers the failures."""

    def __init__(self, base_url, access_token):
        # No retries: a 429 or 5xx is a finding, not something to wait out.
        self.sdk = KlaviyoAPI(
            api_key=None, access_token=access_token, test_host=base_url, max_retries=0
        )
        self.account = Account()
        self.failures = []
        self.last_body = None
        # Keep each raw response body, to compare it with what the SDK's models made of it.
        deserialize = self.sdk.api_client.response_deserialize

        def keep_body(response_data, response_types_map=None, exclude_none=False):
            self.last_body = response_data.data
            return deserialize(response_data, response_types_map, exclude_none)

        self.sdk.api_client.response_deserialize = keep_body

    def make(self, call):
        """Makes one call, prints its line, and keeps what later calls need."""
        started = time.monotonic()
        self.last_body = None
        problem = None
        try:
            result = call.run(self.sdk, self.account)
            problem = shape_problem(result, call.expected)
            if problem is None and call.keep:
                # Kept even when a check below fails: the SDK did parse it.
                setattr(self.account, call.keep[0], call.keep[1](result))
            problem = (
                problem
                or extras_problem(result, self.last_body)
                or (call.check(result) if call.check else None)
            )
        except Skipped as skipped:
            problem = f"skipped: {skipped}"
        except pydantic.ValidationError as error:
            problem = describe_validation(error)
        except ApiException as error:
            problem = f"HTTP {error.status}: {one_line(error.body)}"
        except Exception as error:  # noqa: BLE001 — any other failure is a finding too
            problem = f"{type(error).__name__}: {one_line(str(error))}"
        elapsed = (time.monotonic() - started) * 1000
        line = f"{'ok  ' if problem is None else 'FAIL'} {call.name:<36} {call.endpoint:<64}"
        line += f" {elapsed:5.0f} ms"
        print(line if problem is None else f"{line}  {problem}", flush=True)
        if problem is not None:
            self.failures.append(f"{call.name}: {problem}")


def shape_problem(result, expected):
    """Whether the SDK returned what its schema promises (a model, not a bare dict)."""
    if expected is None:
        return None if result is None else f"expected an empty body, got {type(result).__name__}"
    if not isinstance(result, expected):
        return f"expected {expected.__name__}, the SDK returned {type(result).__name__}"
    return None


def extras_problem(result, body):
    """The members of the raw body that the model's schema does not define."""
    if result is None or not body:
        return None
    extras = [
        path
        for path in undefined_members(result, json.loads(body), "")
        if re.sub(r"\[\d+\]", "[]", path) not in DOCUMENTED_EXTRAS
    ]
    if not extras:
        return None
    listed = ", ".join(extras[:8]) + (" …" if len(extras) > 8 else "")
    return f"members outside Klaviyo's schema: {listed}"


def undefined_members(model, raw, path):
    """Walks `raw` beside the model parsed from it, yielding the paths of undefined members."""
    if isinstance(model, pydantic.BaseModel) and isinstance(raw, dict):
        fields = {info.alias or name: name for name, info in type(model).model_fields.items()}
        for key, value in raw.items():
            where = f"{path}.{key}" if path else key
            if key not in fields:
                yield where
            else:
                yield from undefined_members(getattr(model, fields[key]), value, where)
    elif isinstance(model, list) and isinstance(raw, list):
        for index, (item, raw_item) in enumerate(zip(model, raw)):
            yield from undefined_members(item, raw_item, f"{path}[{index}]")


def describe_validation(error):
    """The schema violations of a pydantic error on one line: `model: loc: message`."""
    details = "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']} (got {item.get('input')!r})"
        for item in error.errors()[:5]
    )
    more = "" if error.error_count() <= 5 else f" (+{error.error_count() - 5} more)"
    return f"not in Klaviyo's schema: {error.title}: {details}{more}"


def one_line(text, limit=300):
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit] + "…"


# ---- checks of the content ----


def non_empty(what):
    """The collection holds something, so the schema was applied to its items."""
    return lambda result: None if result.data else f"no {what} returned: nothing was validated"


def email_consent(expected):
    """A profile's email marketing consent is `expected`."""

    def check(result):
        subscriptions = result.data.attributes.subscriptions
        actual = subscriptions.email.marketing.consent if subscriptions else None
        return None if actual == expected else f"email consent {actual}, expected {expected}"

    return check


def has_link(member):
    """A page's `links.<member>` is set."""
    return lambda result: None if getattr(result.links, member, None) else f"no links.{member}"


def failed_with(status, run):
    """Runs a call that must fail with `status`; returns Klaviyo's error document, as parsed by
    the SDK's error model."""

    def run_expecting_error(sdk, account):
        try:
            run(sdk, account)
        except ApiException as error:
            if error.status != status:
                raise
            return models.GetAccounts4XXResponse.from_json(error.body)
        raise AssertionError(f"expected HTTP {status}, the call succeeded")

    return run_expecting_error


# ---- request documents, as a caller of the SDK writes them ----


def data_source(a):
    return {"data": {"type": "data-source", "attributes": {"title": f"SDK {a.run}"}}}


def record_job(a, job_type, numbers):
    """A record job: one record (`…-create-job`) or several (`…-bulk-create-job`)."""
    records = [
        {"type": "data-source-record", "attributes": {"record": {"id": n, "points": 10 * n}}}
        for n in numbers
    ]
    attributes = (
        {"data-source-records": {"data": records}}
        if job_type == "data-source-record-bulk-create-job"
        else {"data-source-record": {"data": records[0]}}
    )
    source = {"type": "data-source", "id": a.need("source_id")}
    relationships = {"data-source": {"data": source}}
    return {"data": {"type": job_type, "attributes": attributes, "relationships": relationships}}


def webhook(a, attributes, topic_count, webhook_id=None):
    """A webhook document subscribed to the first `topic_count` topics."""
    topics = [{"type": "webhook-topic", "id": t} for t in a.need("topic_ids")[:topic_count]]
    data = {"type": "webhook", "attributes": attributes}
    data["relationships"] = {"webhook-topics": {"data": topics}}
    if webhook_id is not None:
        data["id"] = webhook_id
    return {"data": data}


NEW_WEBHOOK = {
    "name": "SDK conformance",
    "description": "conformance",
    "endpoint_url": "https://hooks.example.com/klaviyo/abc",
    "secret_key": "s3cret",
}


def profile(email, external_id, first_name):
    attributes = {"email": email, "external_id": external_id, "first_name": first_name}
    attributes["location"] = {"city": "Melbourne", "country": "AU"}
    attributes["properties"] = {"tier": "gold"}
    return {"data": {"type": "profile", "attributes": attributes}}


def bulk_import(a):
    """A bulk import job of two profiles, one of them without an identifier (an import error)."""
    good = profile(f"bulk-{a.email}", f"bulk-{a.run}", "Bea")["data"]
    bad = {"type": "profile", "attributes": {"first_name": "Nobody"}}
    attributes = {"profiles": {"data": [good, bad]}}
    return {"data": {"type": "profile-bulk-import-job", "attributes": attributes}}


def consent_job(a, job_type, consent, with_list):
    """A subscribe or unsubscribe job for `a.email`'s email marketing."""
    subscriptions = {"email": {"marketing": {"consent": consent}}}
    one = {"type": "profile", "attributes": {"email": a.email, "subscriptions": subscriptions}}
    data = {"type": job_type, "attributes": {"profiles": {"data": [one]}}}
    if consent == "SUBSCRIBED":
        data["attributes"]["custom_source"] = "omneo"
    if with_list:
        data["relationships"] = {"list": {"data": {"type": "list", "id": a.need("list_id")}}}
    return {"data": data}


def event(a):
    attributes = {"properties": {"points": 120}, "value": 12.5, "unique_id": uuid.uuid4().hex}
    attributes["time"] = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    attributes["metric"] = {"data": {"type": "metric", "attributes": {"name": "Points Earned"}}}
    attributes["profile"] = {"data": {"type": "profile", "attributes": {"email": a.email}}}
    return {"data": {"type": "event", "attributes": attributes}}


def deletion(email):
    identified = {"data": {"type": "profile", "attributes": {"email": email}}}
    return {"data": {"type": "data-privacy-deletion-job", "attributes": {"profile": identified}}}


def cursor_of(next_link):
    """The `page[cursor]` of a `links.next` URL."""
    query = urllib.parse.urlsplit(next_link).query
    return urllib.parse.parse_qs(query)["page[cursor]"][0]


def both_emails(a):
    return f'any(email,["{a.email}","{a.other_email}"])'


def metric_named(name):
    """The id of the metric called `name` in a collection of metrics (None when absent)."""
    return lambda result: next((m.id for m in result.data if m.attributes.name == name), None)


def subscribed_today(a):
    """The events of the kept metric since yesterday, filtered as reconciliation does."""
    since = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f'equals(metric_id,"{a.need("metric_id")}"),greater-than(datetime,{since})'


def read_profile(sdk, a):
    profile_id = a.need("profile_id")
    return sdk.Profiles.get_profile(profile_id, additional_fields_profile=["subscriptions"])


# ---- the calls, in order ----

ONE_PROFILE = models.GetProfileResponsePluralConversationsCompoundDocument
PROFILES = models.GetProfileResponsePluralConversationsCollectionCompoundDocument
PROFILE_WITH_SUBSCRIPTIONS = "GET /api/profiles/{id}?additional-fields[profile]=subscriptions"
RECORD_JOB = "data-source-record-create-job"
BULK_RECORD_JOB = "data-source-record-bulk-create-job"
SUBSCRIBE_JOB = "profile-subscription-bulk-create-job"
UNSUBSCRIBE_JOB = "profile-subscription-bulk-delete-job"
UNKNOWN_PROFILE = "01JZZZZZZZZZZZZZZZZZZZZZZZ"

CALLS = [
    Call(
        "get_accounts",
        "GET /api/accounts",
        models.GetAccountResponseCollection,
        lambda sdk, a: sdk.Accounts.get_accounts(),
        check=non_empty("account"),
    ),
    # Data sources and their records.
    Call(
        "create_data_source",
        "POST /api/data-sources",
        models.PostDataSourceResponse,
        lambda sdk, a: sdk.Custom_Objects.create_data_source(data_source(a)),
        keep=("source_id", lambda result: result.data.id),
    ),
    Call(
        "get_data_sources",
        "GET /api/data-sources",
        models.GetDataSourceResponseCollection,
        lambda sdk, a: sdk.Custom_Objects.get_data_sources(),
        check=non_empty("data source"),
    ),
    Call(
        "get_data_source",
        "GET /api/data-sources/{id}",
        models.GetDataSourceResponse,
        lambda sdk, a: sdk.Custom_Objects.get_data_source(a.need("source_id")),
    ),
    Call(
        "create_data_source_record",
        "POST /api/data-source-record-create-jobs",
        None,
        lambda sdk, a: sdk.Custom_Objects.create_data_source_record(record_job(a, RECORD_JOB, [1])),
    ),
    Call(
        "bulk_create_data_source_records",
        "POST /api/data-source-record-bulk-create-jobs",
        None,
        lambda sdk, a: sdk.Custom_Objects.bulk_create_data_source_records(
            record_job(a, BULK_RECORD_JOB, [2, 3])
        ),
    ),
    Call(
        "delete_data_source",
        "DELETE /api/data-sources/{id}",
        None,
        lambda sdk, a: sdk.Custom_Objects.delete_data_source(a.need("source_id")),
    ),
    # Webhooks.
    Call(
        "get_webhook_topics",
        "GET /api/webhook-topics",
        models.GetWebhookTopicResponseCollection,
        lambda sdk, a: sdk.Webhooks.get_webhook_topics(),
        check=non_empty("webhook topic"),
        keep=("topic_ids", lambda result: [topic.id for topic in result.data]),
    ),
    Call(
        "create_webhook",
        "POST /api/webhooks",
        models.PostWebhookResponse,
        lambda sdk, a: sdk.Webhooks.create_webhook(webhook(a, NEW_WEBHOOK, topic_count=2)),
        keep=("webhook_id", lambda result: result.data.id),
    ),
    Call(
        "get_webhooks",
        "GET /api/webhooks",
        models.GetWebhookResponseCollectionCompoundDocument,
        lambda sdk, a: sdk.Webhooks.get_webhooks(),
        check=non_empty("webhook"),
    ),
    Call(
        "get_webhook",
        "GET /api/webhooks/{id}",
        models.GetWebhookResponseCompoundDocument,
        lambda sdk, a: sdk.Webhooks.get_webhook(a.need("webhook_id")),
    ),
    Call(
        "update_webhook",
        "PATCH /api/webhooks/{id}",
        models.PatchWebhookResponse,
        lambda sdk, a: sdk.Webhooks.update_webhook(
            a.need("webhook_id"), webhook(a, {"enabled": False}, 1, webhook_id=a.webhook_id)
        ),
    ),
    Call(
        "delete_webhook",
        "DELETE /api/webhooks/{id}",
        None,
        lambda sdk, a: sdk.Webhooks.delete_webhook(a.need("webhook_id")),
    ),
    # Profiles.
    Call(
        "create_or_update_profile (new: 201)",
        "POST /api/profile-import",
        models.PostProfileResponse,
        lambda sdk, a: sdk.Profiles.create_or_update_profile(profile(a.email, a.run, "Ada")),
        keep=("profile_id", lambda result: result.data.id),
    ),
    Call(
        "create_or_update_profile (same: 200)",
        "POST /api/profile-import",
        models.PostProfileResponse,
        lambda sdk, a: sdk.Profiles.create_or_update_profile(profile(a.email, a.run, "Ada L.")),
    ),
    Call(
        "create_or_update_profile (another)",
        "POST /api/profile-import",
        models.PostProfileResponse,
        lambda sdk, a: sdk.Profiles.create_or_update_profile(
            profile(a.other_email, f"other-{a.run}", "Grace")
        ),
    ),
    Call(
        "get_profile",
        PROFILE_WITH_SUBSCRIPTIONS,
        ONE_PROFILE,
        read_profile,
        check=email_consent("NEVER_SUBSCRIBED"),
    ),
    Call(
        "get_profiles (filter)",
        "GET /api/profiles?filter=equals(external_id,…)",
        PROFILES,
        lambda sdk, a: sdk.Profiles.get_profiles(
            filter=f'equals(external_id,"{a.run}")', additional_fields_profile=["subscriptions"]
        ),
        check=non_empty("profile"),
    ),
    Call(
        "get_profiles (page 1 of 2)",
        "GET /api/profiles?filter=any(email,…)&page[size]=1",
        PROFILES,
        lambda sdk, a: sdk.Profiles.get_profiles(filter=both_emails(a), page_size=1),
        check=has_link("next"),
        keep=("next_link", lambda result: result.links.next),
    ),
    Call(
        "get_profiles (page 2 of 2)",
        "GET /api/profiles?filter=any(email,…)&page[cursor]=…",
        PROFILES,
        lambda sdk, a: sdk.Profiles.get_profiles(
            filter=both_emails(a),
            page_size=1,
            page_cursor=cursor_of(a.need("next_link")),
        ),
        check=has_link("prev"),
    ),
    Call(
        "get_profile (unknown id: 404)",
        "GET /api/profiles/{id}",
        models.GetAccounts4XXResponse,
        failed_with(404, lambda sdk, a: sdk.Profiles.get_profile(UNKNOWN_PROFILE)),
    ),
    # Bulk profile import.
    Call(
        "bulk_import_profiles",
        "POST /api/profile-bulk-import-jobs",
        models.PostProfileImportJobResponse,
        lambda sdk, a: sdk.Profiles.bulk_import_profiles(bulk_import(a)),
        keep=("bulk_job_id", lambda result: result.data.id),
    ),
    Call(
        "get_bulk_import_profiles_job",
        "GET /api/profile-bulk-import-jobs/{id}",
        models.GetProfileImportJobResponseCompoundDocument,
        lambda sdk, a: sdk.Profiles.get_bulk_import_profiles_job(a.need("bulk_job_id")),
    ),
    Call(
        "get_errors_for_bulk_import_profiles_job",
        "GET /api/profile-bulk-import-jobs/{id}/import-errors",
        models.GetImportErrorResponseCollection,
        lambda sdk, a: sdk.Profiles.get_errors_for_bulk_import_profiles_job(a.need("bulk_job_id")),
    ),
    Call(
        "get_profile_ids_for_bulk_import_profiles_job",
        "GET /api/profile-bulk-import-jobs/{id}/relationships/profiles",
        models.GetProfileBulkImportJobProfilesRelationshipsResponseCollection,
        lambda sdk, a: sdk.Profiles.get_profile_ids_for_bulk_import_profiles_job(
            a.need("bulk_job_id")
        ),
    ),
    # Lists and consent.
    Call(
        "get_lists",
        "GET /api/lists",
        models.GetListListResponseCollectionCompoundDocument,
        lambda sdk, a: sdk.Lists.get_lists(),
        check=non_empty("list (seed one with KlaviyoSim::create_list)"),
        keep=("list_id", lambda result: result.data[0].id if result.data else None),
    ),
    Call(
        "get_list",
        "GET /api/lists/{id}",
        models.GetListRetrieveResponseCompoundDocument,
        lambda sdk, a: sdk.Lists.get_list(a.need("list_id")),
    ),
    Call(
        "bulk_subscribe_profiles",
        "POST /api/profile-subscription-bulk-create-jobs",
        None,
        lambda sdk, a: sdk.Profiles.bulk_subscribe_profiles(
            consent_job(a, SUBSCRIBE_JOB, "SUBSCRIBED", with_list=True)
        ),
    ),
    Call(
        "get_profile_ids_for_list",
        "GET /api/lists/{id}/relationships/profiles?filter=…",
        models.GetListProfilesRelationshipsResponseCollection,
        lambda sdk, a: sdk.Lists.get_profile_ids_for_list(
            a.need("list_id"), filter=f'equals(email,"{a.email}")'
        ),
        check=non_empty("list member"),
    ),
    Call(
        "get_profile (subscribed)",
        PROFILE_WITH_SUBSCRIPTIONS,
        ONE_PROFILE,
        read_profile,
        check=email_consent("SUBSCRIBED"),
    ),
    Call(
        "bulk_unsubscribe_profiles",
        "POST /api/profile-subscription-bulk-delete-jobs",
        None,
        lambda sdk, a: sdk.Profiles.bulk_unsubscribe_profiles(
            consent_job(a, UNSUBSCRIBE_JOB, "UNSUBSCRIBED", with_list=False)
        ),
    ),
    Call(
        "get_profile (unsubscribed)",
        PROFILE_WITH_SUBSCRIPTIONS,
        ONE_PROFILE,
        read_profile,
        check=email_consent("UNSUBSCRIBED"),
    ),
    # Metrics and events: the subscription above made a "Subscribed to Email Marketing" event.
    Call(
        "get_metrics",
        "GET /api/metrics",
        models.GetMetricResponseCollectionCompoundDocument,
        lambda sdk, a: sdk.Metrics.get_metrics(),
        check=non_empty("metric"),
        keep=("metric_id", metric_named("Subscribed to Email Marketing")),
    ),
    Call(
        "get_events (filter)",
        "GET /api/events?filter=equals(metric_id,…),greater-than(datetime,…)",
        models.GetEventResponseCollectionCompoundDocument,
        lambda sdk, a: sdk.Events.get_events(
            filter=subscribed_today(a), sort="datetime", page_size=10
        ),
        check=non_empty("event"),
    ),
    # Events and deletion.
    Call(
        "create_event",
        "POST /api/events",
        None,
        lambda sdk, a: sdk.Events.create_event(event(a)),
    ),
    Call(
        "request_profile_deletion",
        "POST /api/data-privacy-deletion-jobs",
        None,
        lambda sdk, a: sdk.Data_Privacy.request_profile_deletion(deletion(a.other_email)),
    ),
]


def version_problem():
    """Why the installed SDK is not the one requirements.txt pins (None when it is)."""
    pinned = next(
        line.split("==", 1)[1].strip()
        for line in REQUIREMENTS.read_text().splitlines()
        if line.startswith("klaviyo-api==")
    )
    installed = importlib.metadata.version("klaviyo-api")
    if installed == pinned:
        return None
    return f"klaviyo-api {installed} is installed but {REQUIREMENTS.name} pins {pinned}"


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    problem = version_problem()
    if problem:
        print(f"{problem}: run `make venv`", file=sys.stderr)
        return 2
    started = time.monotonic()
    conformance = Conformance(argv[1], argv[2])
    for call in CALLS:
        conformance.make(call)
    elapsed = time.monotonic() - started
    failures = conformance.failures
    if failures:
        print(f"\n{len(failures)} of {len(CALLS)} calls failed ({elapsed:.1f} s):", flush=True)
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print(f"\nall {len(CALLS)} calls parsed by the Klaviyo SDK ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
