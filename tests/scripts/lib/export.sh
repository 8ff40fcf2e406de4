# tests/scripts/lib/export.sh (sourced by the export script tests after common.sh): expect_usage,
# and write_val_shard, an llm.c shard of the training text for eval and the reference.

# expect_usage needle -- command...: the command exits 2 with one line on stderr, containing needle.
expect_usage() {
  local needle=$1; shift 2
  local rc=0
  "$@" >"$TMP/out" 2>"$TMP/err" || rc=$?
  if [ $rc -ne 2 ] || [ "$(grep -c . "$TMP/err")" -ne 1 ] || ! grep -qF -- "$needle" "$TMP/err"; then
    echo "FAIL: want exit 2 and one line with '$needle', got rc=$rc:"; cat "$TMP/err"; exit 1
  fi
}

# $TMP/val.bin: an llm.c shard (v1, uint16 tokens) of the bytes of $TMP/a.txt
write_val_shard() {
  /usr/bin/python3 - "$TMP/a.txt" "$TMP/val.bin" <<'PY'
import sys, numpy as np
t = np.frombuffer(open(sys.argv[1], "rb").read(), dtype=np.uint8).astype("<u2")
h = np.zeros(256, dtype="<i4"); h[:3] = (20240520, 1, len(t))
open(sys.argv[2], "wb").write(h.tobytes() + t.tobytes())
PY
}
