<#
.SYNOPSIS
Install the Wheel Farm worker as the Windows service "farm-worker" (WinSW), after its self-test.

.DESCRIPTION
Run as an administrator, after the farm is installed in a venv (pip install dist\wheel_farm-*.whl, built with uv build --wheel) and
FARM_HOME\farm.toml is written (workers\windows\farm.toml). The worker first builds, repairs and
verifies the bundled sample on this host (`farm worker --self-test`); only a host that passes gets
the service. The service runs as -Credential (a local user, not LocalSystem: builds run package
code), with the "log on as a service" right WinSW grants it.

.EXAMPLE
.\install-service.ps1 -WinSW C:\Downloads\WinSW-x64.exe -Platform windows-amd64 -Credential (Get-Credential .\farm)
#>
param(
    [Parameter(Mandatory = $true)][string]$WinSW,
    [string]$FarmHome = 'C:\farm\home',
    [string]$Venv = 'C:\farm\venv',
    [ValidateSet('windows-amd64', 'windows-arm64', 'windows-x86')][string]$Platform = 'windows-amd64',
    [Parameter(Mandatory = $true)][System.Management.Automation.PSCredential]$Credential
)
$ErrorActionPreference = 'Stop'

$farm = Join-Path $Venv 'Scripts\farm.exe'
if (-not (Test-Path $farm)) { throw "$farm not found: py -3.12 -m venv $Venv; $Venv\Scripts\pip install dist\wheel_farm-*.whl (uv build --wheel in a checkout)" }
if (-not (Test-Path (Join-Path $FarmHome 'farm.toml'))) { throw "$FarmHome\farm.toml not found (workers\windows\farm.toml)" }
New-Item -ItemType Directory -Force -Path (Join-Path $FarmHome 'logs') | Out-Null

# The self-test: a build, a delvewheel repair and a verification of the sample, on this host.
$env:FARM_HOME = $FarmHome
& $farm worker --self-test --platform $Platform
if ($LASTEXITCODE -ne 0) { throw "farm worker --self-test failed: fix the host first (docs\workers-windows.md)" }

# The service definition, with this host's paths and queue, beside WinSW under the service's name.
$service = Join-Path $FarmHome 'service'
New-Item -ItemType Directory -Force -Path $service | Out-Null
$xml = [xml](Get-Content -Raw (Join-Path $PSScriptRoot 'farm-worker.xml'))
$xml.service.executable = $farm
$xml.service.arguments = "worker --platform $Platform"
$xml.service.name = "Wheel Farm worker ($Platform)"
$xml.service.workingdirectory = $FarmHome
$xml.service.logpath = Join-Path $FarmHome 'logs'
($xml.service.env | Where-Object { $_.name -eq 'FARM_HOME' }).value = $FarmHome
# The account, only while installing: WinSW reads it at `install` and the password is not kept.
$account = $xml.CreateElement('serviceaccount')
$user = $Credential.GetNetworkCredential()
foreach ($pair in @(@('domain', $(if ($user.Domain) { $user.Domain } else { '.' })), @('user', $user.UserName),
                    @('password', $user.Password), @('allowservicelogon', 'true'))) {
    $node = $xml.CreateElement($pair[0]); $node.InnerText = $pair[1]; [void]$account.AppendChild($node)
}
[void]$xml.service.AppendChild($account)
$definition = Join-Path $service 'farm-worker.xml'
$xml.Save($definition)
Copy-Item -Force $WinSW (Join-Path $service 'farm-worker.exe')
try {
    & (Join-Path $service 'farm-worker.exe') install
    if ($LASTEXITCODE -ne 0) { throw "WinSW install failed ($LASTEXITCODE)" }
} finally {
    [void]$xml.service.RemoveChild($xml.service.serviceaccount)
    $xml.Save($definition)
}
& (Join-Path $service 'farm-worker.exe') start
Write-Host "farm-worker installed and started; logs in $FarmHome\logs"
