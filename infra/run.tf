# The five Cloud Run services, one per function binary, all from the one image (var.image): each
# runs its own binary (`/usr/local/bin/<function>`, where the Dockerfile puts them) with the same
# environment. oauth-callback and the two receivers are public and authenticate their callers
# themselves; the two task workers are private and take only Cloud Tasks' and Cloud Scheduler's
# OIDC-authenticated pushes (iam.tf).

locals {
  # What differs between the services. `public`: reachable from the internet by anyone (the
  # function checks signatures, OAuth state or bearer tokens); otherwise internal ingress and IAM
  # invoker only. `timeout_seconds` stays at or under Cloud Tasks' dispatch deadline (10 min)
  # for the workers: a backfill chunk may poll a bulk job for up to 5 minutes.
  functions = {
    "oauth-callback"  = { public = true, timeout_seconds = 120, concurrency = 80, memory = "512Mi" }
    "klaviyo-webhook" = { public = true, timeout_seconds = 30, concurrency = 250, memory = "512Mi" }
    "omneo-webhook"   = { public = true, timeout_seconds = 30, concurrency = 250, memory = "512Mi" }
    "inbound-task"    = { public = false, timeout_seconds = 600, concurrency = 40, memory = "512Mi" }
    "outbound-task"   = { public = false, timeout_seconds = 600, concurrency = 20, memory = "1Gi" }
  }

  # Cloud Run's deterministic URLs, known before the services exist (so no service depends on
  # another's `uri`): https://SERVICE-PROJECT_NUMBER.REGION.run.app.
  urls = { for name, _ in local.functions : name => "https://${name}-${data.google_project.this.number}.${var.region}.run.app" }

  # The configuration every function reads (product.md §9; shared/src/config.rs). PORT is set by
  # Cloud Run itself.
  env = {
    GOOGLE_CLOUD_PROJECT          = var.project_id
    STORE                         = "firestore"
    QUEUE                         = "cloud-tasks"
    CLOUD_TASKS_LOCATION          = var.region
    TASKS_INVOKER_SERVICE_ACCOUNT = google_service_account.invoker.email
    KLAVIYO_CLIENT_ID             = var.klaviyo_client_id
    OAUTH_CALLBACK_URL            = local.urls["oauth-callback"]
    KLAVIYO_WEBHOOK_URL           = local.urls["klaviyo-webhook"]
    OMNEO_WEBHOOK_URL             = local.urls["omneo-webhook"]
    INBOUND_TASK_URL              = local.urls["inbound-task"]
    OUTBOUND_TASK_URL             = local.urls["outbound-task"]
  }

  # The base environment plus the optional settings.
  service_env = merge(
    local.env,
    var.omneo_api_url_template == null ? {} : { OMNEO_API_URL_TEMPLATE = var.omneo_api_url_template },
    var.extra_env,
  )

  # Secret environment variables, by the Secret Manager secret (secrets.tf) that holds each.
  secret_env = {
    KLAVIYO_CLIENT_SECRET = "klaviyo-client-secret"
    ENCRYPTION_KEY        = "encryption-key" # checkov:skip=CKV_SECRET_6:a secret's name, not its value
    OPERATOR_TOKEN        = "operator-token" # checkov:skip=CKV_SECRET_6:a secret's name, not its value
  }
}

resource "google_cloud_run_v2_service" "function" {
  for_each = local.functions

  name                = each.key
  location            = var.region
  ingress             = each.value.public ? "INGRESS_TRAFFIC_ALL" : "INGRESS_TRAFFIC_INTERNAL_ONLY"
  deletion_protection = var.deletion_protection

  template {
    service_account                  = google_service_account.runtime.email
    timeout                          = "${each.value.timeout_seconds}s"
    max_instance_request_concurrency = each.value.concurrency

    scaling {
      min_instance_count = try(var.scaling[each.key].min_instances, 0)
      max_instance_count = try(var.scaling[each.key].max_instances, 10)
    }

    containers {
      image   = var.image
      command = ["/usr/local/bin/${each.key}"]

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = "1"
          memory = each.value.memory
        }
        # CPU only while a request is in flight: the functions do no work after answering.
        cpu_idle = true
      }

      startup_probe {
        http_get {
          path = "/health"
        }
      }

      liveness_probe {
        http_get {
          path = "/health"
        }
      }

      dynamic "env" {
        for_each = local.service_env
        content {
          name  = env.key
          value = env.value
        }
      }

      dynamic "env" {
        for_each = local.secret_env
        content {
          name = env.key
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.secret[env.value].secret_id
              version = "latest"
            }
          }
        }
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_secret_manager_secret_iam_member.runtime_reads,
  ]
}
