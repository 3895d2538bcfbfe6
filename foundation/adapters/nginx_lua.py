"""The Lua half of the Nginx Proxy adapter: the shared-dict balancer and the admin endpoint.

``LEENGINE_LUA`` is the source of ``lua/leengine.lua``, which ``NginxProxy`` writes
into its prefix; the main config loads it once per configuration cycle
(``init_by_lua_block { leengine = require "leengine" }``).

The shared dict ``leengine_upstreams`` maps a domain name to its servers, one
string ``"a.b.c.d:port,a.b.c.d:port weight=3 version=v2"`` (``""``: the domain has no
servers); each server is ``Upstream``'s text form (``foundation.ports.proxy_domain``:
weight 0..1000, default 1, version tag optional). Every
worker of every generation reads the same dict, and it survives reloads (same
zone name and size), so an upstream change needs one write and no reload.

Admin protocol (HTTP on the unix socket ``PREFIX/admin/admin.sock``, never TCP, served by ``admin()``):

* ``PUT|POST /upstreams/<domain>`` body ``["10.0.0.1:8080", …]`` → 200
  ``{"domain": …, "servers": n}``; 400 with ``{"error": …}`` when the body is not
  a JSON list of IPv4 ``address:port[ weight=N][ version=V]`` strings (at most 4096, one
  per address) or the name is not
  a DNS name; 507 when the dict is full (``safe_set``: never evicts another domain).
* ``PUT|POST /upstreams`` body ``{"<domain>": [...], …}`` → the same for many domains
  in one request (validated in full before any is written).
* ``GET /upstreams`` → ``{"<domain>": [...], …}``; ``GET /upstreams/<domain>`` →
  ``[...]`` or 404; ``DELETE /upstreams/<domain>`` → 200.
* ``GET /requests`` → one line per counter of the shared dict ``leengine_requests``:
  ``n|<domain>|<version>|<class>|<count>`` (responses by status class ``2xx``…) and
  ``s|<domain>|<version>|<seconds>`` (the sum of their ``$request_time``), where
  ``version`` is the version tag of the upstream that answered (``""``: none, or the
  sink). ``M.log`` adds to them in the log phase of every proxied request; the
  balancer leaves the domain and version in ``ngx.ctx``. A separate dict, so counters
  never evict upstreams; like it, it survives reloads and starts empty with Nginx.
* ``GET /generation`` is not Lua: the main config answers it with
  ``{"generation": N, "pid": <worker pid>}`` from a ``return`` directive.

The JSON reader accepts only what the protocol needs (a list of strings, or an
object of such lists; strings of ``[A-Za-z0-9.:= -]`` without escapes): no general
JSON library is installed with Debian's lua module, and a narrow grammar is the
point. The balancer picks servers per worker by **smooth weighted round robin**
(nginx's own algorithm: every pick adds each server's weight to its score, takes the
highest score and subtracts the total; over any window of ``total`` picks each server
gets exactly its weight, interleaved), plain round robin when all weights are equal;
a server of weight 0 gets no new requests. When a domain has more than one server of
non-zero weight, it allows up to two more tries on other servers; a domain without
servers (or with weight 0 everywhere) goes to the sink server (``M.sink``, a unix socket of this Nginx) that
answers 503 at once: ``ngx.exit`` in a balancer can only produce a 500, and a
per-domain ``error_page`` location would cost a config merge per domain.

Every domain shares one ``upstream`` block; the balancer gets the domain from
``$server_name`` (each server block has exactly one name, set by the adapter, never
the client's Host header).

It must not know domains' locations, settings or files: only names and servers (weights included).
"""

from __future__ import annotations

SHARED_DICT = "leengine_upstreams"
REQUESTS_DICT = "leengine_requests"  # per (domain, version): responses by status class, seconds

