#!/usr/bin/env bash
# `make deploy`: build and push the image, then `terraform apply` (docs/operations.md,
# "Deploying"). Run from an operator's machine with gcloud (logged in), terraform and docker, or
# with BUILDER=cloud-build to build on Cloud Build instead of a local Docker engine.
#
#   PROJECT   the Google Cloud project (required; must match project_id in infra/terraform.tfvars)
#   REGION    default australia-southeast1 (must match region in terraform.tfvars)
#   TAG       the image tag; default: the commit (git describe --always --dirty)
#   BUILDER   docker (default) or cloud-build
#   REPOSITORY the Artifact Registry repository; default omneo-klaviyo (artifact_repository_id)
#   DRY_RUN=1 print the commands instead of running them
#
# The three secrets must have a value before the services can start. A secret without any
# version is given one from the environment variable of the same name (KLAVIYO_CLIENT_SECRET,
# ENCRYPTION_KEY, OPERATOR_TOKEN) when it is set, read from stdin so it never appears in a
# process list; otherwise the script stops and says how to add it.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${PROJECT:?set PROJECT to the Google Cloud project id}"
REGION=${REGION:-australia-southeast1}
TAG=${TAG:-$(git describe --always --dirty)}
BUILDER=${BUILDER:-docker}
REPOSITORY=${REPOSITORY:-omneo-klaviyo}
IMAGE="$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/extension:$TAG"
TF=(terraform -chdir=infra)
VARS=(-var "project_id=$PROJECT" -var "region=$REGION" -var "artifact_repository_id=$REPOSITORY" -var "image=$IMAGE")

run() {
  echo "+ $*"
  if [ "${DRY_RUN:-0}" != 1 ]; then "$@"; fi
}

if [ ! -f infra/terraform.tfvars ]; then
  echo "deploy: infra/terraform.tfvars is missing: copy infra/terraform.tfvars.example and fill it in" >&2
  exit 1
fi
case "$TAG" in *-dirty)
  echo "deploy: the working tree has uncommitted changes; commit them, or set TAG explicitly" >&2
  exit 1
esac

echo "== 1/4 the project's APIs, the image repository, the (empty) secrets and the log-based metrics"
# The metrics come first: Cloud Monitoring accepts an alert policy on a new log-based metric only
# minutes after it was created (step 4 creates the policies).
run "${TF[@]}" init -input=false
run "${TF[@]}" apply -input=false "${VARS[@]}" \
  -target=google_project_service.apis \
  -target=google_artifact_registry_repository.images \
  -target=google_secret_manager_secret.secret \
  -target=google_logging_metric.permanent_failures \
  -target=google_logging_metric.reauthorization_required \
  -target=google_logging_metric.task_queue_delay

echo "== 2/4 the secrets' values"
for pair in klaviyo-client-secret:KLAVIYO_CLIENT_SECRET encryption-key:ENCRYPTION_KEY operator-token:OPERATOR_TOKEN; do
  secret=${pair%%:*} variable=${pair##*:}
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "+ gcloud secrets versions list $secret (add a version from \$$variable if there is none)"
    continue
  fi
  if [ -n "$(gcloud secrets versions list "$secret" --project "$PROJECT" --filter=state=ENABLED --limit=1 --format='value(name)')" ]; then
    echo "$secret: has a value"
  elif [ -n "${!variable:-}" ]; then
    printf '%s' "${!variable}" | gcloud secrets versions add "$secret" --project "$PROJECT" --data-file=-
  else
    echo "deploy: the secret $secret has no value. Add one, then run make deploy again:" >&2
    echo "  printf '%s' \"\$$variable\" | gcloud secrets versions add $secret --project $PROJECT --data-file=-" >&2
    exit 1
  fi
done

echo "== 3/4 the image $IMAGE"
# Tags are immutable: a tag already pushed (an earlier run of this commit) is used as it is.
if [ "${DRY_RUN:-0}" != 1 ] && gcloud artifacts docker images describe "$IMAGE" --project "$PROJECT" >/dev/null 2>&1; then
  BUILDER=already-pushed
  echo "$IMAGE: already in the repository"
fi
case "$BUILDER" in
  already-pushed) ;;
  docker)
    run gcloud auth configure-docker "$REGION-docker.pkg.dev" --quiet
    run docker build -t "$IMAGE" .
    run docker push "$IMAGE"
    ;;
  cloud-build)
    run gcloud builds submit --project "$PROJECT" --region "$REGION" --tag "$IMAGE" .
    ;;
  *)
    echo "deploy: BUILDER must be docker or cloud-build" >&2
    exit 1
    ;;
esac

echo "== 4/4 everything else"
run "${TF[@]}" apply -input=false "${VARS[@]}"

if [ "${DRY_RUN:-0}" != 1 ]; then
  cat <<NEXT

Deployed $IMAGE. Next (docs/operations.md, "Deploying"):
  1. Register this redirect URI on the Klaviyo OAuth app: $("${TF[@]}" output -raw oauth_redirect_uri)
  2. Register the first tenant (the admin key in the answer is shown only once):
       curl -X PUT -H "Authorization: Bearer \$OPERATOR_TOKEN" -H 'Content-Type: application/json' \\
         -d '{"omneo_api_token":"…","omneo_signing_secret":"…"}' $("${TF[@]}" output -raw oauth_callback_url)/acme/api/v1/tenant
  3. Mint its install link and send it to the retailer:
       curl -X POST -H "Authorization: Bearer <admin key>" $("${TF[@]}" output -raw oauth_callback_url)/acme/api/v1/install/link
NEXT
fi
