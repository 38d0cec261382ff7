-- Argo CD health of a ModelTraining (modelyard.dev/v1alpha1), from its status alone.
-- Argo CD runs it under Lua 5.1 with `obj` set to the object; it uses only base functions.
--   Healthy      the run of the current generation succeeded
--   Degraded     it failed, or its workers stayed unschedulable past the timeout
--   Suspended    runPolicy.suspend is true
--   Progressing  anything else, including a spec the operator has not seen yet
local function condition(status, kind)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, found in ipairs(status.conditions) do
    if found.type == kind then
      return found
    end
  end
  return nil
end

local function is_true(status, kind)
  local found = condition(status, kind)
  return found ~= nil and found.status == "True"
end

local function message_of(status, kind, fallback)
  local found = condition(status, kind)
  if found ~= nil and found.message ~= nil and found.message ~= "" then
    return found.message
  end
  return fallback
end

local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to act on generation " .. tostring(generation)
  return hs
end

if is_true(status, "Failed") or status.phase == "Failed" then
  hs.status = "Degraded"
  local fallback = "Training failed"
  if status.lastFailure ~= nil and status.lastFailure.message ~= nil then
    fallback = status.lastFailure.message
  end
  hs.message = message_of(status, "Failed", fallback)
  return hs
end

if is_true(status, "Succeeded") or status.phase == "Succeeded" then
  hs.status = "Healthy"
  local fallback = "Training succeeded"
  if status.result ~= nil and status.result.modelUri ~= nil then
    fallback = "Trained " .. status.result.modelUri
  end
  hs.message = message_of(status, "Succeeded", fallback)
  return hs
end

if is_true(status, "Suspended") or status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message_of(status, "Suspended", "The run is suspended")
  return hs
end

if is_true(status, "Unschedulable") then
  hs.status = "Degraded"
  hs.message = message_of(status, "Unschedulable", "Workers cannot be scheduled")
  return hs
end

if is_true(status, "WorkersBlocked") then
  hs.status = "Degraded"
  hs.message = message_of(status, "WorkersBlocked", "A worker cannot start")
  return hs
end

hs.status = "Progressing"
local phase = status.phase or "Pending"
local text = phase
if status.progress ~= nil and status.progress.summary ~= nil and status.progress.summary ~= "" then
  text = text .. ": " .. status.progress.summary
  if status.progress.eta ~= nil and status.progress.eta ~= "" then
    text = text .. ", ETA " .. status.progress.eta
  end
end
if is_true(status, "Restarting") then
  text = text .. " (restarting: " .. message_of(status, "Restarting", "a worker failed") .. ")"
end
hs.message = text
return hs
