#!/usr/bin/env bash
# One command per figure of docs/performance.md: builds the release binaries, starts a private
# nats-server (JetStream, its own port and store directory) and `ordersaga serve` on a fresh
# database, runs one load-test scenario against it, prints the CPU each process spent per
# finished order, then stops what it started and drops the database.
#
#   load-tests/bench.sh <scenario> [load-tests flags...]
#   load-tests/bench.sh latency --duration 20s
#   STRIPE_FAKE=separate load-tests/bench.sh latency     # the Stripe fake as its own process
#   SPLIT_ROLES=1 load-tests/bench.sh latency            # the three roles as three processes
#   INSTANCES=3 load-tests/bench.sh latency              # three identical instances of a cluster
#   INSTANCES=3 KILL_ONE_AT=7 load-tests/bench.sh latency --duration 20s   # ... one SIGKILLed at 7 s
#
# Settings (environment): PG_URL (default postgres://postgres@127.0.0.1:5432, the server, no
# database), NATS_PORT (14222), HTTP_PORT (18080), FAKE_PORT (12111), STRIPE_FAKE (in-process or
# separate), RESULT (the JSON result's path, the HTML page beside it; default
# load-tests/results/<scenario>-<UTC time>.json, so do not pass --out), and anything
# `ordersaga serve` reads (INVENTORY_SHARDS, DATABASE_WRITERS, ...). For `recovery` the script
# gives the tool the server's pid and the command that starts it again on the same database and
# NATS, with a payment timeout of an hour so the sagas wait through the restart; for `soak` and
# `slow-stripe`, the pid whose RSS to sample; `slow-stripe` runs the in-process fake with
# STRIPE_FAKE_API_DELAY_MS=300. With INSTANCES=N (N > 1), N `serve` processes share the
# database and NATS on HTTP_PORT and the ports after it (INSTANCE_ID bench-1 ... bench-N), with
# the Stripe fake as its own process sending every webhook to the first; the tool spreads the
# orders over all of them; the CPU of each is printed.
# It needs nats-server and curl on PATH, PostgreSQL reachable at PG_URL, and Linux's /proc for
# the CPU figures; psql, if present, drops the database afterwards. It never touches the
# machine's own nats-server, and only the database it created.
set -euo pipefail

