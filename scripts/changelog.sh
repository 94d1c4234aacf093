#!/usr/bin/env bash
# The changelog is made from fragments (changelogs/fragments/*.yml, antsibull-changelog).
#   bash scripts/changelog.sh          lint the fragments, then write CHANGELOG.md: the notes of
#                                      the next release (galaxy.yml's version), made from them
#   bash scripts/changelog.sh --check  the same, but only say whether CHANGELOG.md is current
# The release itself (`antsibull-changelog release`, which moves the fragments into
# changelogs/changelog.yaml) is done once, by whoever cuts the release.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/bootstrap.sh >/dev/null
export PATH="$here/.cache/venv-release/bin:$here/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$here/.cache/collections"
antsibull-changelog lint
version=$(sed -n 's/^version: *//p' galaxy.yml)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# the tracked and new (not ignored) files, as a release would see them
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work"
(cd "$work" && antsibull-changelog release --version "$version" >/dev/null)
if [ "${1:-}" = --check ]; then
  if ! diff -u CHANGELOG.md "$work/CHANGELOG.md"; then
    echo "CHANGELOG.md is not what changelogs/fragments make: run bash scripts/changelog.sh" >&2
    exit 1
  fi
  echo "changelog: fragments lint clean, CHANGELOG.md current ($version)"
else
  cp "$work/CHANGELOG.md" CHANGELOG.md
  echo "changelog: CHANGELOG.md written from changelogs/fragments ($version)"
fi
