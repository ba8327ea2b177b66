# Run a built bundle's self-test from a folder outside the checkout with an empty home.
param([string]$Bundle)
$ErrorActionPreference = "Stop"
$outside = Join-Path ([System.IO.Path]::GetTempPath()) ("quantdesk-" + [guid]::NewGuid())
New-Item -ItemType Directory $outside | Out-Null
Copy-Item -Recurse $Bundle $outside
$exe = Join-Path $outside "QuantDesk\QuantDesk.exe"
$env:QUANTDESK_HOME = Join-Path $outside "home"
& $exe --self-test
if ($LASTEXITCODE -ne 0) { throw "self-test failed ($LASTEXITCODE)" }
$size = (Get-ChildItem -Recurse (Join-Path $outside "QuantDesk") | Measure-Object -Sum Length).Sum
"bundle size: {0:N0} MiB" -f ($size / 1MB)
