#!/usr/bin/env bash
# The test suite under a sanitizer, in its own build directory (the normal build is not touched).
#   Tests/Scripts/sanitizers.sh address|thread
# AddressSanitizer runs without leak detection: XCTest's runner leaks at exit, and LeakSanitizer
# would change every helper process's exit status; descriptor leaks are checked by the tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
    address) ASAN_OPTIONS=detect_leaks=0 exec swift test --sanitize=address --scratch-path .build-asan ;;
    thread) exec swift test --sanitize=thread --scratch-path .build-tsan ;;
    *) echo "sanitizers.sh: say which: address or thread" >&2; exit 64 ;;
esac
