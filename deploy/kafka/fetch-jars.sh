#!/usr/bin/env bash
# Fetch the jars that Vigie's development tooling runs, from Maven Central, with deploy/pom.xml.
#
#   deploy/kafka/fetch-jars.sh            # the Kafka broker jars   -> deploy/jars/kafka
#   deploy/kafka/fetch-jars.sh flink      # Flink's Kafka connector -> deploy/jars/flink
#   deploy/kafka/fetch-jars.sh kafka flink
#
# Idempotent and offline-safe: a set of jars is fetched only when its folder lacks the stamp
# written by a complete fetch for the current deploy/pom.xml (a sha256 of it). A second run
# therefore neither calls Maven nor needs the network. When the pom changes (a version bump),
# the set is fetched anew into a temporary folder that then replaces the old one, so jars of
# two versions never mix. Concurrent runs (pytest-xdist workers) wait on a lock.
#
# Environment: VIGIE_JARS_DIR (default deploy/jars), MVN (default mvn), MVN_ARGS (extra args).
set -euo pipefail

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pom="$deploy_dir/pom.xml"
jars_root="${VIGIE_JARS_DIR:-$deploy_dir/jars}"
mvn_cmd="${MVN:-mvn}"

if [ "$#" -eq 0 ]; then
    set -- kafka
fi

mkdir -p "$jars_root"
pom_sum="$(sha256sum "$pom" | cut -d' ' -f1)"

fetch_set() {
    local set="$1" profile marker
    case "$set" in
        kafka) profile="kafka"; marker="kafka_2.13-*.jar" ;;
        flink) profile="flink"; marker="flink-sql-connector-kafka-*.jar" ;;
        *) echo "fetch-jars: unknown jar set '$set' (expected: kafka, flink)" >&2; return 2 ;;
    esac
    local dir="$jars_root/$set"
    local stamp="$dir/.complete"

    # Fast path, no lock needed: the stamp is written last, after an atomic rename.
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pom_sum" ]; then
        return 0
    fi

    exec 9>"$jars_root/.$set.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    # Another run may have finished while this one waited for the lock.
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pom_sum" ]; then
        exec 9>&-
        return 0
    fi
    if ! command -v "$mvn_cmd" >/dev/null 2>&1; then
        echo "fetch-jars: '$mvn_cmd' not found; install Maven (apt-get install maven) to fetch the $set jars" >&2
        return 1
    fi

    local tmp="$jars_root/.$set.tmp.$$"
    local log="$jars_root/.$set.mvn.log"
    rm -rf "$tmp"
    # -B: batch mode; -q: errors only. outputDirectory must be absolute: Maven resolves a
    # relative one against deploy/, not the current directory. Maven's output goes to a log
    # (Debian's Maven prints stray colour codes even with -q) that is shown on failure.
    # shellcheck disable=SC2086
    if ! "$mvn_cmd" -B -q --no-transfer-progress -f "$pom" -P "$profile" ${MVN_ARGS:-} \
            dependency:copy-dependencies -DoutputDirectory="$tmp" >"$log" 2>&1; then
        cat "$log" >&2
        rm -rf "$tmp"
        echo "fetch-jars: Maven could not fetch the $set jars (is Maven Central reachable?)" >&2
        return 1
    fi
    rm -f "$log"
    # shellcheck disable=SC2086
    if ! compgen -G "$tmp/$marker" >/dev/null; then
        rm -rf "$tmp"
        echo "fetch-jars: Maven ran but no $marker was copied" >&2
        return 1
    fi
    echo "$pom_sum" >"$tmp/.complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    exec 9>&-
}

for set in "$@"; do
    fetch_set "$set"
done
