#!/usr/bin/env bash
# The nanogpt program end to end, on the tiny fixture corpus with 1 thread:
#   50 iterations train with a finite, falling loss; resuming from the step-25 checkpoint
#   reproduces steps 26-50 bit for bit; sampling with and without the KV cache prints the same
#   text; bad input gives one error line, a non-zero exit code and no output files.
# Usage: smoke.sh NANOGPT FIXTURE_DIR WORK_DIR
set -euo pipefail
nanogpt=$1 fixtures=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
common=(--data "$fixtures/tiny.txt" --n-layer 2 --n-head 2 --n-embd 32 --block-size 32 --batch-size 8
        --eval-interval 25 --eval-iters 4 --lr 3e-3 --warmup-iters 5 --lr-decay-iters 50 --min-lr 3e-4
        --threads 1 --seed 5)
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }

"$nanogpt" train "${common[@]}" --max-iters 50 --out "$work/straight" > "$work/straight.log"
"$nanogpt" train "${common[@]}" --max-iters 25 --out "$work/resumed" > /dev/null
"$nanogpt" train "${common[@]}" --max-iters 50 --out "$work/resumed" --resume > /dev/null

# Loss finite and falling: mean of the first 10 training losses above the mean of the last 10.
awk -F, 'NR > 1 && $2 != "" { n++; loss[n] = $2; if ($2 != $2 + 0 || $2 == "nan" || $2 == "inf") bad = 1 }
         END { if (bad || n != 50) exit 1; for (i = 1; i <= 10; i++) { a += loss[i]; b += loss[n - 10 + i] }
               if (!(b < a)) exit 1 }' "$work/straight/loss.csv" || fail "training loss not finite and falling"

# Steps 26-50 of the resumed run equal the uninterrupted run's, digit for digit (17 digits: exact).
diff <(awk -F, 'NR > 1 && $1 >= 25 && $2 != ""' "$work/straight/loss.csv") \
     <(awk -F, 'NR > 1 && $1 >= 25 && $2 != ""' "$work/resumed/loss.csv") > /dev/null \
  || fail "resumed training differs from the uninterrupted run"
cmp "$work/straight/last.safetensors" "$work/resumed/last.safetensors" || fail "final checkpoints differ"

# Sampling: KV cache vs recomputation.
sample=(sample --checkpoint "$work/straight/ckpt.safetensors" --prompt "The " --max-new-tokens 100 --seed 3)
[ "$("$nanogpt" "${sample[@]}")" = "$("$nanogpt" "${sample[@]}" --no-kv-cache)" ] || fail "sample differs with the KV cache"

# eval prints val_loss with a finite number.
"$nanogpt" eval --checkpoint "$work/straight/ckpt.safetensors" --data "$fixtures/tiny.txt" | grep -Eq '^val_loss [0-9.]+$' \
  || fail "eval output"

# Bad input: exit code != 0, exactly one line on stderr, nothing written.
expect_error() {
  local what=$1 out=$2; shift 2
  local status=0
  "$nanogpt" "$@" > "$work/stdout" 2> "$work/stderr" || status=$?
  [ "$status" -ne 0 ] || fail "$what: exit code 0"
  [ "$(wc -l < "$work/stderr")" -eq 1 ] || fail "$what: expected one error line, got: $(cat "$work/stderr")"
  grep -q '^nanogpt: error: ' "$work/stderr" || fail "$what: $(cat "$work/stderr")"
  [ -z "$out" ] || [ ! -e "$out" ] || fail "$what: left $out behind"
  echo "  $what -> $(cat "$work/stderr")"
}
printf '' > "$work/empty.txt"
printf 'ok \xff\xfe text\n' > "$work/latin1.txt"
printf 'short text\n' > "$work/short.txt"
expect_error "missing data file" "$work/o1" train --data "$work/none.txt" --out "$work/o1"
expect_error "empty data file" "$work/o2" train --data "$work/empty.txt" --out "$work/o2"
expect_error "non-UTF-8 data file" "$work/o3" train --data "$work/latin1.txt" --out "$work/o3"
expect_error "block size larger than the text" "$work/o4" train --data "$work/short.txt" --block-size 64 --out "$work/o4"
expect_error "checkpoint of another architecture" "" eval --checkpoint "$fixtures/other_architecture.safetensors" --data "$fixtures/tiny.txt"
expect_error "prompt outside the vocabulary" "" sample --checkpoint "$work/straight/ckpt.safetensors" --prompt "Zebra#~"
echo "smoke: passed"
