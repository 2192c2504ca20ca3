#!/usr/bin/env bash
# Packs a self-contained Fiddler for Linux GPU hosts that have PyTorch (with CUDA) installed but no .NET:
# this machine's .NET runtime (with ASP.NET Core, which `fiddler` needs to start) + the published app WITHOUT libtorch
# natives, in one tar.xz (~57 MB; 49 MB before the servers). The device tool sends the working tree (~13 MB) plus
# carried files within 64 MiB: try XZ_OPT="-9e -T0" if a bundle no longer fits.
# On the host:  mkdir -p /opt/fiddler && tar -xJf fiddler-bundle.tar.xz -C /opt/fiddler
#               /opt/fiddler/fiddler generate --device cuda --prompt "Hello"
# The launcher puts PyTorch's libtorch folder (python3 -c 'import torch', or $FIDDLER_LIBTORCH) on LD_LIBRARY_PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/artifacts/fiddler-bundle.tar.xz}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

dotnet publish "$root/Fiddler.Host" -c Release -p:FiddlerBundle=true -o "$stage/app" --nologo -v q
if [ "${FIDDLER_BUNDLE_TESTS:-0}" = 1 ]; then
  # Also ship the test assembly with its dependencies, for running the parity checks on the GPU host.
  dotnet publish "$root/Fiddler.Tests" -c Release -p:FiddlerBundle=true -o "$stage/tests" --nologo -v q
fi
# Benchmark-only bundles may leave the embedded default model out (7 MB that xz cannot shrink).
if [ "${FIDDLER_BUNDLE_NO_DEFAULT_MODEL:-0}" = 1 ]; then rm -rf "$stage/app/default-model"; fi
# The GPU host is linux-x64: other platforms' natives (SkiaSharp for macOS and Windows, ~40 MB) only weigh the bundle.
find "$stage/app/runtimes" -mindepth 1 -maxdepth 1 -type d ! -name 'linux-x64' ! -name 'unix' -exec rm -rf {} + 2>/dev/null || true
# Any libtorch natives that slipped in would shadow the host's CUDA libtorch.
find "$stage" -name 'libtorch*.so' -o -name 'libc10*.so' -o -name 'libgomp*.so*' | xargs -r rm -f

dotnet_root=$(dirname "$(readlink -f "$(command -v dotnet)")")
mkdir -p "$stage/dotnet/shared"
cp "$dotnet_root/dotnet" "$stage/dotnet/"
cp -r "$dotnet_root/host" "$stage/dotnet/"
cp -r "$dotnet_root/shared/Microsoft.NETCore.App" "$stage/dotnet/shared/"
# fiddler serve (HTTP, gRPC, /metrics) runs on ASP.NET Core, a shared framework the app needs even to start.
cp -r "$dotnet_root/shared/Microsoft.AspNetCore.App" "$stage/dotnet/shared/"

cat > "$stage/fiddler" <<'LAUNCH'
#!/usr/bin/env bash
here=$(cd "$(dirname "$0")" && pwd)
lib=${FIDDLER_LIBTORCH:-$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))' 2>/dev/null)}
if [ -n "$lib" ]; then
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export FIDDLER_LIBTORCH="$lib"
fi
export DOTNET_ROOT="$here/dotnet"
exec "$here/dotnet/dotnet" "$here/app/fiddler.dll" "$@"
LAUNCH
chmod +x "$stage/fiddler"
mkdir -p "$(dirname "$out")"
XZ_OPT=${XZ_OPT:--T0} tar -C "$stage" -cJf "$out" .
echo "bundle: $out ($(du -h "$out" | cut -f1))"
