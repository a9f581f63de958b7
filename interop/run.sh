#!/usr/bin/env bash
# Interop suites: real third-party clients against the real mcp-stream binary.
#
#   bash interop/run.sh
#
# 1. Python `websockets` (asyncio client) under pytest: interop/test_websocket.py
# 2. The official MCP Python SDK (`mcp`: Streamable HTTP and legacy HTTP+SSE clients) under
#    pytest: interop/test_mcp.py
# 3. The Prometheus Python client's text parser (`prometheus_client`) on `GET /metrics`, and
#    `GET /stats`, under pytest: interop/test_operations.py
# 4. The official MCP TypeScript SDK (StreamableHTTPClientTransport, SSEClientTransport,
#    WebSocketClientTransport over the `ws` package): interop/mcp-ts/test.mjs
# 5. Headless Chromium driven by playwright-core: interop/browser/test.mjs
# 6. The stdio gateway (`mcp.stdio`), serving each session by a real stdio MCP server
#    (interop/gateway/py_server.py on the Python SDK, and the published
#    @modelcontextprotocol/server-everything), driven by the official Python SDK client under
#    pytest (interop/gateway/test_gateway.py) and TypeScript SDK client
#    (interop/gateway/test.mjs)
#
# Installs what it needs, idempotently and quietly, on a Debian machine with Python 3 + pip and
# Node 20 + npm: pinned Python packages into interop/.pydeps (pip --target: no venv needed, and
# no clash with a system Python marked externally managed), Debian's chromium when
# /usr/bin/chromium is missing (apt-get, as root), playwright-core into
# interop/browser/node_modules (it never downloads a browser), and @modelcontextprotocol/sdk
# and ws into interop/mcp-ts/node_modules (`npm ci`, from its lockfile), and the same SDK, ws
# and @modelcontextprotocol/server-everything into interop/gateway/node_modules (`npm ci`). Uses
# target/debug/mcp-stream (MCP_STREAM_BIN overrides), building it if missing. Exits non-zero on
# any failure; the last line is the summary `interop: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '==> %s\n' "$*"; }

# Runs a command with its output kept in a log that is shown only if it fails.
quietly() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        cat "$log"
        rm -f "$log"
        echo "interop: setup failed: $*" >&2
        exit 1
    fi
    rm -f "$log"
}

# ---- the binary
export MCP_STREAM_BIN="${MCP_STREAM_BIN:-$root/target/debug/mcp-stream}"
if [ ! -x "$MCP_STREAM_BIN" ]; then
    say "building mcp-stream"
    cargo build --quiet
fi

# ---- Python packages (pinned)
py_reqs="websockets==17.4 pytest==9.2.0 mcp==2.3.0 prometheus_client==0.26.0"
pydeps="$root/interop/.pydeps"
if [ "$(cat "$pydeps/.installed" 2>/dev/null || true)" != "$py_reqs" ]; then
    say "installing $py_reqs into interop/.pydeps"
    rm -rf "$pydeps"
    # shellcheck disable=SC2086 # the list is meant to split
    quietly python3 -m pip install --quiet --disable-pip-version-check --no-input \
        --root-user-action=ignore --target "$pydeps" $py_reqs
    echo "$py_reqs" >"$pydeps/.installed"
fi

# ---- Chromium from Debian (never a browser download)
if [ ! -x /usr/bin/chromium ]; then
    say "installing Debian's chromium"
    as_root=(env DEBIAN_FRONTEND=noninteractive)
    if [ "$(id -u)" != 0 ]; then as_root=(sudo "${as_root[@]}"); fi
    quietly "${as_root[@]}" apt-get update -qq
    quietly "${as_root[@]}" apt-get install -y -qq --no-install-recommends chromium
fi

# ---- playwright-core (pinned in package.json and package-lock.json)
browser_dir="$root/interop/browser"
want_pw=$(node -p "require('$browser_dir/package.json').dependencies['playwright-core']")
have_pw=$(node -p "try { require('$browser_dir/node_modules/playwright-core/package.json').version } catch (e) { '' }")
if [ "$want_pw" != "$have_pw" ]; then
    say "installing playwright-core $want_pw into interop/browser/node_modules"
    quietly env -C "$browser_dir" PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit \
        --no-fund --loglevel=error
