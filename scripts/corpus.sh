# scripts/corpus.sh (sourced): the small real corpus of the demo and the benchmarks. Every Debian
# machine has the license texts under /usr/share/common-licenses and a copyright file per installed
# package; `switchyard prepare` turns them into byte-level tokens once (data-cache/corpus.h5).
CORPUS=${CORPUS:-data-cache/corpus.h5}
ensure_corpus() {
  [ -f "$CORPUS" ] && return 0
  local copyrights
  mapfile -t copyrights < <(find /usr/share/doc -name copyright -type f 2>/dev/null | sort)
  build/switchyard prepare --input /usr/share/common-licenses "${copyrights[@]}" --output "$CORPUS" \
    --valid-fraction 0.05
}
