#!/usr/bin/env bash
# Static checks of infra/ that need no cloud access (`make infra-check`, part of `make test`):
#   1. terraform fmt -check (the formatting terraform writes);
#   2. terraform validate, after `terraform init -backend=false` into a throwaway data dir. init
#      fetches the hashicorp/google provider from its registry; where the registry is unreachable
#      (as on our build machines) validate is skipped with a printed notice;
#   3. checkov (pinned in the Makefile): zero failed checks; every skipped check carries its reason
#      in a `checkov:skip=ID:reason` comment beside the resource.
# The Rust test `infra` (tests/integration/infra.rs) checks the configuration against the code.
set -euo pipefail
cd "$(dirname "$0")"
checkov=${CHECKOV:?set CHECKOV to the checkov executable (the Makefile does)}
export TF_CLI_CONFIG_FILE=/dev/null TF_IN_AUTOMATION=1
started=$(date +%s%N)
elapsed() { echo "$(( ($(date +%s%N) - started) / 1000000 )) ms"; }

if ! command -v terraform >/dev/null; then
  echo "infra: error: terraform is not installed (platform.md: terraform 1.11 is on the machine image)." >&2
  exit 1
fi

terraform fmt -check -diff -recursive -no-color .
echo "infra: terraform fmt -check: ok ($(elapsed))"

data_dir=$(mktemp -d)
trap 'rm -rf "$data_dir"' EXIT
if TF_DATA_DIR=$data_dir terraform init -backend=false -input=false -no-color >"$data_dir/init.log" 2>&1; then
  TF_DATA_DIR=$data_dir terraform validate -no-color
  echo "infra: terraform validate: ok ($(elapsed))"
else
  echo "infra: NOTICE: terraform validate SKIPPED: terraform init could not install the provider:"
  grep -v '^\s*$' "$data_dir/init.log" | grep -iE 'registry|provider|error' | head -3 | sed 's/^/infra:   /'
fi

"$checkov" --directory . --skip-download --compact --quiet --framework terraform secrets
echo "infra: checkov: 0 failed ($(elapsed))"
