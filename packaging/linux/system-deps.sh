#!/bin/sh
# Qt (even offscreen) loads a few system libraries that minimal Linux images lack.
# Install the missing ones with apt-get when we can; otherwise say what to install.
[ "$(uname -s)" = "Linux" ] || exit 0
missing=""
check() { ldconfig -p 2>/dev/null | grep -q "$1" || missing="$missing $2"; }
check libEGL.so.1 libegl1
check libGL.so.1 libgl1
check libOpenGL.so.0 libopengl0
check libxkbcommon.so.0 libxkbcommon0
check libfontconfig.so.1 libfontconfig1
check libdbus-1.so.3 libdbus-1-3
check libglib-2.0.so.0 libglib2.0-0
# A real window (X11) needs the xcb platform plugin's libraries too: `make run` asks for them.
if [ "${1:-}" = "gui" ]; then
    check libxcb-cursor.so.0 libxcb-cursor0
    check libxcb-icccm.so.4 libxcb-icccm4
    check libxcb-image.so.0 libxcb-image0
    check libxcb-keysyms.so.1 libxcb-keysyms1
    check libxcb-randr.so.0 libxcb-randr0
    check libxcb-render-util.so.0 libxcb-render-util0
    check libxcb-shape.so.0 libxcb-shape0
    check libxcb-xinerama.so.0 libxcb-xinerama0
    check libxcb-xkb.so.1 libxcb-xkb1
    check libxkbcommon-x11.so.0 libxkbcommon-x11-0
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing system libraries Qt needs:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
else
    echo "Qt needs these system libraries:$missing"
    echo "Install them with your package manager (e.g. sudo apt-get install$missing)."
    exit 1
fi
