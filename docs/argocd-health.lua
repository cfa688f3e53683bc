-- Argo CD health check for StorageDriver (storage.datawarehouse.io/v1alpha1).
-- Install it under resource.customizations.health.storage.datawarehouse.io_StorageDriver in
-- argocd-cm (docs/installing.md). Lua 5.1, as Argo CD runs it; tested with lua5.1 and lua5.4
-- (tests/unit/docs/test_argocd_health.py).
--
-- Healthy:     the operator saw the current generation and reports Ready=True.
-- Degraded:    Stalled=True or Degraded=True, or Ready=False for an invalid spec or with
--              failing nodes.
-- Progressing: no status yet, a stale observedGeneration (of the status or of a condition),
--              Progressing=True or Reconciling=True, or deletion waiting for nodes to unload.
-- Reconciling and Stalled are kstatus's conditions (what Flux reads); the operator keeps them in
-- step with Progressing and Degraded (docs/operator.md, "Status and Events").
local hs = {}

local function condition(conditions, wanted)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local generation = (obj.metadata and obj.metadata.generation) or 0
local status = obj.status

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Deleting: waiting for every node to unload the driver"
  return hs
end

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

if status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition(status.conditions, "Ready")
local progressing = condition(status.conditions, "Progressing")
local degraded = condition(status.conditions, "Degraded")
local reconciling = condition(status.conditions, "Reconciling")
local stalled = condition(status.conditions, "Stalled")

-- A condition written for an older generation says nothing about the current spec.
-- (A numeric loop: ipairs stops at the first missing condition.)
local known = { ready, progressing, degraded, reconciling, stalled }
for i = 1, 5 do
  local c = known[i]
  if c ~= nil and c.observedGeneration ~= nil and c.observedGeneration < generation then
    hs.status = "Progressing"
    hs.message = "Waiting for the operator to update condition " .. c.type
    return hs
  end
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = text(degraded, "Degraded")
  return hs
end

if ready ~= nil and ready.status == "False" then
  if ready.reason == "InvalidSpec" or (status.failedNodes ~= nil and status.failedNodes > 0) then
    hs.status = "Degraded"
    hs.message = text(ready, "Not ready")
    return hs
  end
end

local moving = { progressing, reconciling }
for i = 1, 2 do
  local c = moving[i]
  if c ~= nil and c.status == "True" then
    hs.status = "Progressing"
    hs.message = text(c, c.type)
    return hs
  end
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local loaded = status.loadedNodes or 0
  local desired = status.desiredNodes or loaded
  hs.message = "Loaded on " .. tostring(loaded) .. " of " .. tostring(desired) .. " nodes"
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "Waiting for the Ready condition")
return hs
