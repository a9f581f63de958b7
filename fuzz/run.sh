#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 15), one after the other, from its committed
# seeds (fuzz/seeds/<target>, if any) and its working corpus (fuzz/corpus/<target>, ignored by
# git), with its dictionary (fuzz/dicts). Exits non-zero at the first crash, leak, timeout or
# out-of-memory, after printing the end of libFuzzer's log and the input that did it (under
# fuzz/artifacts/<target>/). Prints executions per second and in total for each target.
#
# Needs the nightly toolchain and cargo-fuzz: `bash fuzz/run.sh 60`, or `bash fuzz/run.sh 60 engine`
# for some targets only.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-15}"
shift || true
all=(http_head http_body ws_session jsonrpc ndjson config engine)
if [ -e src/proto/auth.rs ] && grep -q '^name = "jwt"' fuzz/Cargo.toml; then
    all+=(jwt)
fi
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

dict_of() {
    case "$1" in
    http_head) echo fuzz/dicts/http.dict ;;
    engine) echo fuzz/dicts/engine.dict ;;
    jsonrpc | config | jwt) echo fuzz/dicts/json.dict ;;
    esac
}

echo "+ cargo +nightly fuzz build"
cargo +nightly fuzz build

for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    dirs=("$corpus")
    [ -d "fuzz/seeds/$t" ] && dirs+=("fuzz/seeds/$t")
    flags=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    dict="$(dict_of "$t")"
    [ -n "$dict" ] && flags+=(-dict="$dict")
    log="fuzz/artifacts/$t.log"
    echo "+ cargo +nightly fuzz run $t ${dirs[*]} -- ${flags[*]}"
    # The bound of the whole run: the fuzzing time and a margin for loading the corpus.
    if ! timeout $((secs + 120)) cargo +nightly fuzz run "$t" "${dirs[@]}" -- "${flags[@]}" \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $t FAILED: see $log and fuzz/artifacts/$t/"
        exit 1
    fi
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    per_sec="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)"
    echo "  $t: ${runs:-?} executions in ${secs} s, ${per_sec:-?} per second, ${cov:-cov: ?}"
done
