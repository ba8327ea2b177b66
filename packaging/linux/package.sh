#!/bin/sh
# Pack a Linux bundle as a tar.gz and an AppImage. Usage: package.sh dist/QuantDesk VARIANT
set -eu
bundle=$1
variant=${2:-cpu}
dist=$(dirname "$bundle")
version=$(python3 -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
base="QuantDesk-$version-linux-x86_64-$variant"
tar -C "$dist" -czf "$dist/$base.tar.gz" "$(basename "$bundle")"

appdir="$dist/QuantDesk.AppDir"
rm -rf "$appdir" && mkdir -p "$appdir/usr"
cp -R "$bundle" "$appdir/usr/lib"
cat > "$appdir/AppRun" <<'RUN'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
exec "$here/usr/lib/QuantDesk" "$@"
RUN
chmod +x "$appdir/AppRun"
cp packaging/linux/quantdesk.desktop "$appdir/"
cp resources/icon.png "$appdir/quantdesk.png" 2>/dev/null || touch "$appdir/quantdesk.png"
if [ ! -x ./appimagetool ]; then
    curl -fsSL -o appimagetool \
        https://github.com/AppImage/appimagetool/releases/download/continuous/appimagetool-x86_64.AppImage
    chmod +x appimagetool
fi
ARCH=x86_64 ./appimagetool --appimage-extract-and-run "$appdir" "$dist/$base.AppImage"
