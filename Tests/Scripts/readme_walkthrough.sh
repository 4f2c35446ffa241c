#!/usr/bin/env bash
# Runs the README's walkthrough block exactly as written (the fenced block after the
# "walkthrough" marker), with a time limit, and checks what it printed.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Every fenced block after a "walkthrough" marker, in order, as one script.
script=$(awk '/<!-- walkthrough/{found=1; next} found && /^```sh/{inside=1; next} inside && /^```/{inside=0; found=0; next} inside{print}' README.md)
[ -n "$script" ] || { echo "readme_walkthrough: no walkthrough block in README.md" >&2; exit 1; }
output=$(timeout 300 bash -euo pipefail -c "$script" 2>&1) || { echo "$output"; echo "readme_walkthrough: the walkthrough failed" >&2; exit 1; }
echo "$output"
grep -q "^hello from pid [0-9]*, LISTEN_FDNAMES=shared" <<<"$output" || { echo "readme_walkthrough: no answer from the adopted socket" >&2; exit 1; }
grep -q '^family: *inet' <<<"$output" || { echo "readme_walkthrough: inspect printed no family" >&2; exit 1; }
grep -q '"mechanism":"sharer"' <<<"$output" || { echo "readme_walkthrough: inspect --json printed no mechanism" >&2; exit 1; }
grep -q "^adopted <socket.socket fd=3, family=2, type=2" <<<"$output" || { echo "readme_walkthrough: the broker share was not adopted" >&2; exit 1; }
grep -q "^by name 127.0.0.1" <<<"$output" || { echo "readme_walkthrough: the named share was not adopted" >&2; exit 1; }
grep -q "^sockshare_claims_total 1" <<<"$output" || { echo "readme_walkthrough: the broker did not count the claim" >&2; exit 1; }
[ "$(grep -c '^hello from [0-9]*$' <<<"$output")" = 2 ] || { echo "readme_walkthrough: serve did not answer both requests" >&2; exit 1; }
grep -q "^sockshare serve pid [0-9]*: mode handoff" <<<"$output" || { echo "readme_walkthrough: no serve status" >&2; exit 1; }
echo "readme_walkthrough: every command ran as written"
