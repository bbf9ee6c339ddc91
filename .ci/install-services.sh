#!/usr/bin/env bash
# Installs the services the cluster tests (tests/test_cluster_*.py) start on loopback:
# nginx and redis-server, from Debian packages, when they are missing and this user can
# (root with apt-get). Otherwise prints one line saying why the cluster tests will not run;
# pytest then skips them, or fails them under CI=true (CI must run them). Never fails `make`.
set -u
PATH="$PATH:/usr/sbin:/sbin"
missing=()
for bin in nginx redis-server; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")  # package name = binary name
done
[ "${#missing[@]}" -eq 0 ] && exit 0

outcome="skipped"
[ "${CI:-}" = "true" ] && outcome="will fail (CI=true)"
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "cluster tests $outcome: ${missing[*]} not installed; as root: apt-get install ${missing[*]}"
    exit 0
fi
log="${TMPDIR:-/tmp}/heml-install-services.log"
echo "installing ${missing[*]} for the cluster tests (log: $log)"
if ! { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >"$log" 2>&1; then
    echo "cluster tests $outcome: apt-get install ${missing[*]} failed (see $log)"
fi
exit 0
