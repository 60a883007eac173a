# Log-based alerts (docs/operations.md, "Alerts" says what each means and what to do). Each
# metric counts or measures a log line the code writes; the infra tests check every message
# quoted here still occurs in shared/src.
#
# Cloud Monitoring refuses an alert policy on a log-based metric for up to ~10 minutes after the
# metric is created (hashicorp/terraform-provider-google#11102), so `make deploy` creates the
# metrics in its first step, before building the image, and the policies in its last.

locals {
  # Log entries of the five services.
  service_logs = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=(\"oauth-callback\" OR \"klaviyo-webhook\" OR \"omneo-webhook\" OR \"inbound-task\" OR \"outbound-task\")"
  notification = length(var.alert_notification_channels) > 0 ? var.alert_notification_channels : null
}

# A task that can never succeed (or spent its last attempt) and left a failure record.
resource "google_logging_metric" "permanent_failures" {
  name        = "omneo_klaviyo/permanent_failures"
  description = "Tasks that failed for good and were recorded in the failures collection."
  filter      = "${local.service_logs} AND jsonPayload.message=\"task failed for good; recorded for review\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "tenant"
      value_type  = "STRING"
      description = "The tenant whose task failed."
    }

    labels {
      key         = "task_kind"
      value_type  = "STRING"
      description = "What the task was to do (sync_profile, klaviyo_events, …)."
    }
  }

  label_extractors = {
    tenant    = "EXTRACT(jsonPayload.tenant)"
    task_kind = "EXTRACT(jsonPayload.task_kind)"
  }

  depends_on = [google_project_service.apis]
}

# Klaviyo refused a tenant's refresh token: the tenant's sync is parked until CX Manager
# installs again.
resource "google_logging_metric" "reauthorization_required" {
  name        = "omneo_klaviyo/reauthorization_required"
  description = "Tenants whose Klaviyo grant was refused (install status reauthorization_required)."
  filter      = "${local.service_logs} AND jsonPayload.message=\"Klaviyo refused the refresh token; reauthorization required\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "tenant"
      value_type  = "STRING"
      description = "The tenant that must reauthorize."
    }
  }

  label_extractors = {
    tenant = "EXTRACT(jsonPayload.tenant)"
  }

  depends_on = [google_project_service.apis]
}

# How late each task starts: its dispatch time minus the time it was scheduled for
# (X-CloudTasks-TaskETA), written on the task request's log line. It grows when a queue backs up.
resource "google_logging_metric" "task_queue_delay" {
  name        = "omneo_klaviyo/task_queue_delay"
  description = "How long tasks waited in their queue past their scheduled time, in milliseconds."
  filter      = "${local.service_logs} AND jsonPayload.message=\"request finished\" AND jsonPayload.queue_delay_ms>=0"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "DISTRIBUTION"
    unit        = "ms"

    labels {
      key         = "queue"
      value_type  = "STRING"
      description = "The Cloud Tasks queue."
    }
  }

  value_extractor = "EXTRACT(jsonPayload.queue_delay_ms)"
  label_extractors = {
    queue = "EXTRACT(jsonPayload.queue)"
  }

  bucket_options {
    exponential_buckets {
      num_finite_buckets = 32
      growth_factor      = 2
      scale              = 1
    }
  }

  depends_on = [google_project_service.apis]
}

resource "google_monitoring_alert_policy" "permanent_failures" {
  display_name          = "Omneo ⇄ Klaviyo: tasks failing for good"
  combiner              = "OR"
  notification_channels = local.notification

  conditions {
    display_name = "more than ${var.permanent_failure_alert_threshold} failure records in 10 minutes"

    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.permanent_failures.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.permanent_failure_alert_threshold
      duration        = "0s"

      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    content   = "Tasks are failing for good and leaving failure records. Read them with GET /{tenant}/api/v1/failures, fix the cause, replay with POST …/failures/{id}/retry (docs/operations.md, Alerts)."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "reauthorization_required" {
  display_name          = "Omneo ⇄ Klaviyo: a tenant must reauthorize Klaviyo"
  combiner              = "OR"
  notification_channels = local.notification

  conditions {
    display_name = "a refresh token was refused"

    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.reauthorization_required.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.tenant"]
      }
    }
  }

  documentation {
    content   = "Klaviyo refused a tenant's refresh token: its sync is parked (install status reauthorization_required). CX Manager mints a new install link and the retailer installs again (docs/operations.md, Alerts)."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "queue_delay" {
  display_name          = "Omneo ⇄ Klaviyo: tasks wait too long in their queues"
  combiner              = "OR"
  notification_channels = local.notification

  conditions {
    display_name = "95th percentile of task start delay above ${var.queue_delay_alert_seconds} s for 15 minutes"

    condition_threshold {
      filter          = "metric.type=\"logging.googleapis.com/user/${google_logging_metric.task_queue_delay.name}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.queue_delay_alert_seconds * 1000
      duration        = "900s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_PERCENTILE_95"
        cross_series_reducer = "REDUCE_MAX"
        group_by_fields      = ["metric.label.queue"]
      }
    }
  }

  documentation {
    content   = "A tenant's queue is backing up: tasks start long after they were due (rate limits, a paused queue, a slow remote, or a large backfill). See docs/operations.md, Alerts."
    mime_type = "text/markdown"
  }
}
