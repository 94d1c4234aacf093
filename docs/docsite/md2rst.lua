-- pandoc filter for scripts/docsite.sh: a link to one of the guides the docsite carries becomes
-- a reference to its page; a link to another file of docs/ keeps its text only (the docsite
-- does not carry that file).
local guides = {
  ['playbooks.md'] = 'user_guide',
  ['fleet.md'] = 'fleet_guide',
  ['verify_guests.md'] = 'verify_guests_guide',
  ['awx.md'] = 'awx_guide',
  ['troubleshooting.md'] = 'troubleshooting',
}

function Link(el)
  local file = el.target:gsub('#.*$', ''):match('([^/]+%.md)$')
  if not file then
    return nil
  end
  local text = pandoc.utils.stringify(el.content)
  local page = guides[file]
  if page then
    local label = 'ansible_collections.fleetgpu.passthrough.docsite.' .. page
    if text:match('%.md$') then
      return pandoc.RawInline('rst', ':ref:`' .. label .. '`')   -- the guide's title
    end
    return pandoc.RawInline('rst', ':ref:`' .. text .. ' <' .. label .. '>`')
  end
  return el.content
end
