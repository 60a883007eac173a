# Reconciliation (product.md §10): Cloud Scheduler calls outbound-task's sweep, which enqueues a
# reconciliation for each tenant whose reconcile_interval_minutes has passed (a compare-and-set
# per tenant, so overlapping or repeated sweeps enqueue each tenant once).
resource "google_cloud_scheduler_job" "reconcile" {
  name        = "omneo-klaviyo-reconcile"
  description = "Enqueues the reconciliation of every tenant that is due (POST /tasks/reconcile on outbound-task)."
  region      = var.region
  schedule    = var.reconcile_schedule
  time_zone   = "Etc/UTC"
  # The sweep reads one record per tenant and enqueues two tasks per due tenant.
  attempt_deadline = "120s"

  retry_config {
    # The next scheduled sweep catches up whatever a failed one missed.
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "${local.urls["outbound-task"]}/tasks/reconcile"

    oidc_token {
      service_account_email = google_service_account.invoker.email
      audience              = local.urls["outbound-task"]
    }
  }

  depends_on = [google_project_service.apis]
}
