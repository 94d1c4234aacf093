#!/usr/bin/env bash
# The collection's docsite (antsibull-docs + Sphinx).
#   bash scripts/docsite.sh          make the guides' RST (docs/docsite/rst/) from the markdown
#                                    under docs/, lint the collection's docs, build the HTML
#   bash scripts/docsite.sh --check  the same, but fail when the committed RST is not what the
#                                    markdown makes (the test command runs this)
# The HTML goes to .cache/docsite/build/html (its index is printed).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/bootstrap.sh >/dev/null
export PATH="$here/.cache/venv-release/bin:$here/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$here/.cache/collections"
check=0
[ "${1:-}" = --check ] && check=1

# guide (markdown under docs/) -> page (docs/docsite/rst/), the toctree of extra-docs.yml
guides=(playbooks:user_guide fleet:fleet_guide verify_guests:verify_guests_guide awx:awx_guide
  troubleshooting:troubleshooting testing_your_roles:testing_guide)
stale=()
for pair in "${guides[@]}"; do
  md=${pair%%:*} page=${pair##*:}
  out=$(mktemp)
  {
    printf '..\n  Made from docs/%s.md: edit the markdown, not this file.\n\n' "$md"
    printf '.. _ansible_collections.fleetgpu.passthrough.docsite.%s:\n\n' "$page"
    pandoc -f gfm-gfm_auto_identifiers -t rst --wrap=preserve --columns=2000 --lua-filter docs/docsite/md2rst.lua "docs/$md.md"
  } > "$out"
  if ! cmp -s "$out" "docs/docsite/rst/$page.rst"; then
    if [ "$check" = 1 ]; then
      stale+=("docs/docsite/rst/$page.rst")
    else
      cp "$out" "docs/docsite/rst/$page.rst"
    fi
  fi
  rm -f "$out"
done
if [ "${#stale[@]}" -gt 0 ]; then
  echo "not what the markdown makes: ${stale[*]}; run bash scripts/docsite.sh" >&2
  exit 1
fi

# the collection as installed (its docs/docsite included), then antsibull-docs' own lint
bash scripts/install-collection.sh >/dev/null
src=.cache/src/ansible_collections/fleetgpu/passthrough
(cd "$src" && antsibull-docs lint-collection-docs --plugin-docs .)

# the docsite: antsibull-docs writes the RST of every plugin, role and guide, Sphinx the HTML
site=.cache/docsite
rm -rf "$site" && mkdir -p "$site"
antsibull-docs sphinx-init --use-current --fail-on-error --dest-dir "$site" fleetgpu.passthrough >/dev/null
# Nothing is fetched: the Sphinx configuration's intersphinx inventories (docs.ansible.com,
# docs.python.org) are switched off, so references into Ansible's own docsite stay unresolved.
echo 'intersphinx_mapping = {}' >> "$site/conf.py"
(cd "$site" && mkdir -p rst && chmod og-w rst &&
  antsibull-docs --config-file antsibull-docs.cfg collection --cleanup everything --fail-on-error \
    --use-current --dest-dir rst fleetgpu.passthrough &&
  sphinx-build -M html rst build -c . -q -w warnings.txt) > "$site/build.log" 2>&1 ||
  { tail -40 "$site/build.log"; exit 1; }
# Every warning fails the build except a reference to a page of Ansible's own docsite (which
# the published docsite resolves through intersphinx).
external='undefined label: .(ansible_configuration_settings|action_plugins|common_return_values|playbooks_[a-z_]+|module_plugins|ansible_collections\.ansible\.builtin\.[a-z_.]+)'
others=$(grep 'WARNING' "$site/warnings.txt" | grep -Ev "$external" || true)
if [ -n "$others" ]; then
  echo "docsite: Sphinx warnings:" >&2
  echo "$others" >&2
  exit 1
fi
# Each guide opens in a real browser (headless Chromium, nothing fetched) with its title, and the
# collection's index lists every module and role.
html=$site/build/html/collections/fleetgpu/passthrough
dom() {
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$site/profile" \
    --dump-dom "file://$here/$1" 2>/dev/null
}
for pair in "${guides[@]}"; do
  md=${pair%%:*} page=${pair##*:}
  title=$(sed -n '1s/^# //p' "docs/$md.md")
  f="$html/docsite/$page.html"
  [ -s "$f" ] || { echo "docsite: $f was not built" >&2; exit 1; }
  dom "$f" | grep -qF "$title" || { echo "docsite: $f does not show its title '$title' in Chromium" >&2; exit 1; }
done
index=$(dom "$html/index.html")
for f in plugins/modules/*.py roles/*/; do
  name=$(basename "$f" .py) kind=module
  [ -d "$f" ] && kind=role
  grep -qF "$name $kind" <<<"$index" ||
    { echo "docsite: the collection index does not list the $kind $name" >&2; exit 1; }
done
echo "docsite: docs lint clean, HTML built: $site/build/html/collections/fleetgpu/passthrough/index.html"
