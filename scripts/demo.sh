#!/usr/bin/env bash
# The README's main job. Until the QEMU test host lands this prints the GPU facts of
# this machine through playbooks/facts.yml.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/bootstrap.sh
bash scripts/install-collection.sh
export PATH="$here/.venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$here/.cache/collections"
ansible-playbook -i localhost, -c local playbooks/facts.yml
