#!/usr/bin/env bash
# Install Debian's orthanc (a PACS), dcmtk (echoscu, storescu) and dicom3tools (dciodvfy) for the DICOM tests
# (tests/test_pacs.py, tests/test_dicom_node.py, tests/test_dicom_results.py) when missing and we may
# (root + apt-get). Never fails the build: without them those tests skip and say why.
set -u
missing=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "dicom tools: ${missing[*]} not installed and cannot install them here (needs root + apt-get); their tests will skip"
  exit 0
fi
echo "installing Debian's ${missing[*]} for the DICOM tests..."
# The orthanc package starts no server here (no systemd in containers; the tests start their own on loopback).
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
  || echo "dicom tools: apt-get install failed; the tests that need ${missing[*]} will skip"
exit 0
