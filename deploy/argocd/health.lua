-- Argo CD health check for genforge resources (group genforge.dev): TrainingRun, FineTune,
-- Dataset, Budget and GenModel. One script for every kind; argocd-cm.yaml registers it
-- per kind. Argo CD runs it with the live object as `obj` (gopher-lua, Lua 5.1) and shows
-- the returned status and message. Tested by tests/deploy/test_argocd_health.py against
-- the cases in health_test.yaml.
--
--   TrainingRun, FineTune  Succeeded → Healthy; Pending, Waiting, Running → Progressing;
--                          Failed, BudgetExceeded → Degraded; Suspended → Suspended
--   Dataset                Ready → Healthy; Pending, Running → Progressing; Failed → Degraded
--   Budget                 condition Exhausted=True → Degraded, else Healthy
--   GenModel               Healthy (its versions in the message) unless Ready=False
--
-- The message is the Ready (Budget: Exhausted) condition's message, which says why with
-- the numbers. A spec change the operator has not yet observed reads Progressing.

local hs = {}

local function find_condition(status, condition_type)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local function message_of(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return fallback
end

local function not_yet_observed(obj)
  local generation = obj.metadata ~= nil and obj.metadata.generation or nil
  local observed = obj.status ~= nil and obj.status.observedGeneration or nil
  if generation ~= nil and observed ~= nil and observed < generation then
    return string.format("the operator has not yet acted on generation %d (observed %d)", generation, observed)
  end
  return nil
end

local PHASES = {
  Pending = "Progressing",
  Waiting = "Progressing",
  Running = "Progressing",
  Succeeded = "Healthy",
  Ready = "Healthy",
  Failed = "Degraded",
  BudgetExceeded = "Degraded",
  Suspended = "Suspended",
}
-- Outcomes that a later spec change does not undo (a finished run is not run again).
local FINAL_RUN_PHASES = { Succeeded = true, Failed = true }

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the genforge operator"
  return hs
end

local kind = obj.kind
if kind == "TrainingRun" or kind == "FineTune" or kind == "Dataset" then
  local phase = status.phase
  local ready = find_condition(status, "Ready")
  local stale = not_yet_observed(obj)
  if stale ~= nil and not (kind ~= "Dataset" and FINAL_RUN_PHASES[phase]) then
    hs.status = "Progressing"
    hs.message = stale
    return hs
  end
  if phase == nil or PHASES[phase] == nil then
    hs.status = "Progressing"
    hs.message = message_of(ready, "Waiting for the genforge operator")
    return hs
  end
  hs.status = PHASES[phase]
  hs.message = message_of(ready, phase)
  return hs
end

if kind == "Budget" then
  local stale = not_yet_observed(obj)
  if stale ~= nil then
    hs.status = "Progressing"
    hs.message = stale
    return hs
  end
  local exhausted = find_condition(status, "Exhausted")
  if exhausted ~= nil and exhausted.status == "True" then
    hs.status = "Degraded"
    hs.message = message_of(exhausted, "Budget exhausted")
    return hs
  end
  hs.status = "Healthy"
  hs.message = message_of(exhausted, "Within budget")
  return hs
end

if kind == "GenModel" then
  local ready = find_condition(status, "Ready")
  if ready ~= nil and ready.status == "False" then
    hs.status = "Degraded"
    hs.message = message_of(ready, "Not ready")
    return hs
  end
  hs.status = "Healthy"
  if status.latest ~= nil then
    hs.message = "latest " .. status.latest .. ", promoted " .. (status.promoted or status.latest)
  else
    hs.message = "no versions yet"
  end
  return hs
end

hs.status = "Unknown"
hs.message = "genforge health check does not know kind " .. tostring(kind)
return hs
