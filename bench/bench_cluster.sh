#!/usr/bin/env bash
# Time the test cluster's steps (root): the binaries from the cache (tests/cluster/build.sh; a cold build is timed
# by running it with an empty AQUARIUM_K8S_CACHE), a bring-up with the image already imported, and the teardown.
#   bash bench/bench_cluster.sh        prints one line per step, in seconds
set -euo pipefail
cd "$(dirname "$0")/.."
t() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(echo "$(date +%s.%N) - $s" | bc)"; }
echo "build.sh (cached binaries): $(t bash tests/cluster/build.sh) s"
echo "up.sh (image already built and imported): $(t bash tests/cluster/up.sh) s"
echo "down.sh: $(t bash tests/cluster/down.sh) s"
