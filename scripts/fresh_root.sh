#!/usr/bin/env bash
# scripts/fresh_root.sh [CMD ...]: runs CMD (default: bash scripts/test.sh) in a clean clone of this
# repository's committed HEAD inside a brand-new Debian 12 (bookworm) root, as a new user's machine
# would see it: only Debian's minimal `apt` variant plus ca-certificates, nothing installed by hand.
# CI (.ci/run) proves the README's commands this way; run it yourself before touching setup, CMake
# or a dependency:
#
#   sudo scripts/fresh_root.sh                          # the test suite (scripts/test.sh)
#   sudo scripts/fresh_root.sh bash scripts/demo.sh     # the demo
#
# Needs root, mmdebstrap (installed from Debian when missing) and the Debian package registry. The
# base root is made once (~90 s) and kept in $SWITCHYARD_FRESH_BASE (default
# /var/tmp/switchyard-fresh-base); every run starts from a new copy of it, so no package install,
# build or clone carries over. The machine's name (/etc/hosts, /etc/hostname) and the network's
# package-registry settings (apt configuration, pip settings and certificate, DNS) are copied in, as
# any new machine on the same network has them.
# A CUDA toolkit in /usr/local/cuda is bind-mounted read-only, as on a GPU node. Daemons CMD starts
# inside the root (e.g. scripts/slurm_local.sh's) are stopped when it ends, and the root is removed
# (SWITCHYARD_FRESH_KEEP=1 keeps it, unmounted, for a look inside).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
base=${SWITCHYARD_FRESH_BASE:-/var/tmp/switchyard-fresh-base}
root=${SWITCHYARD_FRESH_ROOT:-/var/tmp/switchyard-fresh-root}
say() { echo "fresh_root: $*"; }
die() { echo "fresh_root: error: $*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "needs root (chroot, mounts); run it with sudo"
git -C "$repo" rev-parse --verify -q HEAD >/dev/null || die "$repo is not a git repository with a commit"
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] ||
  say "note: uncommitted changes in $repo are not part of the run (it clones HEAD)"

if [ ! -f "$base/.switchyard-fresh-base" ]; then
  if ! command -v mmdebstrap >/dev/null; then
    say "installing mmdebstrap"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null ||
      die "could not install mmdebstrap from Debian"
  fi
  [ ! -e "$base" ] || [ -f "$base/.switchyard-fresh-base" ] || [ -z "$(ls -A "$base" 2>/dev/null)" ] ||
    die "$base exists and was not made by this script; set SWITCHYARD_FRESH_BASE to another folder"
  say "making a Debian 12 base root in $base (once)"
  rm -rf "$base.partial"
  if ! mmdebstrap --variant=apt --include=ca-certificates bookworm "$base.partial" >"$base.log" 2>&1; then
    tail -n 20 "$base.log" >&2
    die "mmdebstrap failed (log: $base.log)"
  fi
  touch "$base.partial/.switchyard-fresh-base"
  rm -rf "$base" && mv "$base.partial" "$base"
fi

# Every run gets its own root, $prefix.<pid>, marked with its owner's pid, so two runs never share
# one and a run killed before its cleanup (its mounts still there) never blocks the next: roots whose
# owner is gone are unmounted and removed first. Only folders holding our marker are ever touched.
prefix=${SWITCHYARD_FRESH_ROOT:-/var/tmp/switchyard-fresh-root}
root=$prefix.$$
under() { awk -v r="$1/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r; }
unmount_all() { local m; for m in $(under "$1"); do umount -l "$m" 2>/dev/null || true; done; }
kill_inside() {  # processes whose root is inside $1 (daemons CMD started there)
  local pid
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    case "$(readlink "/proc/$pid/root" 2>/dev/null)" in "$1" | "$1"/*) kill -9 "$pid" 2>/dev/null ;; esac
  done
}
remove_root() {  # $1: a root this script made; removed only once nothing is mounted under it
  kill_inside "$1"; sleep 0.5; unmount_all "$1"
  if [ -n "$(under "$1")" ]; then say "note: could not unmount everything under $1; left in place"; return; fi
  rm -rf --one-file-system "$1"
}
for old in "$prefix" "$prefix".*; do
  [ -d "$old" ] && [ -f "$old/.switchyard-fresh-base" ] || continue
  owner=$(cat "$old/.switchyard-fresh-run" 2>/dev/null || echo 0)
  if [ "$owner" -gt 0 ] 2>/dev/null && kill -0 "$owner" 2>/dev/null; then continue; fi
  say "removing $old, left by a run that ended before its cleanup"
  remove_root "$old"
done
stop_root() {
  if [ "${SWITCHYARD_FRESH_KEEP:-0}" = 1 ]; then kill_inside "$root"; unmount_all "$root"; say "kept $root"
  else remove_root "$root"; fi
}
trap stop_root EXIT
[ ! -e "$root" ] || die "$root already exists; remove it or set SWITCHYARD_FRESH_ROOT to another prefix"
cp -a "$base" "$root"
echo $$ >"$root/.switchyard-fresh-run"

# the machine's name and the network's package-registry settings, as every machine on it has them
for f in /etc/resolv.conf /etc/hosts /etc/hostname; do [ -f "$f" ] && cp "$f" "$root$f"; done
for f in /etc/apt/apt.conf.d/*; do [ -f "$f" ] && cp "$f" "$root/etc/apt/apt.conf.d/"; done
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
  mkdir -p "$root$(dirname "$PIP_CERT")" && cp "$PIP_CERT" "$root$PIP_CERT"
fi
env_pass=(); while IFS= read -r v; do env_pass+=("$v"); done < <(env | grep -E '^(PIP_|https?_proxy=|no_proxy=)' || true)

mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
if [ -d /usr/local/cuda ]; then  # the toolkit at its real path, and /usr/local/cuda pointing at it
  cuda=$(readlink -f /usr/local/cuda)
  mkdir -p "$root$cuda" && mount --bind -o ro "$cuda" "$root$cuda"
  [ "$cuda" = /usr/local/cuda ] || ln -sfn "$cuda" "$root/usr/local/cuda"
fi
git clone -q "$repo" "$root/root/switchyard"

cmd=("$@"); [ ${#cmd[@]} -gt 0 ] || cmd=(bash scripts/test.sh)
say "running '${cmd[*]}' in a clean clone ($(git -C "$repo" rev-parse --short HEAD)) on a new Debian 12 root"
start=$(date +%s)
rc=0
chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI="${CI:-}" \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${env_pass[@]}" \
  bash -c 'cd /root/switchyard && exec "$@"' _ "${cmd[@]}" || rc=$?
say "'${cmd[*]}' exited $rc after $(( $(date +%s) - start )) s"
exit "$rc"
