-- Orthanc auto-routing to the bonefrac DICOM node (README: Connecting to PACS).
--
-- Load it with "LuaScripts": ["/etc/orthanc/route-to-bonefrac.lua"] in orthanc.json, next to a modality
-- entry named "bonefrac" in "DicomModalities". Each new radiograph series (CR or DX) is sent to bonefrac
-- once Orthanc has received all of it ("stable": no new instance for "StableAge" seconds), as one C-STORE
-- job listed under /jobs (a failed one can be resubmitted there). bonefrac's own results are SR and OT
-- series: they are never sent back to it, so results cannot loop.
function OnStableSeries(seriesId, tags, metadata)
  if tags['Modality'] == 'CR' or tags['Modality'] == 'DX' then
    RestApiPost('/modalities/bonefrac/store', DumpJson({ Resources = { seriesId }, Asynchronous = true }, true))
  end
end