fi

# Installs the npm packages pinned in DIR's package.json and package-lock.json (`npm ci`) when
# node_modules lacks one or holds another version.
npm_pinned() {
    local dir=$1 missing
    missing=$(node -e '
const dir = process.argv[1];
const deps = require(dir + "/package.json").dependencies;
const missing = Object.entries(deps).filter(([name, want]) => {
    try { return require(dir + "/node_modules/" + name + "/package.json").version !== want; }
    catch (e) { return true; }
});
console.log(missing.map(([name, want]) => name + "@" + want).join(" "));
' "$dir")
    if [ -n "$missing" ]; then
        say "installing $missing into ${dir#"$root"/}/node_modules"
        quietly env -C "$dir" npm ci --no-audit --no-fund --loglevel=error
    fi
}

# ---- the MCP TypeScript SDK and ws
mcp_ts_dir="$root/interop/mcp-ts"
npm_pinned "$mcp_ts_dir"

# ---- the stdio gateway's: the TypeScript SDK, ws and @modelcontextprotocol/server-everything
gateway_dir="$root/interop/gateway"
npm_pinned "$gateway_dir"

# ---- the suites
mkdir -p "$root/target"
passed=0
failed=0
status=0

# Runs one pytest file; adds its counts (from its JUnit XML) to the tally.
run_pytest() {
    local file=$1 junit=$2 rc p f
    rm -f "$junit"
    set +e
    PYTHONPATH="$pydeps" PYTHONDONTWRITEBYTECODE=1 python3 -m pytest -q -p no:cacheprovider \
        --junitxml="$junit" "$file"
    rc=$?
    set -e
    if [ "$rc" != 0 ]; then status=1; fi
    if [ -f "$junit" ]; then
        read -r p f < <(python3 - "$junit" <<'EOF'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
tests = sum(int(s.get("tests", 0)) for s in suites)
bad = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(tests - bad - skipped, bad)
EOF
        )
        passed=$((passed + p))
        failed=$((failed + f))
    else
        failed=$((failed + 1))
    fi
}

# Runs one node script that writes {"passed":N,"failed":M} to its argument; adds the counts.
run_node() {
    local script=$1 results=$2 rc p f
    rm -f "$results"
    set +e
    node "$script" "$results"
    rc=$?
    set -e
    if [ "$rc" != 0 ]; then status=1; fi
    if [ -f "$results" ]; then
        p=$(node -p "require('$results').passed")
        f=$(node -p "require('$results').failed")
        passed=$((passed + p))
        failed=$((failed + f))
    else
        failed=$((failed + 1))
    fi
}

say "pytest: interop/test_websocket.py (Python websockets client)"
run_pytest "$root/interop/test_websocket.py" "$root/target/interop-pytest.xml"

say "pytest: interop/test_mcp.py (MCP Python SDK: Streamable HTTP, legacy HTTP+SSE)"
run_pytest "$root/interop/test_mcp.py" "$root/target/interop-mcp-python.xml"

say "pytest: interop/test_operations.py (Prometheus client parser on /metrics, /stats)"
run_pytest "$root/interop/test_operations.py" "$root/target/interop-operations.xml"

say "mcp-ts: interop/mcp-ts/test.mjs (MCP TypeScript SDK: Streamable HTTP, legacy HTTP+SSE, WebSocket)"
run_node "$mcp_ts_dir/test.mjs" "$root/target/interop-mcp-ts.json"

say "browser: interop/browser/test.mjs (headless Chromium, playwright-core)"
run_node "$browser_dir/test.mjs" "$root/target/interop-browser.json"

say "gateway: interop/gateway/test_gateway.py (MCP Python SDK through the stdio gateway)"
run_pytest "$gateway_dir/test_gateway.py" "$root/target/interop-gateway-python.xml"

say "gateway: interop/gateway/test.mjs (MCP TypeScript SDK through the stdio gateway)"
run_node "$gateway_dir/test.mjs" "$root/target/interop-gateway-ts.json"

if [ "$failed" != 0 ]; then status=1; fi
echo "interop: $passed passed, $failed failed"
exit "$status"
