# Two Cloud Tasks queues per tenant of var.tenants, named and configured exactly as install
# creates them at run time (shared/src/queue: TenantQueues::of, QueueSettings::for_direction),
# so Terraform and the install never fight over a setting.
#
# A tenant that installed before it was added to var.tenants already has its queues: import them
# (`terraform import 'google_cloud_tasks_queue.tenant["acme-klaviyo-inbound"]'
# projects/P/locations/R/queues/acme-klaviyo-inbound`). Queues are never destroyed by Terraform:
# deleting one drops its pending tasks and locks its name for 7 days. To stop managing a tenant's
# queues, `terraform state rm` them before removing the tenant (docs/operations.md).

locals {
  # QueueSettings::for_direction. Outbound dispatches at 96 % of Klaviyo's steady
  # profile-import limit (750/min → 12/s); both back off 5 s → 300 s over 5 doublings. Cloud Tasks
  # stops only once both 20 attempts and 24 h are spent, but the worker records the 20th failed
  # attempt as a failure and answers 2xx, so a task ends after its 20th attempt. The infra tests
  # fail when these drift from the code.
  queue_settings = {
    inbound = {
      max_dispatches_per_second = 20
      max_concurrent_dispatches = 20
      max_attempts              = 20
      max_retry_duration        = "86400s"
      min_backoff               = "5s"
      max_backoff               = "300s"
      max_doublings             = 5
    }
    outbound = {
      max_dispatches_per_second = 12
      max_concurrent_dispatches = 10
      max_attempts              = 20
      max_retry_duration        = "86400s"
      min_backoff               = "5s"
      max_backoff               = "300s"
      max_doublings             = 5
    }
  }

  # {task_queue_name or tenant id}-{namespace}-{direction}, by that name.
  tenant_queues = { for queue in flatten([
    for id, tenant in var.tenants : [
      for direction in ["inbound", "outbound"] : {
        name      = "${coalesce(tenant.task_queue_name, id)}-${tenant.namespace}-${direction}"
        direction = direction
      }
    ]
  ]) : queue.name => queue }
}

resource "google_cloud_tasks_queue" "tenant" {
  for_each = local.tenant_queues

  name     = each.key
  location = var.region

  rate_limits {
    max_dispatches_per_second = local.queue_settings[each.value.direction].max_dispatches_per_second
    max_concurrent_dispatches = local.queue_settings[each.value.direction].max_concurrent_dispatches
  }

  retry_config {
    max_attempts       = local.queue_settings[each.value.direction].max_attempts
    max_retry_duration = local.queue_settings[each.value.direction].max_retry_duration
    min_backoff        = local.queue_settings[each.value.direction].min_backoff
    max_backoff        = local.queue_settings[each.value.direction].max_backoff
    max_doublings      = local.queue_settings[each.value.direction].max_doublings
  }

  lifecycle {
    prevent_destroy = true
  }

  depends_on = [google_project_service.apis]
}
