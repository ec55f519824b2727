#!/usr/bin/env bash
# Replays CZ-NIC's Deckard scenarios against shieldns and holds the line:
# fails if any scenario in passing.txt (the ratchet; it only grows) fails.
#
#   tests/conformance/run.sh [--binary PATH] [--out DIR] [-- run-deckard.sh args]
#
# Needs root (Deckard makes network namespaces) and the kit in ../shared/conformance
# (next to the repository) or $CONFORMANCE_KIT; it is copied to $CONFORMANCE_HOME
# (default /var/tmp/shieldns-conformance) by the kit's setup.sh. Without the kit the
# script says so and exits 0: the conformance run is CI's, on a machine that has it.
# Exit status: 0 when every ratcheted scenario passed, 1 otherwise, 2 on setup errors.
set -o nounset -o pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
KIT="${CONFORMANCE_KIT:-$REPO/../shared/conformance}"
HOME_DIR="${CONFORMANCE_HOME:-/var/tmp/shieldns-conformance}"
BINARY="" OUT="" EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) BINARY="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "conformance: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

if [ ! -x "$KIT/run-deckard.sh" ]; then
    echo "SKIP: conformance kit not found at $KIT (set CONFORMANCE_KIT)"
    exit 0
fi
if [ ! -x "$HOME_DIR/run-deckard.sh" ] || [ ! -x "$HOME_DIR/venv/bin/python3" ]; then
    "$KIT/setup.sh" "$HOME_DIR" || { echo "conformance: kit setup failed" >&2; exit 2; }
fi
if [ -z "$BINARY" ]; then
    (cd "$REPO" && cargo build --release --locked -p shieldns) || exit 2
    BINARY="${CARGO_TARGET_DIR:-$REPO/target}/release/shieldns"
fi
OUT="${OUT:-$REPO/target/conformance}"
rm -rf "$OUT"
mkdir -p "$OUT"

"$HOME_DIR/run-deckard.sh" --cmd "$BINARY run --config shieldns.toml" \
    --template "$HERE/shieldns.toml.j2:shieldns.toml" \
    --template "$HERE/hints.zone.j2:hints.zone" \
    --fake-monotonic --recheck -j "$(nproc)" --out "$OUT" --name shieldns "${EXTRA[@]}"
status=$?
[ -s "$OUT/summary.txt" ] || { echo "conformance: Deckard produced no summary (exit $status)" >&2; exit 2; }

# The ratchet: every scenario listed must still pass.
lost=$(comm -23 <(grep -v '^#' "$HERE/passing.txt" | sed '/^$/d' | sort -u) <(sort -u "$OUT/passed.txt"))
gained=$(comm -13 <(grep -v '^#' "$HERE/passing.txt" | sed '/^$/d' | sort -u) <(sort -u "$OUT/passed.txt"))
consensus_passed=$(comm -12 <(sort -u "$KIT/consensus.txt") <(sort -u "$OUT/passed.txt") | wc -l)
echo "conformance: $(head -1 "$OUT/summary.txt"); consensus $consensus_passed of $(wc -l < "$KIT/consensus.txt")"
if [ -n "$gained" ]; then
    echo "conformance: newly passing (add to tests/conformance/passing.txt):"
    printf '  %s\n' $gained
fi
if [ -n "$lost" ]; then
    # One more try, alone, for each lost scenario: on 2 cores a loaded
    # machine makes Deckard's timing checks fail ("under load").
    retry="$OUT-retry"; rm -rf "$retry"; mkdir -p "$retry/set"
    for s in $lost; do ln -sf "$HOME_DIR/deckard/sets/resolver/$s" "$retry/set/$s"; done
    "$HOME_DIR/run-deckard.sh" --cmd "$BINARY run --config shieldns.toml" \
        --template "$HERE/shieldns.toml.j2:shieldns.toml" \
        --template "$HERE/hints.zone.j2:hints.zone" \
        --fake-monotonic -j 1 --scenarios "$retry/set" --out "$retry/out" --name shieldns >/dev/null 2>&1
    [ -s "$retry/out/passed.txt" ] && lost=$(comm -23 <(printf '%s\n' $lost | sort -u) <(sort -u "$retry/out/passed.txt"))
    [ -s "$retry/out/failed.txt" ] && cp "$retry/out/failed.txt" "$OUT/failed-retry.txt"
fi
if [ -n "$lost" ]; then
    echo "conformance: REGRESSED (listed in passing.txt, now failing):"
    for s in $lost; do grep -P "^\Q$s\E\t" "$OUT/failed.txt" || echo "$s"; done | sed 's/^/  /'
    exit 1
fi
exit 0
