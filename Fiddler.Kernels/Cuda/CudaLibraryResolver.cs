using Fiddler.Kernels.Runtime;

namespace Fiddler.Kernels.Cuda;

/// <summary>
/// Where libcudart may be, in the order tried. The aim is the very library libtorch already uses, so that our streams,
/// events and copies live in the same runtime instance (the primary context of each device, which torch uses too):
/// <list type="number">
/// <item>$FIDDLER_CUDART, an explicit path, when set;</item>
/// <item>a libcudart already mapped into this process (/proc/self/maps), i.e. the one libtorch_cuda loaded;</item>
/// <item>the sonames libcudart.so.13, libcudart.so.12, libcudart.so (dlopen returns the loaded library when the soname
///   matches one already in the process, else searches LD_LIBRARY_PATH and the system);</item>
/// <item>files next to PyTorch's libtorch: <c>&lt;torchlib&gt;/libcudart*.so*</c> and
///   <c>&lt;torchlib&gt;/../../nvidia/*/lib/libcudart.so*</c> (pip's nvidia-cuda-runtime: nvidia/cuda_runtime/lib for
///   CUDA 12, nvidia/cu13/lib for CUDA 13), for the torch lib folders in $FIDDLER_LIBTORCH, of a libtorch mapped into
///   this process, or, when neither gives one, of python3's torch (<see cref="TorchRuntime.FindLibTorch"/>).</item>
/// </list>
/// </summary>
public static class CudaLibraryResolver
{
    public const string ExplicitPathEnvironmentVariable = "FIDDLER_CUDART";

    public static readonly IReadOnlyList<string> Sonames = ["libcudart.so.13", "libcudart.so.12", "libcudart.so"];

    /// <summary>The ordered, de-duplicated candidate list from explicit inputs (pure: for tests).</summary>
    public static IReadOnlyList<string> Candidates(string? explicitPath, IEnumerable<string> mappedFiles, IEnumerable<string> torchLibDirs)
    {
        var result = new List<string>();
        void Add(string p)
        {
            if (!result.Contains(p, StringComparer.Ordinal)) result.Add(p);
        }
        if (!string.IsNullOrWhiteSpace(explicitPath)) Add(explicitPath.Trim());
        foreach (var f in mappedFiles)
            if (IsCudartFileName(Path.GetFileName(f))) Add(f);
        foreach (var s in Sonames) Add(s);
        foreach (var dir in torchLibDirs) foreach (var f in FilesNextToTorch(dir)) Add(f);
        return result;
    }

    /// <summary>The candidates for this process, from its environment and its mapped libraries.</summary>
    public static IReadOnlyList<string> DefaultCandidates()
    {
        var mapped = ProcessMaps.MappedFiles();
        var torchDirs = new List<string>();
        if (Environment.GetEnvironmentVariable(TorchRuntime.LibTorchEnvironmentVariable) is { Length: > 0 } env && Directory.Exists(env))
            torchDirs.Add(Path.GetFullPath(env));
        foreach (var f in mapped)
        {
            string name = Path.GetFileName(f);
            if ((name.StartsWith("libtorch", StringComparison.Ordinal) || name.StartsWith("libc10", StringComparison.Ordinal))
                && Path.GetDirectoryName(f) is { } d && !torchDirs.Contains(d))
                torchDirs.Add(d);
        }
        if (!torchDirs.Any(d => FilesNextToTorch(d).Count > 0))
        {
            try
            {
                if (TorchRuntime.FindLibTorch(null) is { } found && !torchDirs.Contains(found)) torchDirs.Add(found);
            }
            catch (Exception e) when (e is DeviceUnavailableException or IOException or InvalidOperationException) { }
        }
        return Candidates(Environment.GetEnvironmentVariable(ExplicitPathEnvironmentVariable), mapped, torchDirs);
    }

    /// <summary>libcudart files in a torch lib folder and in pip's nvidia/*/lib beside it, newest soname first.</summary>
    public static IReadOnlyList<string> FilesNextToTorch(string torchLibDir)
    {
        var found = new List<string>();
        try
        {
            if (Directory.Exists(torchLibDir))
                found.AddRange(Directory.EnumerateFiles(torchLibDir, "libcudart*.so*").Where(f => IsCudartFileName(Path.GetFileName(f)))
                    .OrderByDescending(f => f, StringComparer.Ordinal));
            string nvidia = Path.GetFullPath(Path.Combine(torchLibDir, "..", "..", "nvidia"));
            if (Directory.Exists(nvidia))
                foreach (var lib in Directory.EnumerateDirectories(nvidia).Select(d => Path.Combine(d, "lib")).Where(Directory.Exists)
                             .OrderBy(d => d.Contains("cuda_runtime", StringComparison.Ordinal) ? 0 : 1).ThenByDescending(d => d, StringComparer.Ordinal))
                    found.AddRange(Directory.EnumerateFiles(lib, "libcudart.so*").Where(f => IsCudartFileName(Path.GetFileName(f)))
                        .OrderByDescending(f => f, StringComparer.Ordinal));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        return found;
    }

    /// <summary>libcudart.so, libcudart.so.13, libcudart-abcdef12.so.12 (auditwheel-renamed copies); not libcudart_static.a.</summary>
    public static bool IsCudartFileName(string name) =>
        name.StartsWith("libcudart", StringComparison.Ordinal) && name.Contains(".so", StringComparison.Ordinal)
        && !name.StartsWith("libcudart_static", StringComparison.Ordinal);
}

/// <summary>The shared objects mapped into this process, from /proc/self/maps (Linux; empty elsewhere).</summary>
public static class ProcessMaps
{
    public static IReadOnlyList<string> MappedFiles() => Parse(ReadMaps()).Select(m => m.Path).Distinct(StringComparer.Ordinal).ToList();

    /// <summary>The file mapped at <paramref name="address"/>, or null.</summary>
    public static string? FileAt(IntPtr address)
    {
        ulong a = (ulong)address;
        foreach (var m in Parse(ReadMaps()))
            if (a >= m.Start && a < m.End) return m.Path;
        return null;
    }

    public static IEnumerable<(ulong Start, ulong End, string Path)> Parse(string maps)
    {
        foreach (var line in maps.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            // start-end perms offset dev inode [path]; the path is the rest of the line and may contain spaces.
            var parts = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length < 6 || !parts[5].StartsWith('/')) continue;
            int dash = parts[0].IndexOf('-');
            if (dash < 0 || !ulong.TryParse(parts[0].AsSpan(0, dash), System.Globalization.NumberStyles.HexNumber, null, out ulong start)
                || !ulong.TryParse(parts[0].AsSpan(dash + 1), System.Globalization.NumberStyles.HexNumber, null, out ulong end))
                continue;
            yield return (start, end, parts[5].Trim());
        }
    }

    private static string ReadMaps()
    {
        try { return OperatingSystem.IsLinux() ? File.ReadAllText("/proc/self/maps") : ""; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return ""; }
    }
}