LEENGINE_LUA = r"""-- leengine.lua: written by foundation.adapters.nginx_proxy; do not edit.
local balancer = require "ngx.balancer"
local dict = ngx.shared.leengine_upstreams
local requests = ngx.shared.leengine_requests

local M = {}
local MAX_SERVERS = 4096
-- per worker: domain -> {raw = <dict value>, peers = {{host, port, weight, version}, ...} (weight > 0 only),
-- equal = all weights equal, total = sum of weights, score = {...} (smooth weighted round robin)}
local cache = {}
local turn = {}    -- per worker: domain -> index of the last server picked (equal weights)

local function parse_peers(raw)
  local peers, total, equal = {}, 0, true
  for server in raw:gmatch("[^,]+") do
    local host, port = server:match("^([%d%.]+):(%d+)")
    local weight = tonumber(server:match(" weight=(%d+)") or "1")
    if host and weight > 0 then
      peers[#peers + 1] = {host, tonumber(port), weight, server:match(" version=([%w%.%-]+)") or ""}
      if weight ~= peers[1][3] then
        equal = false
      end
      total = total + weight
    end
  end
  local score = {}
  for i = 1, #peers do
    score[i] = 0
  end
  return {raw = raw, peers = peers, equal = equal, total = total, score = score}
end

local function pick(domain, entry)
  local peers = entry.peers
  if entry.equal then
    local i = (turn[domain] or 0) % #peers + 1
    turn[domain] = i
    return peers[i]
  end
  local score, best = entry.score, 1
  for i = 1, #peers do
    score[i] = score[i] + peers[i][3]
    if score[i] > score[best] then
      best = i
    end
  end
  score[best] = score[best] - entry.total
  return peers[best]
end

M.sink = nil  -- "unix:PREFIX/logs/no-upstream.sock", set by the main config: answers 503

function M.balance(domain)
  local raw = dict:get(domain)
  local entry = cache[domain]
  if raw ~= nil and raw ~= "" and (entry == nil or entry.raw ~= raw) then
    entry = parse_peers(raw)
    cache[domain] = entry
  end
  if raw == nil or raw == "" or #entry.peers == 0 then
    ngx.ctx.leengine = {domain, ""}
    local ok, err = balancer.set_current_peer(M.sink)
    if not ok then
      ngx.log(ngx.ERR, "leengine: no servers for ", domain, " and no sink: ", err)
      return ngx.exit(500)
    end
    return
  end
  local n = #entry.peers
  local peer = pick(domain, entry)
  if n > 1 and balancer.get_last_failure() == nil then
    balancer.set_more_tries(n > 2 and 2 or 1)
  end
  ngx.ctx.leengine = {domain, peer[4]}  -- the last try's: the version that answered
  local ok, err = balancer.set_current_peer(peer[1], peer[2])
  if not ok then
    ngx.log(ngx.ERR, "leengine: set_current_peer ", peer[1], ":", peer[2], ": ", err)
    return ngx.exit(500)
  end
end

-- log phase of every request: count it under its domain and the version that answered
function M.log()
  local ctx = ngx.ctx.leengine
  if ctx == nil or requests == nil then
    return  -- not proxied by the balancer (admin, sink, unknown host)
  end
  local key = ctx[1] .. "|" .. ctx[2]
  requests:incr("n|" .. key .. "|" .. math.floor(ngx.status / 100) .. "xx", 1, 0)
  requests:incr("s|" .. key, tonumber(ngx.var.request_time) or 0, 0)
end

function M.requests()
  local lines = {}
  for _, key in ipairs(requests:get_keys(0)) do
    local value = requests:get(key)
    if value ~= nil then
      lines[#lines + 1] = key .. "|" .. string.format("%.17g", value)
    end
  end
  table.sort(lines)
  ngx.status = 200
  ngx.header.content_type = "text/plain"
  ngx.print(table.concat(lines, "\n"), "\n")
  return ngx.exit(200)
end

-- ---------------------------------------------------------------- validation

local function check_domain(name)
  if type(name) ~= "string" or #name < 1 or #name > 253 or not name:find("^[a-z0-9][a-z0-9.-]*$")
      or name:find("%.%.") or name:find("[.-]$") then
    return nil, "not a DNS name: " .. tostring(name)
  end
  return name
end

-- " weight=N version=V", " weight=N", " version=V" or "" (Upstream's text form); the weight 0..1000
local function check_options(rest)
  local weight, version = rest:match("^ weight=(%d+)(.*)$")
  if weight == nil then
    version = rest
  elseif #weight > 4 or tonumber(weight) > 1000 or (#weight > 1 and weight:sub(1, 1) == "0") then
    return false
  end
  if version == "" then
    return true
  end
  local tag = version:match("^ version=([a-z0-9][a-z0-9%.%-]*)$")
  return tag ~= nil and #tag <= 32
end

local function check_server(text)
  local a, b, c, d, port, rest = text:match("^(%d+)%.(%d+)%.(%d+)%.(%d+):(%d+)(.*)$")
  if not a then
    return nil, "not an IPv4 address:port: " .. text
  end
  if not check_options(rest) then
    return nil, "not address:port[ weight=0..1000][ version=tag]: " .. text
  end
  for _, octet in ipairs({a, b, c, d}) do
    if #octet > 3 or tonumber(octet) > 255 then
      return nil, "not an IPv4 address:port: " .. text
    end
  end
  local p = tonumber(port)
  if #port > 5 or p < 1 or p > 65535 then
    return nil, "no valid port (1-65535): " .. text
  end
  return text
end

-- ---------------------------------------------------------------- a narrow JSON reader

local function skip(s, i)
  local _, e = s:find("^[ \t\r\n]*", i)
  return e + 1
end

local function read_string(s, i)
  if s:sub(i, i) ~= '"' then
    return nil, "expected a string at byte " .. i
  end
  local j = s:find('"', i + 1, true)
  if not j then
    return nil, "unterminated string at byte " .. i
  end
  local value = s:sub(i + 1, j - 1)
  if value:find("[^%w%.:%-= ]") then
    return nil, "unexpected character in string at byte " .. i
  end
  return value, j + 1
end

local function read_servers(s, i)
  if s:sub(i, i) ~= "[" then
    return nil, "expected '[' at byte " .. i
  end
  local out, seen = {}, {}  -- seen: by address, so one server never appears twice with two weights
  i = skip(s, i + 1)
  if s:sub(i, i) == "]" then
    return out, i + 1
  end
  while true do
    local value, j = read_string(s, i)
    if not value then
      return nil, j
    end
    local ok, err = check_server(value)
    if not ok then
      return nil, err
    end
    local address = value:match("^[^ ]+")
    if not seen[address] then
      seen[address] = true
      out[#out + 1] = value
      if #out > MAX_SERVERS then
        return nil, "more than " .. MAX_SERVERS .. " servers"
      end
    end
    i = skip(s, j)
    local c = s:sub(i, i)
    if c == "]" then
      return out, i + 1
    elseif c ~= "," then
      return nil, "expected ',' or ']' at byte " .. i
    end
    i = skip(s, i + 1)
  end
end

local function read_all(s, reader)
  local i = skip(s, 1)
  local value, j = reader(s, i)
  if value == nil then
    return nil, j
  end
  if skip(s, j) <= #s then
    return nil, "trailing data at byte " .. j
  end
  return value
end

local function read_object(s, i)
  if s:sub(i, i) ~= "{" then
    return nil, "expected '{' at byte " .. i
  end
  local out = {}
  i = skip(s, i + 1)
  if s:sub(i, i) == "}" then
    return out, i + 1
  end
  while true do
    local name, j = read_string(s, i)
    if not name then
      return nil, j
    end
    local ok, err = check_domain(name)
    if not ok then
      return nil, err
    end
    i = skip(s, j)
    if s:sub(i, i) ~= ":" then
      return nil, "expected ':' at byte " .. i
    end
    local servers
    servers, j = read_servers(s, skip(s, i + 1))
    if not servers then
      return nil, j
    end
    out[#out + 1] = {name, servers}
    i = skip(s, j)
    local c = s:sub(i, i)
    if c == "}" then
      return out, i + 1
    elseif c ~= "," then
      return nil, "expected ',' or '}' at byte " .. i
    end
    i = skip(s, i + 1)
  end
end

-- ---------------------------------------------------------------- admin endpoint

local function reply(status, body)
  ngx.status = status
  ngx.header.content_type = "application/json"
  ngx.print(body, "\n")
  return ngx.exit(status)
end

local function quote_list(raw)
  if raw == nil or raw == "" then
    return "[]"
  end
  local items = {}
  for server in raw:gmatch("[^,]+") do
    items[#items + 1] = '"' .. server .. '"'
  end
  return "[" .. table.concat(items, ",") .. "]"
end

local function body()
  ngx.req.read_body()
  local data = ngx.req.get_body_data()
  if data == nil then
    local file = ngx.req.get_body_file()
    if file then
      local f = io.open(file, "rb")
      if f then
        data = f:read("*a")
        f:close()
      end
    end
  end
  return data or ""
end

local function store(pairs_)
  for _, pair in ipairs(pairs_) do
    table.sort(pair[2])
    local ok, err = dict:safe_set(pair[1], table.concat(pair[2], ","))
    if not ok then
      return nil, "cannot store the servers of " .. pair[1] .. ": " .. tostring(err)
    end
  end
  return true
end

function M.admin()
  local method = ngx.req.get_method()
  local uri = ngx.var.uri
  local name = uri:match("^/upstreams/(.+)$")
  if name == nil and uri ~= "/upstreams" then
    return reply(404, '{"error":"no such endpoint"}')
  end
  if name ~= nil then
    local ok, err = check_domain(name)
    if not ok then
      return reply(400, '{"error":"' .. err:gsub('[^%w%.:%- ]', '?') .. '"}')
    end
  end
  if method == "GET" then
    if name ~= nil then
      local raw = dict:get(name)
      if raw == nil then
        return reply(404, '{"error":"no servers recorded for ' .. name .. '"}')
      end
      return reply(200, quote_list(raw))
    end
    local items = {}
    for _, key in ipairs(dict:get_keys(0)) do
      items[#items + 1] = '"' .. key .. '":' .. quote_list(dict:get(key))
    end
    table.sort(items)
    return reply(200, "{" .. table.concat(items, ",") .. "}")
  elseif method == "PUT" or method == "POST" then
    local pairs_, err
    if name ~= nil then
      local servers
      servers, err = read_all(body(), read_servers)
      if servers then
        pairs_ = {{name, servers}}
      end
    else
      pairs_, err = read_all(body(), read_object)
    end
    if not pairs_ then
      return reply(400, '{"error":"' .. tostring(err):gsub('[^%w%.:%-,\' ]', '?') .. '"}')
    end
    local ok
    ok, err = store(pairs_)
    if not ok then
      return reply(507, '{"error":"' .. tostring(err):gsub('[^%w%.:%- ]', '?') .. '"}')
    end
    if name ~= nil then
      return reply(200, '{"domain":"' .. name .. '","servers":' .. #pairs_[1][2] .. '}')
    end
    return reply(200, '{"domains":' .. #pairs_ .. '}')
  elseif method == "DELETE" and name ~= nil then
    dict:delete(name)
    return reply(200, '{"domain":"' .. name .. '","deleted":true}')
  end
  return reply(405, '{"error":"method not allowed"}')
end

return M
"""
