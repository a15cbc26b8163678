#!/usr/bin/env bash
# `make fuzz`: builds the fuzz targets with cargo-afl and runs each under Debian's AFL++
# for FUZZ_SECONDS (default 60), then prints executions, crashes and hangs per target.
# Installs what is missing: afl++ from apt, cargo-afl (pinned) from crates.io.
#
# Environment: FUZZ_SECONDS, FUZZ_TARGETS (space-separated subset), FUZZ_OUT (default
# target/fuzz: build/, seeds/, findings/<target>/ with AFL's crashes/ and hangs/).
# Exit status 1 when any target crashed or hung.
set -euo pipefail

CARGO_AFL_VERSION=0.18.2
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TARGETS=${FUZZ_TARGETS:-template config crd annotation csi_publish target_path}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${FUZZ_OUT:-$root/target/fuzz}

if ! command -v afl-fuzz >/dev/null; then
    echo "installing afl++ (apt)" >&2
    apt-get update -qq && apt-get install -y -qq afl++
fi
if ! cargo install --list | grep -qx "cargo-afl v$CARGO_AFL_VERSION:"; then
    echo "installing cargo-afl $CARGO_AFL_VERSION" >&2
    cargo install cargo-afl --version "$CARGO_AFL_VERSION" --locked
fi

# cargo-afl links every target with AFL++'s runtime object from its data directory.
# Instead of building its bundled AFL++ (`cargo afl config --build`), give it Debian's,
# which matches the afl-fuzz that runs the targets.
rustc_release=$(rustc -vV | sed -n 's/^release: //p')
rustc_commit=$(rustc -vV | sed -n 's/^commit-hash: //p')
runtime_dir=${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/rustc-$rustc_release-${rustc_commit:0:7}/afl.rs-$CARGO_AFL_VERSION/afl-llvm
mkdir -p "$runtime_dir"
if ! cmp -s /usr/lib/afl/afl-compiler-rt.o "$runtime_dir/afl-compiler-rt.o"; then
    cp /usr/lib/afl/afl-compiler-rt.o "$runtime_dir/afl-compiler-rt.o"
fi

build=$out/build
(cd "$root/fuzz" && CARGO_TARGET_DIR=$build nice cargo afl build --release --locked --bins)
rm -rf "$out/seeds"
"$build/release/seeds" "$root" "$out/seeds"

mkdir -p "$out/findings"
summary=()
failed=0
for target in $FUZZ_TARGETS; do
    findings=$out/findings/$target
    rm -rf "$findings"
    echo "fuzzing $target for ${FUZZ_SECONDS}s" >&2
    # No CPU binding: other builds share the cores. No UI: logs stay readable.
    AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
        AFL_SKIP_CRASHES=1 \
        nice afl-fuzz -V "$FUZZ_SECONDS" -m none -t 2000 -x "$root/fuzz/dict/$target.dict" \
        -i "$out/seeds/$target" -o "$findings" -- "$build/release/$target" >"$out/$target.log" 2>&1 \
        || { echo "afl-fuzz failed for $target; see $out/$target.log" >&2; tail -20 "$out/$target.log" >&2; exit 1; }
    stats=$findings/default/fuzzer_stats
    stat() { sed -n "s/^$1 *: *//p" "$stats"; }
    crashes=$(stat saved_crashes)
    hangs=$(stat saved_hangs)
    summary+=("$(printf '%-12s %12s execs %8s/s  corpus %5s  crashes %s  hangs %s' \
        "$target" "$(stat execs_done)" "$(stat execs_per_sec)" "$(stat corpus_count)" "$crashes" "$hangs")")
    if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
        failed=1
        summary+=("             inputs in $findings/default/crashes and hangs")
    fi
done
printf '%s\n' "${summary[@]}"
exit $failed
