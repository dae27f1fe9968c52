-- Auto-routing from Orthanc (the PACS) to scanet-node: every CT image Orthanc receives is
-- forwarded to the DicomModality "SCANET" (orthanc.json). Orthanc keeps its copy.
--
-- The node's own results come back to this Orthanc (its [[destinations]]): a Comprehensive 3D
-- SR and Secondary Capture images, series 9900-9902, sent from calling AE SCANET. None of them
-- is forwarded, so nothing loops; each test below alone would stop them.
--
-- Nothing identifying is logged: only Orthanc's instance ID.

local NODE_MODALITY = 'SCANET'  -- the key in DicomModalities
local NODE_AETS = { SCANET = true }  -- calling AE titles the node sends results from
local RESULT_SERIES = { [9900] = true, [9901] = true, [9902] = true }  -- [results] series_number

local function isResultClass(sopClassUid)
  -- Structured Reports (1.2.840.10008.5.1.4.1.1.88.*) and Secondary Capture (...1.1.7*).
  return string.find(sopClassUid, '1.2.840.10008.5.1.4.1.1.88.', 1, true) == 1
    or string.find(sopClassUid, '1.2.840.10008.5.1.4.1.1.7', 1, true) == 1
end

local function shouldForward(tags, metadata, origin)
  if tags['Modality'] ~= 'CT' then
    return false
  end
  local sender = (origin and origin['RemoteAet']) or metadata['RemoteAET'] or ''
  if NODE_AETS[sender] then
    return false
  end
  if isResultClass(metadata['SopClassUid'] or tags['SOPClassUID'] or '') then
    return false
  end
  if RESULT_SERIES[tonumber(tags['SeriesNumber'] or '')] then
    return false
  end
  return true
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  if not shouldForward(tags, metadata, origin) then
    return
  end
  -- SendToModality waits for the C-STORE; a failure is logged and the instance stays in
  -- Orthanc (send it again from Orthanc Explorer, or have the scanner resend).
  local ok, err = pcall(SendToModality, instanceId, NODE_MODALITY)
  if not ok then
    print('route-to-scanet: forwarding instance ' .. instanceId .. ' failed: ' .. tostring(err))
  end
end
