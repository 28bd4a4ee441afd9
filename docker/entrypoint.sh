#!/usr/bin/env bash
# Entrypoint of the OmniFM site/server image: runs the FLARE startup kit mounted at $OMNIFM_KIT in
# the foreground.
#
#   docker run ... -v <kit>:/workspace/kit:ro -v <data>:/data:ro omnifm-flare:0.1.0
#
# The kit may be mounted read-only: FLARE's own startup/sub_start.sh copies it into the writable
# run folder $NVFL_WORKSPACE (default /workspace/run; logs, job workspaces and pid files live
# there) and runs the FL server or client there, restarting it if it crashes, until an admin
# shuts it down (`shutdown client site-1` / `shutdown server`) or the container is stopped.
# `docker stop` reaches the FL process through tini (-g: the whole process group).
#
# Every check below fails with a message that names the fix (see docker/README.md).
set -euo pipefail

KIT="${OMNIFM_KIT:-/workspace/kit}"
RUN_DIR="${NVFL_WORKSPACE:-/workspace/run/fl}"
DATA_DIR="${OMNIFM_DATA:-/data}"

die() {
    echo "omnifm-entrypoint: ERROR: $*" >&2
    exit 2
}

warn() {
    echo "omnifm-entrypoint: WARNING: $*" >&2
}

check_kit() {
    [[ -d "$KIT/startup" ]] || die "no startup kit at $KIT (no startup/ folder). Mount the kit that \
provisioning made for this participant: -v <prod_NN>/<name>:$KIT:ro"
    [[ -x "$KIT/startup/sub_start.sh" ]] || die "$KIT/startup/sub_start.sh is missing or not \
executable; re-copy the kit from provisioning (keep file modes: cp -a / tar, not a zip without modes)"
    if [[ -f "$KIT/startup/fed_admin.json" ]]; then
        die "$KIT is an admin kit; it is not run in this container. Use it with omnifm-admin --kit \
or startup/fl_admin.sh on the admin's machine"
    fi
    local key keys
    keys=("$KIT"/startup/*.key)
    [[ -e "${keys[0]}" ]] || die "$KIT/startup has no private key (*.key); the kit is incomplete, \
re-copy it from provisioning"
    for key in "${keys[@]}"; do
        [[ -r "$key" ]] || die "cannot read $key as uid $(id -u). Give the kit to that uid \
(chown -R $(id -u) <kit>; keep the key mode 600) or run the container with --user <owner uid>"
    done
}

check_site_local() {
    [[ -f "$KIT/startup/fed_client.json" ]] || return 0
    [[ -f "$KIT/local/resources.json" ]] || warn "$KIT/local/resources.json is missing: FLARE's \
default allow-list refuses omnifm.* components of jobs without app/custom. Copy \
site_configs/resources.json there (docs/DEPLOYMENT.md, step 3)"
    [[ -f "$KIT/local/omnifm_site.json" ]] || warn "$KIT/local/omnifm_site.json is missing: OmniFM \
jobs will stop at this site. Copy a site_configs/omnifm_site.*.json template there and edit it"
}

check_data() {
    [[ -f "$KIT/startup/fed_client.json" ]] || return 0
    if [[ ! -d "$DATA_DIR" ]]; then
        warn "no data folder at $DATA_DIR; mount the site's prepared data read-only: \
-v <data_root>:$DATA_DIR:ro (phantom demo sites may ignore this)"
    elif [[ -w "$DATA_DIR" ]]; then
        warn "$DATA_DIR is writable; mount it read-only (-v <data_root>:$DATA_DIR:ro) so that no \
job can change the site's data"
    fi
}

clear_stale_pid_files() {
    # A new container cannot have a running FL instance; pid files left in a persisted run folder
    # by the previous container would make sub_start.sh refuse to start (PIDs are reused).
    mkdir -p "$RUN_DIR" || die "cannot create the run folder $RUN_DIR; mount a writable volume there"
    [[ -w "$RUN_DIR" ]] || die "the run folder $RUN_DIR is not writable by uid $(id -u); \
mount a writable volume there"
    rm -f "$RUN_DIR/daemon_pid.fl" "$RUN_DIR/pid.fl" "$RUN_DIR/shutdown.fl" "$RUN_DIR/restart.fl"
}

main() {
    check_kit
    check_site_local
    check_data
    clear_stale_pid_files
    # An arbitrary --user uid has no home in the image (HOME=/); caches then go to the run folder.
    [[ -n "${HOME:-}" && -w "${HOME}" ]] || export HOME="$RUN_DIR"
    command -v python3 >/dev/null || die "python3 is not on PATH"
    python3 -c "import nvflare, omnifm" 2>/dev/null || die "python3 cannot import nvflare and \
omnifm; rebuild the image (docker/README.md)"
    export NVFL_WORKSPACE="$RUN_DIR"
    echo "omnifm-entrypoint: kit $KIT -> run folder $RUN_DIR"
    exec "$KIT/startup/sub_start.sh" "$@"
}

main "$@"
