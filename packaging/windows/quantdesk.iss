; Inno Setup script: per-user install of the one-folder bundle, Start menu entry, uninstaller.
[Setup]
AppName=QuantDesk
AppVersion={#Version}
DefaultDirName={localappdata}\Programs\QuantDesk
DefaultGroupName=QuantDesk
PrivilegesRequired=lowest
OutputDir=..\..\dist
OutputBaseFilename={#Base}-setup
Compression=lzma2
SolidCompression=yes
ArchitecturesInstallIn64BitMode=x64compatible

[Files]
Source: "{#Source}\*"; DestDir: "{app}"; Flags: recursesubdirs

[Icons]
Name: "{group}\QuantDesk"; Filename: "{app}\QuantDesk.exe"
Name: "{group}\Uninstall QuantDesk"; Filename: "{uninstallexe}"
