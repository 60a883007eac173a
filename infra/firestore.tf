# Tenant state: the default Firestore database (native mode), the TTL policies that delete
# expired documents and the composite indexes the store's queries need. All three mirror
# declarations in shared/src/store (TTL_FIELDS, FailureQuery::indexes); the infra tests fail
# when they drift apart.

resource "google_firestore_database" "default" {
  name        = "(default)"
  location_id = var.firestore_location
  type        = "FIRESTORE_NATIVE"
  # Transactions take pessimistic locks, as the store's read-modify-writes expect.
  concurrency_mode                  = "PESSIMISTIC"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = var.deletion_protection ? "ABANDON" : "DELETE"

  depends_on = [google_project_service.apis]
}

locals {
  # TTL_FIELDS: collection => its Timestamp field. Pending OAuth states live 10 minutes and
  # idempotency markers at least 48 hours; Firestore deletes them within about a day after.
  ttl_fields = {
    oauth_states = "expires_at"
    processed    = "expires_at"
  }

  # FailureQuery::indexes: the failures listing (GET /{tenant}/api/v1/failures) filters on
  # tenant (and task_kind, severity when asked) and orders by at, then the document name, both
  # descending. One composite index per filter combination.
  failure_indexes = {
    tenant = [
      { field = "tenant", order = "ASCENDING" },
      { field = "at", order = "DESCENDING" },
      { field = "__name__", order = "DESCENDING" },
    ]
    tenant_kind = [
      { field = "tenant", order = "ASCENDING" },
      { field = "task_kind", order = "ASCENDING" },
      { field = "at", order = "DESCENDING" },
      { field = "__name__", order = "DESCENDING" },
    ]
    tenant_severity = [
      { field = "tenant", order = "ASCENDING" },
      { field = "severity", order = "ASCENDING" },
      { field = "at", order = "DESCENDING" },
      { field = "__name__", order = "DESCENDING" },
    ]
    tenant_kind_severity = [
      { field = "tenant", order = "ASCENDING" },
      { field = "task_kind", order = "ASCENDING" },
      { field = "severity", order = "ASCENDING" },
      { field = "at", order = "DESCENDING" },
      { field = "__name__", order = "DESCENDING" },
    ]
  }
}

resource "google_firestore_field" "ttl" {
  for_each = local.ttl_fields

  database   = google_firestore_database.default.name
  collection = each.key
  field      = each.value

  ttl_config {}

  # Nothing queries by expiry: no single-field index to maintain.
  index_config {}
}

resource "google_firestore_index" "failures" {
  for_each = local.failure_indexes

  database    = google_firestore_database.default.name
  collection  = "failures"
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value
    content {
      field_path = fields.value.field
      order      = fields.value.order
    }
  }
}
