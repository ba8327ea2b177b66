#!/bin/sh
# Exit 1, saying why, if a C++ compiler links libstdc++ statically into the shared libraries it
# builds: usage check-cxx.sh PYTHON COMPILER...
#
# Such a compiler (a toolchain with only libstdc++.a, or a wrapper adding -static-libstdc++)
# gives each of llama.cpp's libraries its own copy of the C++ runtime. A model load then
# crashes in llama.cpp's print_info as soon as any other C++ library was loaded first (seen on a
# GPU machine whose $CXX and CUDA host compiler did this; app/engine/compat.py,
# own_cxx_runtime). The check builds a small library with each compiler and asks that function.
set -eu
python="$1"
shift
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '#include <sstream>\nint digits(long x) { std::ostringstream s; s << x; return (int)s.str().size(); }\n' \
    > "$tmp/probe.cpp"
for compiler in "$@"; do
    # unquoted: a compiler may be a command with words of its own ("ccache g++")
    $compiler -fPIC -shared "$tmp/probe.cpp" -o "$tmp/probe.so"
    if ! "$python" - "$root" "$tmp/probe.so" <<'PY'
import ctypes, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from app.engine.compat import own_cxx_runtime  # stdlib only at import
library = Path(sys.argv[2])
ctypes.CDLL(str(library))
sys.exit(1 if own_cxx_runtime([library]) else 0)
PY
    then
        echo "error: $compiler links libstdc++ statically into shared libraries, so each of" \
             "llama.cpp's libraries would carry its own C++ runtime and model loads would crash." \
             "Build with a compiler that links it as a shared library: set CXX (and" \
             "CUDAHOSTCXX for a CUDA build) to one, e.g. CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++." >&2
        exit 1
    fi
done
