# Run a built bundle's self-test from a folder outside the checkout with an empty home.
param([string]$Bundle)
$ErrorActionPreference = "Stop"
$outside = Join-Path ([System.IO.Path]::GetTempPath()) ("quantdesk-" + [guid]::NewGuid())
New-Item -ItemType Directory $outside | Out-Null
Copy-Item -Recurse $Bundle $outside
$exe = Join-Path $outside "QuantDesk\QuantDesk.exe"
$env:QUANTDESK_HOME = Join-Path $outside "home"
$report = & $exe --self-test
$report
if ($LASTEXITCODE -ne 0) { throw "self-test failed ($LASTEXITCODE)" }
# The token loop's C extension is built optionally (an install without a compiler generates in
# Python, slower on fast models): an installer is built where MSVC is, so it must have it.
if (-not ($report | Select-String -SimpleMatch "token loop in C")) {
    throw "the bundle generates without the C token loop: app/engine/_token_loop.c did not build"
}
$size = (Get-ChildItem -Recurse (Join-Path $outside "QuantDesk") | Measure-Object -Sum Length).Sum
"bundle size: {0:N0} MiB" -f ($size / 1MB)
