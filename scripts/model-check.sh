#!/usr/bin/env bash
# Model-checks the lease rule (tests/model_check.rs, the model in tests/model/): every
# interleaving of message delays and losses, stops of elect, clock drift and the watchdog, on the
# real lease math of src/timing.rs. Prints the state counts, the bounds, the time and a
# counterexample trace for each mutant of the rule.
#
#   scripts/model-check.sh             the bounded check that `cargo test` runs (under a minute)
#   scripts/model-check.sh --deep      three contenders (minutes)
#   scripts/model-check.sh --all-rates every mix of slow, exact and fast clocks, not only slow
#   scripts/model-check.sh --horizon N server time stops after N ticks of 250 ms
#   scripts/model-check.sh -- FILTER   only the tests whose name contains FILTER
#
# The exit status is cargo's: non-zero when the rule fails or a mutant goes uncaught.
set -euo pipefail
cd "$(dirname "$0")/.."

filter=()
while (($#)); do
  case "$1" in
    --deep) export ELECT_MODEL_DEEP=1 ;;
    --all-rates) export ELECT_MODEL_ALL_RATES=1 ;;
    --horizon) export ELECT_MODEL_HORIZON="$2"; shift ;;
    --) shift; filter=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# One test at a time, so that each reports its own time; each check uses every core.
exec cargo test --locked --test model_check -- --nocapture --test-threads 1 "${filter[@]}"
