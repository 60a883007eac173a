# Terraform and provider versions. The provider registry is needed for `terraform init`;
# `make infra-check` skips `terraform validate` (with a notice) where it is unreachable.
terraform {
  required_version = ">= 1.6"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.45"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project_id
}
