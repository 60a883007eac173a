# Inputs of the deployment. `terraform.tfvars.example` shows a filled-in set.

variable "project_id" {
  type        = string
  description = "The Google Cloud project to deploy into."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id: 6-30 characters, lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  type        = string
  description = "The region of the Cloud Run services, Cloud Tasks queues, Cloud Scheduler job and Artifact Registry repository (also CLOUD_TASKS_LOCATION)."
  default     = "australia-southeast1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as australia-southeast1."
  }
}

variable "firestore_location" {
  type        = string
  description = "The location of the Firestore database: a region (e.g. australia-southeast1) or a multi-region (nam5, eur3). It cannot change once the database exists."
  default     = "australia-southeast1"

  validation {
    condition     = can(regex("^([a-z]+-[a-z]+[0-9]+|nam5|eur3)$", var.firestore_location))
    error_message = "firestore_location must be a region or one of the multi-regions nam5, eur3."
  }
}

variable "image" {
  type        = string
  description = "The container image all five services run (the Dockerfile's), by tag or digest, e.g. australia-southeast1-docker.pkg.dev/my-project/omneo-klaviyo/extension:1.4.0."

  validation {
    condition     = can(regex("^[a-z0-9.-]+(:[0-9]+)?/[^:@ ]+(:[A-Za-z0-9_.-]+|@sha256:[a-f0-9]{64})$", var.image))
    error_message = "image must be a full image reference with a tag or a sha256 digest (not an implicit :latest)."
  }
}

variable "klaviyo_client_id" {
  type        = string
  description = "The Klaviyo OAuth app's client id (KLAVIYO_CLIENT_ID). Its secret goes into the klaviyo-client-secret secret, never into Terraform."

  validation {
    condition     = length(trimspace(var.klaviyo_client_id)) > 0
    error_message = "klaviyo_client_id must not be empty."
  }
}

variable "omneo_api_url_template" {
  type        = string
  description = "OMNEO_API_URL_TEMPLATE: the Omneo API base of a tenant, containing {tenant}. null keeps the code's default, https://api.{tenant}.getomneo.com."
  default     = null

  validation {
    condition     = var.omneo_api_url_template == null || can(regex("^https://.*\\{tenant\\}", var.omneo_api_url_template))
    error_message = "omneo_api_url_template must be an https URL containing {tenant}."
  }
}

variable "extra_env" {
  type        = map(string)
  description = "Further environment variables for every service, e.g. KLAVIYO_API_URL of a Klaviyo test account or LOG_FORMAT. Secrets do not belong here."
  default     = {}

  validation {
    condition = alltrue([for name in keys(var.extra_env) : contains([
      "KLAVIYO_AUTH_URL", "KLAVIYO_TOKEN_URL", "KLAVIYO_REVOKE_URL", "KLAVIYO_API_URL",
      "KLAVIYO_REVISION", "LOG_FORMAT", "RUST_LOG",
    ], name)])
    error_message = "extra_env may set only KLAVIYO_AUTH_URL, KLAVIYO_TOKEN_URL, KLAVIYO_REVOKE_URL, KLAVIYO_API_URL, KLAVIYO_REVISION, LOG_FORMAT and RUST_LOG; the rest is set by this configuration."
  }
}

variable "tenants" {
  type = map(object({
    task_queue_name = optional(string)
    namespace       = optional(string, "klaviyo")
  }))
  description = "Tenants whose two Cloud Tasks queues Terraform manages, by tenant id, with the tenant's task_queue_name and namespace settings. Install creates (and updates) the same queues at run time, with the same settings, so a tenant left out still works."
  default     = {}

  validation {
    condition     = alltrue([for id in keys(var.tenants) : can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", id))])
    error_message = "tenant ids are lowercase slugs of 1-63 characters (a-z, 0-9, inner '-')."
  }

  validation {
    condition = alltrue([for id, t in var.tenants :
      t.task_queue_name == null ? true : (t.task_queue_name == id || startswith(t.task_queue_name, "${id}-"))
    ])
    error_message = "a tenant's task_queue_name must be the tenant id or start with \"<tenant id>-\"."
  }

  validation {
    condition = alltrue([for id, t in var.tenants :
      can(regex("^[A-Za-z0-9-]+$", "${coalesce(t.task_queue_name, id)}-${t.namespace}")) && length("${coalesce(t.task_queue_name, id)}-${t.namespace}-outbound") <= 100
    ])
    error_message = "queue names ({task_queue_name}-{namespace}-outbound) may hold only letters, digits and '-', and at most 100 characters."
  }
}

variable "scaling" {
  type = map(object({
    min_instances = number
    max_instances = number
  }))
  description = "Cloud Run instance bounds per service. Missing services get min 0, max 10."
  default = {
    "oauth-callback"  = { min_instances = 0, max_instances = 5 }
    "klaviyo-webhook" = { min_instances = 1, max_instances = 20 }
    "omneo-webhook"   = { min_instances = 1, max_instances = 20 }
    "inbound-task"    = { min_instances = 0, max_instances = 20 }
    "outbound-task"   = { min_instances = 0, max_instances = 20 }
  }

  validation {
    condition = alltrue([for name, s in var.scaling :
      contains(["oauth-callback", "klaviyo-webhook", "omneo-webhook", "inbound-task", "outbound-task"], name)
      && s.min_instances >= 0 && s.max_instances >= 1 && s.min_instances <= s.max_instances
    ])
    error_message = "scaling keys are service names; 0 <= min_instances <= max_instances and max_instances >= 1."
  }
}

variable "deletion_protection" {
  type        = bool
  description = "Whether Terraform refuses to destroy the Cloud Run services and the Firestore database. Turn off only to tear a test project down."
  default     = true
}

variable "reconcile_schedule" {
  type        = string
  description = "Cron schedule of the reconciliation sweep (Cloud Scheduler, UTC). Each run enqueues only the tenants whose reconcile_interval_minutes has passed, so run it more often than the shortest interval."
  default     = "*/5 * * * *"

  validation {
    condition     = length(split(" ", var.reconcile_schedule)) == 5
    error_message = "reconcile_schedule must be a five-field cron expression."
  }
}

variable "alert_notification_channels" {
  type        = list(string)
  description = "Cloud Monitoring notification channel ids (projects/P/notificationChannels/N) the alerts notify. Empty: the alerts open incidents without notifying anyone."
  default     = []

  validation {
    condition     = alltrue([for channel in var.alert_notification_channels : can(regex("^projects/[^/]+/notificationChannels/[^/]+$", channel))])
    error_message = "alert_notification_channels must be ids of the form projects/P/notificationChannels/N."
  }
}

variable "permanent_failure_alert_threshold" {
  type        = number
  description = "Alert when more than this many tasks fail for good (failure records) within 10 minutes."
  default     = 5

  validation {
    condition     = var.permanent_failure_alert_threshold >= 0
    error_message = "permanent_failure_alert_threshold must be 0 or more."
  }
}

variable "queue_delay_alert_seconds" {
  type        = number
  description = "Alert when the 95th percentile of how late tasks start (dispatch time minus scheduled time) stays above this for 15 minutes."
  default     = 900

  validation {
    condition     = var.queue_delay_alert_seconds > 0
    error_message = "queue_delay_alert_seconds must be positive."
  }
}

variable "artifact_repository_id" {
  type        = string
  description = "The Artifact Registry repository the image is pushed to."
  default     = "omneo-klaviyo"

  validation {
    condition     = can(regex("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", var.artifact_repository_id))
    error_message = "artifact_repository_id must be lowercase letters, digits and hyphens."
  }
}
