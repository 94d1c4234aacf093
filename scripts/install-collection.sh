#!/usr/bin/env bash
# Build the collection tarball from the working tree and install it the way users do
# (ansible-galaxy collection build + install) into .cache/collections.
# Also lay out a copy under .cache/src/ansible_collections/fleetgpu/passthrough for ansible-test.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
export PATH="$here/.venv/bin:$PATH"
mkdir -p .cache/dist .cache/collections
rm -f .cache/dist/fleetgpu-passthrough-*.tar.gz
ansible-galaxy collection build --force --output-path .cache/dist . >/dev/null
ansible-galaxy collection install --force -p .cache/collections .cache/dist/fleetgpu-passthrough-*.tar.gz >/dev/null
src=.cache/src/ansible_collections/fleetgpu/passthrough
rm -rf .cache/src && mkdir -p "$src"
rsync -a --exclude .venv --exclude .cache --exclude .git --exclude fleet-report --exclude '__pycache__' --exclude .pytest_cache ./ "$src/"
# ansible-test lists a collection's files through git when it sits in a repository.
(cd "$src" && git init -q && git add -A)
echo "collection installed: $(ls .cache/dist)"
