# The three secrets, as Secret Manager secrets. Terraform creates them empty: their values are
# added out of band (`gcloud secrets versions add`, docs/operations.md) so they never enter the
# Terraform state. The services read version `latest`; a new version reaches new instances.
resource "google_secret_manager_secret" "secret" {
  for_each = toset(values(local.secret_env))

  secret_id = each.value

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# The runtime service account reads exactly these secrets, nothing else in the project.
resource "google_secret_manager_secret_iam_member" "runtime_reads" {
  for_each = google_secret_manager_secret.secret

  secret_id = each.value.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.runtime.email}"
}
