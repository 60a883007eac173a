# Where the image is pushed (`make deploy`). Untagged images older than 30 days are deleted;
# tagged ones (the releases) are kept.
resource "google_artifact_registry_repository" "images" {
  # checkov:skip=CKV_GCP_84:the images hold no secrets or customer data (secrets come from Secret Manager at run time); Google-managed encryption at rest suffices and a customer key would add a key lifecycle to operate
  repository_id = var.artifact_repository_id
  location      = var.region
  format        = "DOCKER"
  description   = "Images of the Omneo ⇄ Klaviyo extension"

  docker_config {
    immutable_tags = true
  }

  cleanup_policies {
    id     = "delete-old-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.apis]
}
