# What an operator needs after `terraform apply` (docs/operations.md, "Deploying").

output "service_urls" {
  description = "The URL of each Cloud Run service, by function: the deterministic run.app URL the services are configured with (each service also answers on its hashed uri)."
  value       = { for name, service in google_cloud_run_v2_service.function : name => local.urls[name] }
}

output "oauth_callback_url" {
  description = "oauth-callback's URL: install links, the admin API and the failures/backfill API live here."
  value       = local.urls["oauth-callback"]
}

output "oauth_redirect_uri" {
  description = "The redirect URI to register on the Klaviyo OAuth app."
  value       = "${local.urls["oauth-callback"]}/oauth/callback"
}

output "klaviyo_webhook_url" {
  description = "klaviyo-webhook's URL (Klaviyo system and Flow webhooks; install registers them)."
  value       = local.urls["klaviyo-webhook"]
}

output "omneo_webhook_url" {
  description = "omneo-webhook's URL (Omneo webhooks and target calls; install registers them)."
  value       = local.urls["omneo-webhook"]
}

output "inbound_task_url" {
  description = "inbound-task's URL (private: Cloud Tasks only)."
  value       = local.urls["inbound-task"]
}

output "outbound_task_url" {
  description = "outbound-task's URL (private: Cloud Tasks and Cloud Scheduler only)."
  value       = local.urls["outbound-task"]
}

output "image_repository" {
  description = "Where to push the image: REGION-docker.pkg.dev/PROJECT/REPOSITORY."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "runtime_service_account" {
  description = "The identity the five services run as."
  value       = google_service_account.runtime.email
}

output "tasks_invoker_service_account" {
  description = "The identity Cloud Tasks and Cloud Scheduler call the task services with."
  value       = google_service_account.invoker.email
}

output "tenant_queues" {
  description = "The Cloud Tasks queues Terraform manages, by name."
  value       = [for queue in google_cloud_tasks_queue.tenant : queue.name]
}
