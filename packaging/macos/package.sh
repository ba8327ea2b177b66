#!/bin/sh
# Put QuantDesk.app in a compressed .dmg. Usage: package.sh dist/QuantDesk.app
set -eu
app=$1
dist=$(dirname "$app")
version=$(python3 -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
hdiutil create -volname QuantDesk -srcfolder "$app" -ov -format UDZO \
    "$dist/QuantDesk-$version-macos-arm64.dmg"