scenario=${1:?usage: load-tests/bench.sh <scenario> [load-tests flags...]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
pg_url=${PG_URL:-postgres://postgres@127.0.0.1:5432}
nats_port=${NATS_PORT:-14222}
http_port=${HTTP_PORT:-18080}
fake_port=${FAKE_PORT:-12111}
database="ordersaga_bench_$(date +%s)_$$"
work=$(mktemp -d)
pids=()

cleanup() {
    if [ -f "$work/restarted.pid" ]; then pids+=("$(cat "$work/restarted.pid")"); fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if command -v psql >/dev/null; then
        psql -q "$pg_url/postgres" -c "DROP DATABASE IF EXISTS $database" >/dev/null 2>&1 || true
    fi
    if [ -z "${keep_logs:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

wait_for() { # what, its pid, deadline in tenths of a second, command...
    local what=$1 pid=$2 tenths=$3
    shift 3
    for _ in $(seq "$tenths"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then break; fi # it exited: no use waiting
        sleep 0.1
    done
    echo "bench: $what did not come up; its log is in $work" >&2
    keep_logs=1
    exit 1
}

# CPU ticks (user + system) of a process, 0 once it is gone.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The PostgreSQL backends serving this run's database (their titles name it).
pg_ticks() {
    local total=0 pid
    for pid in $(pgrep -f "postgres: .*$database" || true); do
        total=$((total + $(ticks "$pid")))
    done
    echo "$total"
}

(cd "$root" && cargo build --release -q -p ordersaga -p load-tests)
bin="$root/target/release"

nats-server -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
nats_pid=$!
pids+=("$nats_pid")
wait_for "nats-server on port $nats_port" "$nats_pid" 100 bash -c "echo > /dev/tcp/127.0.0.1/$nats_port"

instances=${INSTANCES:-1}
if [ "$instances" -gt 1 ]; then STRIPE_FAKE=separate; fi
stripe=()
fake_pid=
if [ "${STRIPE_FAKE:-in-process}" = separate ]; then
    "$bin/ordersaga" stripe-fake --addr "127.0.0.1:$fake_port" \
        --webhook-url "http://127.0.0.1:$http_port/payments/webhook" \
        --webhook-secret whsec_ordersaga_dev_fake >"$work/fake.log" 2>&1 &
    fake_pid=$!
    pids+=("$fake_pid")
    stripe=(STRIPE_SECRET_KEY=sk_test_bench "STRIPE_API_BASE=http://127.0.0.1:$fake_port"
        STRIPE_WEBHOOK_SECRET=whsec_ordersaga_dev_fake)
fi

extra=()
if [ "$scenario" = recovery ]; then extra=(PAYMENT_STEP_TIMEOUT_MS=3600000); fi
# `recovery --spread`: charges take RECOVERY_CHARGE_DELAY_MS (2 s), so the restart catches the
# sagas with their charges in flight; nothing refuses placements meanwhile.
case " $* " in *" --spread "*) if [ "$scenario" = recovery ]; then
    extra+=("STRIPE_FAKE_API_DELAY_MS=${RECOVERY_CHARGE_DELAY_MS:-2000}" MAX_COMMANDS_IN_FLIGHT=10000000)
fi ;; esac
if [ "$scenario" = slow-stripe ]; then extra=(STRIPE_FAKE_API_DELAY_MS=300); fi
# The server's command line, quoted for a shell: recovery starts it again with the same one.
settings=$(printf '%q ' DATABASE_URL="$pg_url/$database?sslmode=disable" \
    NATS_URL="nats://127.0.0.1:$nats_port" \
    ADMIN_TOKEN="${ADMIN_TOKEN:-bench}" RUST_LOG="${RUST_LOG:-warn}" \
    ORDER_RATE_LIMIT_PER_SEC=1000000 ORDER_RATE_LIMIT_BURST=1000000 "${stripe[@]}" "${extra[@]}")
serve="env $settings HTTP_ADDR=127.0.0.1:$http_port $(printf '%q' "$bin/ordersaga") serve"
if [ "$instances" -gt 1 ]; then
    serve="env $settings INSTANCE_ID=bench-1 HTTP_ADDR=127.0.0.1:$http_port $(printf '%q' "$bin/ordersaga") serve"
fi
role_pids=()
if [ -n "${SPLIT_ROLES:-}" ]; then
    # The order role answers the load on HTTP_PORT; inventory and payment listen on the next two
    # ports (the payment role's in-process fake sends its webhooks there). Commands and answers
    # between them go through JetStream.
    serve="env $settings ROLES=order HTTP_ADDR=127.0.0.1:$http_port $(printf '%q' "$bin/ordersaga") serve"
    for role in inventory payment; do
        port=$((http_port + ${#role_pids[@]} + 1))
        bash -c "exec env $settings ROLES=$role HTTP_ADDR=127.0.0.1:$port $(printf '%q' "$bin/ordersaga") serve" >"$work/$role.log" 2>&1 &
        role_pids+=("$!")
        pids+=("$!")
        wait_for "ordersaga ($role) on port $port" "$!" 600 curl -sf "http://127.0.0.1:$port/health/ready"
    done
fi
urls="http://127.0.0.1:$http_port"
bash -c "exec $serve" >"$work/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
wait_for "ordersaga on port $http_port" "$server_pid" 600 curl -sf "http://127.0.0.1:$http_port/health/ready"
if [ "$instances" -gt 1 ]; then
    # The first instance created the database; the others join it.
    for i in $(seq 2 "$instances"); do
        port=$((http_port + i - 1))
        bash -c "exec env $settings INSTANCE_ID=bench-$i HTTP_ADDR=127.0.0.1:$port $(printf '%q' "$bin/ordersaga") serve" >"$work/instance-$i.log" 2>&1 &
        role_pids+=("$!")
        pids+=("$!")
        urls="$urls,http://127.0.0.1:$port"
    done
fi
for i in $(seq 2 "$instances"); do
    port=$((http_port + i - 1))
    wait_for "ordersaga (instance $i) on port $port" "${role_pids[$((i - 2))]}" 600 curl -sf "http://127.0.0.1:$port/health/ready"
done
if [ "$instances" -gt 1 ]; then
    # The partitions are spread once neither key space has a hand-off left.
    wait_for "the partitions to spread" "$server_pid" 300 bash -c \
        "[ \$(curl -sf -H 'Authorization: Bearer ${ADMIN_TOKEN:-bench}' http://127.0.0.1:$http_port/cluster | grep -o '\"handoffs\":\[\]' | wc -l) = 2 ]"
fi
role0=()
for pid in "${role_pids[@]}"; do role0+=("$(ticks "$pid")"); done

# Transactions committed in this run's database (every statement outside BEGIN is one).
xacts() {
    if command -v psql >/dev/null; then
        psql -qtA "$pg_url/postgres" -c "SELECT xact_commit FROM pg_stat_database WHERE datname = '$database'" 2>/dev/null || echo 0
    else echo 0; fi
}
# Rows written and index/sequential reads per table in this run's database, to see which table
# the transactions go to.
table_stats() {
    if command -v psql >/dev/null; then
        psql -qtA -F' ' "$pg_url/$database" -c "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables ORDER BY relname" 2>/dev/null || true
    fi
}
table_stats >"$work/tables0"
server0=$(ticks "$server_pid")
nats0=$(ticks "$nats_pid")
pg0=$(pg_ticks)
xact0=$(xacts)
fake0=0
[ -n "$fake_pid" ] && fake0=$(ticks "$fake_pid")
mkdir -p "$root/load-tests/results"
result=${RESULT:-$root/load-tests/results/$scenario-$(date -u +%Y%m%dT%H%M%SZ).json}

restart=()
if [ "$scenario" = recovery ]; then
    # The restarted server is the tool's child; its pid file lets the cleanup stop it.
    restart=(--pid "$server_pid" --start-cmd "echo \$\$ > $work/restarted.pid; exec $serve >>$work/server.log 2>&1")
elif [ "$scenario" = soak ] || [ "$scenario" = slow-stripe ]; then
    restart=(--pid "$server_pid") # the server's RSS is sampled through /proc
fi
# KILL_ONE_AT=<seconds> (with INSTANCES > 1): that long into the run, SIGKILL the last instance,
# then report how long until every partition is owned again by a live instance.
killer_pid=
if [ -n "${KILL_ONE_AT:-}" ] && [ "$instances" -gt 1 ]; then
    victim=${role_pids[$((instances - 2))]}
    (
        sleep "$KILL_ONE_AT"
        kill -9 "$victim"
        killed=$(date +%s.%N)
        echo "bench: SIGKILLed instance $instances (pid $victim) at ${KILL_ONE_AT}s" >&2
        while :; do
            owners=$(curl -sf -H "Authorization: Bearer ${ADMIN_TOKEN:-bench}" \
                "http://127.0.0.1:$http_port/cluster" || true)
            if [ -n "$owners" ] && ! grep -q "\"owner\":\"bench-$instances\"" <<<"$owners" \
                && [ "$(grep -o '"handoffs":\[\]' <<<"$owners" | wc -l)" = 2 ]; then
                awk -v a="$killed" -v b="$(date +%s.%N)" \
                    'BEGIN { printf "bench: every partition owned again %.2f s after the SIGKILL\n", b - a }' >&2
                break
            fi
            sleep 0.1
        done
    ) &
    killer_pid=$!
fi
status=0
"$bin/load-tests" --url "$urls" --scenario "$scenario" \
    --admin-token "${ADMIN_TOKEN:-bench}" --out "$result" "${restart[@]}" "$@" || status=$?
if [ -n "$killer_pid" ]; then wait "$killer_pid" 2>/dev/null || true; fi

server1=$(ticks "$server_pid")
role1=()
for pid in "${role_pids[@]}"; do role1+=("$(ticks "$pid")"); done
nats1=$(ticks "$nats_pid")
pg1=$(pg_ticks)
xact1=$(xacts)
table_stats >"$work/tables1"
fake1=0
[ -n "$fake_pid" ] && fake1=$(ticks "$fake_pid")
field() { grep -o "\"$1\": *[0-9]*" "$result" | head -1 | grep -o '[0-9]*$' || echo 0; }
finished=$(($(field completed) + $(field cancelled)))
hz=$(getconf CLK_TCK)

if [ "$finished" -gt 0 ]; then
    echo
    echo "CPU per finished order ($finished completed or cancelled; ticks of 1/$hz s):"
    per_order() { # name, ticks
        awk -v t="$2" -v n="$finished" -v hz="$hz" -v name="$1" \
            'BEGIN { printf "  %-12s %6d ticks  %.3f ms per order\n", name, t, t * 1000 / hz / n }'
    }
    if [ "$instances" -gt 1 ]; then
        per_order "instance-1" $((server1 - server0))
        all=$((server1 - server0))
        for i in $(seq 2 "$instances"); do
            spent=$((role1[i - 2] - role0[i - 2]))
            if [ "$spent" -lt 0 ]; then
                echo "  instance-$i   killed during the run (its CPU is not counted)"
            else
                per_order "instance-$i" "$spent"
                all=$((all + spent))
            fi
        done
        per_order "instances" "$all"
    elif [ ${#role_pids[@]} -gt 0 ]; then
        per_order "order" $((server1 - server0))
        per_order "inventory" $((role1[0] - role0[0]))
        per_order "payment" $((role1[1] - role0[1]))
    else
        per_order ordersaga $((server1 - server0))
    fi
    if [ -n "$fake_pid" ]; then per_order stripe-fake $((fake1 - fake0)); fi
    per_order postgresql $((pg1 - pg0))
    per_order nats-server $((nats1 - nats0))
    awk -v x="$((xact1 - xact0))" -v n="$finished" \
        'BEGIN { printf "PostgreSQL transactions: %d, %.2f per order (pg_stat_database, sampled)\n", x, x / n }'
    echo "Per order, by table (rows inserted, updated, deleted; scans):"
    awk -v n="$finished" 'NR == FNR { i[$1] = $2; u[$1] = $3; d[$1] = $4; s[$1] = $5; next }
        { di = $2 - i[$1]; du = $3 - u[$1]; dd = $4 - d[$1]; ds = $5 - s[$1]
          if (di + du + dd + ds > 0)
              printf "  %-22s %6.2f %6.2f %6.2f  %6.2f\n", $1, di / n, du / n, dd / n, ds / n }' \
        "$work/tables0" "$work/tables1"
fi
exit "$status"
