#!/usr/bin/env bash
# Use the installed `prunequant` the way a CI job does: gates that pass and fail,
# exit codes, JSON on stdout and nothing else, the Markdown summary, compare.
# Run by `make test` (tests/test_ci_contract.py); needs `prunequant` and `python` on PATH.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model="$root/sample_models/digits_cnn.onnx"
data="$root/sample_models/digits_cnn.npz"
passed=0
fail() { echo "ci_contract: FAILED: $*" >&2; echo "ci_contract: $passed passed, 1 failed"; exit 1; }

# 1. Gates that hold: exit 0, exactly one JSON document on stdout, a Markdown summary.
prunequant compress "$model" "$work/ok.onnx" --bits 8 --data "$data" --json --report "$work/ok.md" \
  --max-accuracy-drop 1 --min-agreement 0.98 --min-ratio 3 >"$work/ok.json" 2>"$work/ok.err"
rc=$?
[ "$rc" -eq 0 ] || fail "passing gates exited $rc: $(cat "$work/ok.err")"
python -m json.tool "$work/ok.json" >/dev/null || fail "stdout is not exactly one JSON document"
[ ! -s "$work/ok.err" ] || fail "stderr not empty: $(cat "$work/ok.err")"
grep -q "all gates passed" "$work/ok.md" || fail "Markdown summary missing its verdict"
passed=$((passed + 1))

# 2. A gate that fails: exit 8, and the model, the JSON and the summary are still written.
prunequant compress "$model" "$work/bad.onnx" --bits 2 --data "$data" --json \
  --report "$work/bad.md" --max-accuracy-drop 0.1 >"$work/bad.json" 2>"$work/bad.err"
rc=$?
[ "$rc" -eq 8 ] || fail "failing gate exited $rc, not 8"
[ -s "$work/bad.onnx" ] || fail "the model was not written when a gate failed"
python -m json.tool "$work/bad.json" >/dev/null || fail "gate-failure stdout is not JSON"
python -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["passed"] is False and d["failed_gates"] == ["--max-accuracy-drop"], d["failed_gates"]' \
  "$work/bad.json" || fail "JSON does not say which gate failed"
grep -q "gates failed" "$work/bad.md" || fail "summary does not say the gates failed"
passed=$((passed + 1))

# 3. compare reproduces compress's numbers for the same pair of models.
prunequant compare "$model" "$work/ok.onnx" --data "$data" --json >"$work/cmp.json" || fail "compare exited $?"
python - "$work/ok.json" "$work/cmp.json" <<'PY' || fail "compare disagrees with compress"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
for key in ("original", "compressed", "ratio", "weight_storage", "evaluation"):
    assert a[key] == b[key], key
PY
passed=$((passed + 1))

# 4. A table in a log: no colour codes, no progress noise, and a bad input is one line + its code.
prunequant compress "$model" "$work/t.onnx" --data "$data" >"$work/table.txt" 2>"$work/table.err" || fail "table run failed"
! grep -q $'\x1b' "$work/table.txt" || fail "ANSI escapes in a non-terminal table"
[ ! -s "$work/table.err" ] || fail "progress or warnings on a non-terminal stderr"
prunequant compress "$work/missing.onnx" "$work/x.onnx" >"$work/m.out" 2>"$work/m.err"
rc=$?
[ "$rc" -eq 3 ] && [ "$(wc -l <"$work/m.err")" -eq 1 ] && [ ! -s "$work/m.out" ] \
  || fail "missing input: exit $rc, $(cat "$work/m.err")"
passed=$((passed + 1))

echo "ci_contract: $passed passed, 0 failed"
