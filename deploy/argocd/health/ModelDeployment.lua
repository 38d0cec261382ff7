-- Argo CD health of a ModelDeployment (modelyard.dev/v1alpha1), from its status alone.
-- Argo CD runs it under Lua 5.1 with `obj` set to the object; it uses only base functions.
--   Healthy      Ready: the wanted model is loaded and available
--   Degraded     the rollout was rolled back, the model fails to load, the rollout passed its
--                deadline, or the model cannot be resolved (missing training, gate, claim)
--   Suspended    scaled to zero replicas
--   Progressing  anything else: rolling out, waiting for a training, spec not seen yet
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

local function text_of(found, fallback)
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

local ready = condition(status, "Ready")
local rolled_back = condition(status, "RolledBack")
local resolved = condition(status, "ModelResolved")
local progressing = condition(status, "Progressing")

-- Serving the last good model is not what the spec asked for: somebody should look.
if rolled_back ~= nil and rolled_back.status == "True" then
  hs.status = "Degraded"
  hs.message = text_of(rolled_back, "The rollout was rolled back")
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = text_of(ready, "Serving")
  return hs
end

if ready ~= nil and ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = text_of(ready, "Scaled to zero replicas")
  return hs
end

if (status.model ~= nil and status.model.state == "FailedToLoad")
    or (ready ~= nil and (ready.reason == "FailedToLoad" or ready.reason == "InvalidSpec")) then
  hs.status = "Degraded"
  local fallback = "The model failed to load"
  if status.model ~= nil and status.model.message ~= nil and status.model.message ~= "" then
    fallback = status.model.message
  end
  hs.message = text_of(ready, fallback)
  return hs
end

if progressing ~= nil and progressing.status == "False" and progressing.reason == "ProgressDeadlineExceeded" then
  hs.status = "Degraded"
  hs.message = text_of(progressing, "The rollout exceeded its progress deadline")
  return hs
end

-- Waiting for a training that is still running is normal; any other reason needs a person.
if resolved ~= nil and resolved.status == "False" and resolved.reason ~= "TrainingNotSucceeded" then
  hs.status = "Degraded"
  hs.message = text_of(resolved, "The model cannot be resolved")
  return hs
end

hs.status = "Progressing"
hs.message = text_of(ready, text_of(resolved, "Rolling out"))
return hs
