#!/bin/sh
# A CI step that runs database migrations once, however many parallel jobs reach it.
# Every job runs this script; the first takes the lease and migrates, the others wait for it
# (at most 10 minutes) and then find nothing left to do, because migrations are idempotent.
# ELECT_BACKEND comes from the CI's secret variables, e.g. postgres://ci:...@db/app.
set -eu
exec elect run --lock "migrate-${CI_COMMIT_SHA:-local}" --wait=10m -- ./migrate.sh
