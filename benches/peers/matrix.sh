#!/usr/bin/env bash
# Runs mcp-stream, every peer (benches/peers/axum, benches/peers/node) and the raw baseline
# through one latency matrix with `mcp-stream bench`, and writes a Markdown table, the runs as
# JSON and a percentile plot under target/bench-matrix/ (not committed).
#
#   bash benches/peers/matrix.sh                  # N = 100, 1000, 10000; R = 100, 1000 msg/s
#   NS="100 1000" RUNS=1 bash benches/peers/matrix.sh
#
# Settings (environment): NS (subscriber counts), RATES (msg/s), RUNS (runs per cell, median
# with min-max), SECS (seconds of measured messages per run), PAYLOAD (bytes of data),
# TRANSPORT (sse, ws or mix), PUBLISHER (http or ws), SERVERS (any of: mcp-stream axum node
# baseline), OUT (the output folder).
#
# Each server is started afresh for every run (so that its RSS per idle connection is measured
# from a clean process), on 127.0.0.1 with a port the kernel picks, and stopped after it. Runs
# go round the servers (run 1 of every server, then run 2...), so that a drift in the machine's
# load does not fall on one server. Every run is bounded (--duration); the whole matrix takes
# about 25 minutes with the defaults on a 2-core machine. A run that fails (exit 1: it could not
# connect, or stopped before its first message) or stopped early is left out of the medians;
# the table says of how many runs each median is. The environment (commit, kernel, toolchain
# versions, load average at the start) heads results.md and is in results.json.
set -euo pipefail
cd "$(dirname "$0")/../.."

NS=${NS:-"100 1000 10000"}
RATES=${RATES:-"100 1000"}
RUNS=${RUNS:-3}
SECS=${SECS:-5}
PAYLOAD=${PAYLOAD:-200}
TRANSPORT=${TRANSPORT:-sse}
PUBLISHER=${PUBLISHER:-http}
SERVERS=${SERVERS:-"mcp-stream axum node baseline"}
OUT=${OUT:-target/bench-matrix}

step() { printf '\n==> %s\n' "$*" >&2; }

# ---- descriptors: every subscriber is a socket here and another in the server (with the
# baseline, in the tool's writer process)
max_n=0
for n in $NS; do ((n > max_n)) && max_n=$n; done
# Raising the hard limit needs root with CAP_SYS_RESOURCE; otherwise take what the hard limit gives.
ulimit -n $((2 * max_n + 64)) 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
limit=$(ulimit -n)
[ "$limit" = unlimited ] && limit=$((1 << 30))
if ((limit < max_n + 64)); then
    echo "the open-file limit is $limit (hard $(ulimit -Hn)); N=$max_n needs $((max_n + 64))" >&2
    exit 1
fi

# ---- builds
step "build mcp-stream (release)"
cargo build --release --bin mcp-stream
BIN=$PWD/target/release/mcp-stream
if [[ " $SERVERS " == *" axum "* ]]; then
    step "build the axum peer (release)"
    CARGO_TARGET_DIR=$PWD/target/peers cargo build --release --locked \
        --manifest-path benches/peers/axum/Cargo.toml
fi
if [[ " $SERVERS " == *" node "* ]]; then
    step "install the node peer (npm ci)"
    (cd benches/peers/node && npm ci --no-audit --no-fund --loglevel=error)
fi

rm -rf "$OUT"
mkdir -p "$OUT/runs"

# ---- the environment, recorded before the first run
first_line() { "$@" 2>/dev/null | head -n1 || true; }
dirty=$(git diff --quiet HEAD 2>/dev/null || echo " (modified)")
python3 -c 'import json, sys; keys = sys.argv[2::2]; json.dump(dict(zip(keys, sys.argv[3::2])), open(sys.argv[1], "w"), indent=1)' \
    "$OUT/environment.json" \
    git_commit "$(git rev-parse HEAD 2>/dev/null || echo unknown)$dirty" \
    kernel "$(uname -r)" \
    cpus "$(nproc)" \
    rustc "$(first_line rustc --version)" \
    node "$(first_line node --version)" \
    load_average_at_start "$(cut -d' ' -f1-3 /proc/loadavg)" \
    date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# ---- servers
SERVER_PID=
SERVER_URL=

# stop_server: SIGTERM, at most 5 s for the server to exit, then SIGKILL.
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap stop_server EXIT

