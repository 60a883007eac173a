# Who may do what. Two service accounts:
# - runtime: the identity of all five services. Least privilege: Firestore reads and writes,
#   creating tasks, creating and updating (never deleting, pausing or purging) the tenants' queues
#   at install time through a custom role, acting as the invoker account (to attach its OIDC
#   token to tasks), and reading exactly its three secrets (secrets.tf).
# - invoker: the only identity allowed to call the two task services; Cloud Tasks pushes tasks
#   and Cloud Scheduler runs the reconciliation sweep with its OIDC token.

resource "google_service_account" "runtime" {
  account_id   = "omneo-klaviyo-runtime"
  display_name = "Omneo ⇄ Klaviyo extension: runtime of the five Cloud Run services"

  depends_on = [google_project_service.apis]
}

resource "google_service_account" "invoker" {
  account_id   = "omneo-klaviyo-tasks-invoker"
  display_name = "Omneo ⇄ Klaviyo extension: pushes Cloud Tasks and Cloud Scheduler calls to the task services"

  depends_on = [google_project_service.apis]
}

# Install provisions a tenant's queues with one UpdateQueue call each, which creates the queue
# when it is missing (shared/src/queue/cloud_tasks.rs). roles/cloudtasks.queueAdmin would also
# let the services delete, pause and purge any queue and change queues' IAM.
resource "google_project_iam_custom_role" "queue_provisioner" {
  role_id     = "omneoKlaviyoQueueProvisioner"
  title       = "Omneo ⇄ Klaviyo queue provisioner"
  description = "Creates and updates Cloud Tasks queues (a tenant's two queues at install time); cannot delete, pause or purge them."
  permissions = [
    "cloudtasks.queues.create",
    "cloudtasks.queues.get",
    "cloudtasks.queues.update",
  ]

  depends_on = [google_project_service.apis]
}

resource "google_project_iam_member" "runtime" {
  for_each = toset([
    "roles/datastore.user",                                # Firestore: tenant state
    "roles/cloudtasks.enqueuer",                           # create tasks on the tenants' queues
    google_project_iam_custom_role.queue_provisioner.name, # create and update a tenant's queues when it installs
  ])

  project = var.project_id
  role    = each.value
  member  = "serviceAccount:${google_service_account.runtime.email}"
}

# Creating a task that carries the invoker's OIDC token needs actAs on the invoker.
resource "google_service_account_iam_member" "runtime_acts_as_invoker" {
  service_account_id = google_service_account.invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.runtime.email}"
}

# The public services: anyone may call them; they authenticate callers themselves.
resource "google_cloud_run_v2_service_iam_member" "public" {
  for_each = { for name, f in local.functions : name => f if f.public }

  name     = google_cloud_run_v2_service.function[each.key].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# The task services: only the invoker account, whose OIDC token Cloud Run checks.
resource "google_cloud_run_v2_service_iam_member" "tasks_invoker" {
  for_each = { for name, f in local.functions : name => f if !f.public }

  name     = google_cloud_run_v2_service.function[each.key].name
  location = var.region
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.invoker.email}"
}
