#!/usr/bin/env bash
# Runs every test: set-up, build, the .NET test projects, then the end-to-end checks that need a running server.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --browser
dotnet build Ecmt.sln -c Release --nologo --verbosity quiet
# The page test drives the chromium setup.sh installed; here its absence is a failure, not a skip.
ECMT_REQUIRE_BROWSER=1 dotnet test --solution Ecmt.sln -c Release --no-build
./scripts/python-client-test.sh