# start_server NAME N: starts it in the background, waits (at most 10 s) for its
# "listening on http://ADDR" line.
start_server() {
    local name=$1 n=$2 log="$OUT/$1-$2.log"
    case $name in
    mcp-stream)
        local limit=$((n + 64))
        printf '{"max_connections":%d,"streaming":{"sse":{"max_connections":%d,"heartbeat_secs":3600},"limits":{"idle_timeout_secs":3600}}}\n' \
            "$limit" "$limit" >"$OUT/mcp-stream.json"
        "$BIN" serve --listen 127.0.0.1:0 --log-level warn --config "$OUT/mcp-stream.json" \
            >"$log" 2>&1 &
        ;;
    axum) target/peers/release/peer-axum --listen 127.0.0.1:0 >"$log" 2>&1 & ;;
    node) node benches/peers/node/server.js --listen 127.0.0.1:0 >"$log" 2>&1 & ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 100); do
        SERVER_URL=$(sed -n 's/^listening on \(http:\/\/[^ ]*\)$/\1/p' "$log" | head -n1)
        [ -n "$SERVER_URL" ] && return 0
        sleep 0.1
    done
    echo "$name did not print its address within 10 s:" >&2
    cat "$log" >&2
    exit 1
}

# ---- the matrix: run 1 of every cell and server, then run 2...
for run in $(seq "$RUNS"); do
    for n in $NS; do
        for rate in $RATES; do
            messages=$((rate * SECS))
            # Connecting at 2,000/s, a second of warm-up, the messages, the drain, with room.
            bound=$((n / 2000 + SECS + 30))
            for server in $SERVERS; do
                # The baseline's writer is a child process: each side needs about N.
                if [ "$server" = baseline ] && ((n + 32 > limit)); then
                    if ((run == 1)); then
                        step "baseline: N=$n skipped: it needs $((n + 32)) descriptors, the limit is $limit"
                    fi
                    continue
                fi
                # A fresh server for every run: its RSS per idle connection is measured from a
                # clean process, and no run inherits another's memory or history.
                if [ "$server" = baseline ]; then
                    target=(--baseline)
                else
                    start_server "$server" "$n"
                    target=(--url "$SERVER_URL" --pid "$SERVER_PID")
                fi
                file="$OUT/runs/$server-$n-$rate-$run.json"
                step "$server: N=$n, R=$rate/s, run $run of $RUNS"
                if ! "$BIN" bench "${target[@]}" --json -n "$n" --rate "$rate" \
                    --messages "$messages" --payload "$PAYLOAD" --transport "$TRANSPORT" \
                    --publisher "$PUBLISHER" --warmup 1 --drain 5 --duration "$bound" \
                    >"$file" 2>"$file.err"; then
                    echo "  failed: $(cat "$file.err")" >&2
                    # Kept as a failure: counted in the table, out of the medians.
                    python3 -c 'import json, sys; json.dump({"failed": open(sys.argv[1]).read().strip()}, open(sys.argv[2], "w"))' \
                        "$file.err" "$file"
                else
                    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); l = d["latency_ms"] or {}; print("  p50 %s ms, p99 %s ms, lost %d of %d%s" % (l.get("p50"), l.get("p99"), d["lost"], d["expected"], "; STOPPED EARLY (left out): %s" % d["stopped_early"] if d.get("stopped_early") else ""))' "$file" >&2
                fi
                stop_server
            done
        done
    done
done

# ---- the table and the plot
step "results"
python3 - "$OUT" "$TRANSPORT" "$PUBLISHER" "$PAYLOAD" "$SECS" <<'EOF'
import glob, json, os, statistics, sys

out, transport, publisher, payload, secs = sys.argv[1:]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "runs", "*.json"))):
    server, n, rate, _ = os.path.basename(path)[:-5].rsplit("-", 3)
    with open(path) as f:
        runs.setdefault((server, int(n), int(rate)), []).append((path, json.load(f)))

order = ["mcp-stream", "axum", "node", "baseline"]
def key(k):
    return (k[1], k[2], order.index(k[0]) if k[0] in order else 99)

def spread(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med)
    return "%s (%s–%s)" % (fmt(med), fmt(min(values)), fmt(max(values)))

ms = lambda v: "%.2f" % v
count = lambda v: "%d" % round(v)
kib = lambda v: "%.1f" % v

