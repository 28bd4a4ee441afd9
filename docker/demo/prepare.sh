#!/usr/bin/env bash
# Prepare the local Docker demo (docker/compose.yml): one server + site-1 + site-2 on this host.
# Run from the repository root in an environment with the package installed
# (pip install -e ".[dicom,he]"):
#
#   bash docker/demo/prepare.sh
#
# It provisions a FRESH demo federation (new root CA) from provisioning/project.yml into
# docker/demo/workspace, fills the server's and the two sites' local/ folders exactly as
# docs/DEPLOYMENT.md tells hospital IT to, and writes a small NIfTI phantom per site into
# docker/demo/data/site-N (mounted read-only at /data). Everything it writes is git-ignored.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEMO="$ROOT/docker/demo"
SERVER="fl-server.hospital-network.example"
CASES="${DEMO_CASES:-8}"

cd "$ROOT"
rm -rf "$DEMO/workspace"
nvflare provision -p provisioning/project.yml -w "$DEMO/workspace" >/dev/null
KITS="$DEMO/workspace/omnifm/prod_00"
[[ -d "$KITS/$SERVER" ]] || { echo "provisioning did not write $KITS/$SERVER" >&2; exit 1; }

python3 provisioning/allow_omnifm.py "$KITS/$SERVER"
omnifm-make-phantom --out "$DEMO/data" --sites 2 --cases "$CASES" --modalities t1 t2 --shape 64 64 24

write_site_config() {  # <site> <modality>
    cp site_configs/resources.json "$KITS/$1/local/resources.json"
    cat > "$KITS/$1/local/omnifm_site.json" <<JSON
{
  "_comment": "Docker demo site: the phantom written by docker/demo/prepare.sh, mounted read-only at /data.",
  "format": "nifti",
  "data_root": "/data",
  "datalist": "datalist.json",
  "modalities": ["$2"],
  "label_map": {"0": "background", "1": "necrotic", "2": "edema", "4": "enhancing"},
  "split": {"val_fraction": 0.25, "seed": 0},
  "spacing": null
}
JSON
    echo "filled $KITS/$1/local (resources.json, omnifm_site.json: $2)"
}
write_site_config site-1 t1
write_site_config site-2 t2

echo
echo "Demo ready. Start it with:"
echo "  OMNIFM_UID=$(id -u) docker compose -f docker/compose.yml up --build"
echo "Admin kit: $KITS/admin@omnifm.example (the server is published on localhost:8002; add"
echo "  '127.0.0.1 $SERVER' to /etc/hosts to use it from this host)."
