# Zip the bundle and build an installer with Inno Setup (preinstalled on GitHub's runners).
param([string]$Bundle, [string]$Variant = "cpu")
$ErrorActionPreference = "Stop"
$version = (python -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
$base = "QuantDesk-$version-windows-x86_64-$Variant"
Compress-Archive -Path $Bundle -DestinationPath "dist/$base.zip" -Force
& "${env:ProgramFiles(x86)}\Inno Setup 6\iscc.exe" /DVersion=$version /DBase=$base `
    /DSource=(Resolve-Path $Bundle) packaging/windows/quantdesk.iss