with open(os.path.join(out, "environment.json")) as f:
    env = json.load(f)

lines = [
    "| server | N | msg/s | runs | p50 ms | p99 ms | p99.9 ms | max ms | lost | copies/s | RSS KiB per idle connection |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
summary = []
for k in sorted(runs, key=key):
    server, n, rate = k
    every = [r for _, r in runs[k]]
    # Failed runs and runs stopped early are not folded into the medians.
    rs = [r for r in every if "failed" not in r and not r.get("stopped_early")]
    saturated = sum(1 for r in rs if r.get("tool_saturation_warning"))
    lat = lambda q: [r["latency_ms"][q] if r["latency_ms"] else None for r in rs]
    rss = [r["rss_kib"]["per_connection_bytes"] / 1024 for r in rs
           if r.get("rss_kib") and r["rss_kib"].get("per_connection_bytes") is not None]
    row = {
        "server": server, "n": n, "rate": rate, "runs": len(rs), "runs_tried": len(every),
        "failed": [r["failed"] for r in every if "failed" in r],
        "tool_saturated_runs": saturated,
        "tool_busy_percent": [r.get("tool_busy_percent") for r in rs],
        "p50": lat("p50"), "p99": lat("p99"), "p999": lat("p999"), "max": lat("max"),
        "lost": [r["lost"] for r in rs], "expected": [r["expected"] for r in rs],
        "copies_per_sec": [r["deliveries_per_sec"] for r in rs],
        "rss_kib_per_connection": rss,
        "connect_failures": [r["connect_failures"] for r in rs],
        "stopped_early": [r["stopped_early"] for r in every if r.get("stopped_early")],
    }
    summary.append(row)
    lines.append("| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        server, n, rate,
        "%d of %d%s" % (len(rs), len(every), " (%d tool-bound)" % saturated if saturated else ""),
        spread(row["p50"], ms), spread(row["p99"], ms),
        spread(row["p999"], ms), spread(row["max"], ms), spread(row["lost"], count),
        spread(row["copies_per_sec"], count),
        spread(rss, kib) if server != "baseline" else "–"))

note = ("%s subscribers, %s publisher, %s-byte payloads, %s s of messages per run after 1 s of "
        "warm-up; median of the runs (min–max); latency from each message's intended send time. "
        "Lost = expected copies that never arrived (within a 5 s drain). Runs = the runs the "
        "median is of, of those tried: a run that failed or stopped early is left out; "
        "tool-bound = the bench warned that its own loop, not the server, may have set the figures."
        % (transport.upper(), publisher.upper(), payload, secs))
head = ("Environment: commit %s; Linux %s, %s CPUs; %s; node %s; load average %s at the start (%s).\n\n"
        % (env["git_commit"], env["kernel"], env["cpus"], env["rustc"], env["node"] or "-",
           env["load_average_at_start"], env["date"]))
with open(os.path.join(out, "results.md"), "w") as f:
    f.write(head + "\n".join(lines) + "\n\n" + note + "\n")
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"environment": env, "cells": summary}, f, indent=1)
print(head + "\n".join(lines) + "\n\n" + note)

# One plot per (N, R): each server's run with the median p99.
plots = []
for (server, n, rate) in sorted(runs, key=key):
    good = [(p, r) for p, r in runs[(server, n, rate)]
            if r.get("latency_ms") and not r.get("stopped_early")]
    if good:
        good.sort(key=lambda pr: pr[1]["latency_ms"]["p99"])
        plots.append(((n, rate), "%s=%s" % (server, good[len(good) // 2][0])))
with open(os.path.join(out, "plots.txt"), "w") as f:
    for (n, rate), arg in plots:
        f.write("%d %d %s\n" % (n, rate, arg))
EOF

while read -r n rate; do
    mapfile -t args < <(awk -v n="$n" -v r="$rate" '$1 == n && $2 == r { print $3 }' "$OUT/plots.txt")
    "$BIN" bench plot "$OUT/plot-$n-$rate.svg" \
        --title "N=$n subscribers ($TRANSPORT), $rate msg/s, $PAYLOAD B: latency by percentile" "${args[@]}"
done < <(awk '{ print $1, $2 }' "$OUT/plots.txt" | sort -u)

step "written: $OUT/results.md, $OUT/results.json, $OUT/plot-N-R.svg, $OUT/runs/"
