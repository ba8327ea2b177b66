#!/bin/sh
# Install llama-cpp-python built the way QuantDesk needs it, into the virtualenv whose python is
# $1, from a wheel cached under the build's own flags.
#
# Why not a plain `pip install llama-cpp-python`: QuantDesk needs llama.cpp's RPC backend
# (-DGGML_RPC=ON, for running a model across machines), and on x86-64 a native build must leave
# out llama.cpp's AMX kernels, which crash on the first prompt of any quantized model (llama.cpp
# issue 20824): GCC's explicit -mno-amx-* flags win over -march=native, so the build stays native
# (AVX-512 and all) without them, and weight repacking keeps working. pip's own wheel cache is
# keyed by the package alone, not by CMAKE_ARGS, so a wheel built with other flags would be
# reused; this script keeps its wheels in a folder named after the flags instead. A user's
# CMAKE_ARGS (say -DGGML_CUDA=on) are added to ours, and make their own wheel.
set -eu
python="$1"
version="$2"
flags="-DGGML_RPC=ON"
case "$(uname -m)" in
    x86_64|amd64)
        # quoted for scikit-build-core, which splits CMAKE_ARGS like a shell
        noamx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        flags="$flags '-DCMAKE_C_FLAGS=$noamx' '-DCMAKE_CXX_FLAGS=$noamx'"
        ;;
esac
flags="$flags ${CMAKE_ARGS:-}"
key=$("$python" -c 'import hashlib, sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest()[:16])' "$version $flags")
cache="${QUANTDESK_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/quantdesk/wheels}/$key"
if ! ls "$cache"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
    if [ "$(uname -s)" = Linux ]; then  # the compilers the build will link with
        sh "$(dirname "$0")/check-cxx.sh" "$python" "${CXX:-c++}" ${CUDAHOSTCXX:+"$CUDAHOSTCXX"}
    fi
    echo "Building llama-cpp-python $version (once; cached in $cache): $flags"
    mkdir -p "$cache.tmp"
    CMAKE_ARGS="$flags" "$python" -m pip wheel -q --no-deps --no-binary llama-cpp-python \
        --no-cache-dir -w "$cache.tmp" "llama-cpp-python==$version"
    rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
"$python" -m pip install -q --no-deps --force-reinstall "$cache"/llama_cpp_python-"$version"-*.whl
