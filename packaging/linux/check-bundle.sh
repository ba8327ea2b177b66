#!/bin/sh
# Run a built bundle's self-test the way a user would: copied to a folder outside the checkout,
# with an empty home and a minimal environment. Prints the bundle's size (total and without the
# embedded model) and the time to the main window. Usage: check-bundle.sh dist/QuantDesk
set -eu
bundle=$(cd "$1" && pwd)
name=$(basename "$bundle")
outside=$(mktemp -d)
trap 'rm -rf "$outside"' EXIT
cp -R "$bundle" "$outside/"
exe="$outside/$name/QuantDesk"
[ -x "$exe" ] || exe="$outside/$name/Contents/MacOS/QuantDesk"
home="$outside/home"
mkdir -p "$home"

status=0
report=$(env -i PATH=/usr/bin:/bin HOME="$home" QUANTDESK_HOME="$home/quantdesk" "$exe" --self-test) ||
    status=$?
echo "$report"
[ "$status" -eq 0 ] || exit "$status"
# The token loop's C extension is built optionally (an install without a compiler generates in
# Python, slower on fast models): an installer is built where a compiler is, so it must have it.
case "$report" in
    *"token loop in C"*) ;;
    *) echo "the bundle generates without the C token loop: app/engine/_token_loop.c did not build" >&2
       exit 1 ;;
esac

total=$(du -sk "$outside/$name" | cut -f1)
model=$(du -sk "$outside/$name"/_internal/models 2>/dev/null | cut -f1 || echo 0)
echo "bundle size: $((total / 1024)) MiB total, $(((total - model) / 1024)) MiB without the model"
start=$(date +%s.%N)
env -i PATH=/usr/bin:/bin HOME="$home" QUANTDESK_HOME="$home/quantdesk" \
    QT_QPA_PLATFORM=offscreen QUANTDESK_STARTUP_PROBE=1 "$exe"
end=$(date +%s.%N)
echo "start to window and exit: $(echo "$end - $start" | bc) s (wall, this run)"
