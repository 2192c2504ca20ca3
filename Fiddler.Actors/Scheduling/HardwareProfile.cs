using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Serialization;
using Fiddler.Actors.Placement;

namespace Fiddler.Actors.Scheduling;

/// <summary>
/// What a calibration is valid for: the same CPU, core count, CPU expert workers and kernel settings, GPU, model shape
/// and dtype. Any difference means the measured times may not hold, so the cache is ignored and the host is calibrated again (a file
/// from before a field existed reads it as 0 or null, so it is recalibrated too).
/// </summary>
public sealed record HardwareKey(
    [property: JsonPropertyName("cpu_model")] string CpuModel,
    [property: JsonPropertyName("cpu_cores")] int CpuCores,
    [property: JsonPropertyName("gpu_name")] string GpuName,
    [property: JsonPropertyName("model_shape")] string ModelShapeHash,
    [property: JsonPropertyName("dtype")] string Dtype,
    [property: JsonPropertyName("cpu_threads")] int CpuThreads = 0,
    [property: JsonPropertyName("cpu_kernel")] string? CpuKernel = null)
{
    /// <summary>
    /// The key for this process's CPU (/proc/cpuinfo "model name", logical cores), the CPU expert pool's participants
    /// (<paramref name="cpuThreads"/>: the CPU expert's time depends on them), the CPU expert kernel's settings
    /// (<paramref name="cpuKernel"/>, <c>CpuKernelSettings.ToString()</c>: its layout and prefetch move its speed by
    /// several per cent) and the given GPU (its name: see <c>CudaRuntime.DeviceLabel</c>) and model.
    /// </summary>
    public static HardwareKey ForThisHost(string gpuName, ModelShape shape, string dtype, int cpuThreads, string cpuKernel) =>
        new(LocalCpuModel(), Environment.ProcessorCount, gpuName, shape.Fingerprint, dtype, cpuThreads, cpuKernel);

    /// <summary>The CPU's marketing name where Linux exposes it, else the architecture (e.g. "Arm64").</summary>
    public static string LocalCpuModel()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                foreach (string line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal) && line.IndexOf(':') is var i and >= 0)
                        return line[(i + 1)..].Trim();
        }
        catch (IOException) { }
        return System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
    }
}

/// <summary>
/// The measured latencies the router plans with, for one host and one model shape. Times are per expert.
/// Cache file (JSON): <c>{"version": 1, "key": {...}, "cpu_expert": {"points": [...]}, "cpu_expert_torch": ... | null,
/// "gpu_expert": ..., "transfer_ms": 6.45, "activation_round_trip": ...}</c>.
/// </summary>
/// <param name="CpuExpert">The C# SIMD CPU expert kernel, tokens → ms.</param>
/// <param name="CpuExpertTorch">TorchSharp's CPU linear (oneDNN, AMX) where calibrated; wins for larger batches.</param>
/// <param name="GpuExpert">One expert on the GPU whose weights are already there, tokens → ms.</param>
/// <param name="TransferMs">One expert's weights host → device from pinned memory.</param>
/// <param name="ActivationRoundTrip">Hidden states device → host and the expert's result back, tokens → ms.</param>
public sealed record HardwareProfile(
    [property: JsonPropertyName("key")] HardwareKey Key,
    [property: JsonPropertyName("cpu_expert")] LatencyModel CpuExpert,
    [property: JsonPropertyName("cpu_expert_torch")] LatencyModel? CpuExpertTorch,
    [property: JsonPropertyName("gpu_expert")] LatencyModel GpuExpert,
    [property: JsonPropertyName("transfer_ms")] double TransferMs,
    [property: JsonPropertyName("activation_round_trip")] LatencyModel ActivationRoundTrip)
{
    /// <summary>Bumped when the file layout changes; older files are recalibrated rather than misread.</summary>
    public const int FormatVersion = 1;

    [JsonPropertyName("version")] public int Version { get; init; } = FormatVersion;

    /// <summary>CPU time of one expert on the faster of the two CPU paths.</summary>
    public double CpuMs(int tokens) => CpuExpertTorch is { } torch ? Math.Min(CpuExpert.Ms(tokens), torch.Ms(tokens)) : CpuExpert.Ms(tokens);

    /// <summary>Whether the oneDNN path is predicted faster than the SIMD kernel for <paramref name="tokens"/>.</summary>
    public bool CpuPrefersTorch(int tokens) => CpuExpertTorch is { } torch && torch.Ms(tokens) < CpuExpert.Ms(tokens);

    public void Save(string path)
    {
        Validate(path);
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        File.WriteAllText(path, JsonSerializer.Serialize(this, Json));
    }

    /// <summary>Reads a cache file; <see cref="InvalidDataException"/> when it is not one (delete it to recalibrate).</summary>
    public static HardwareProfile Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: latency profile not found", path);
        HardwareProfile? p;
        try { p = JsonSerializer.Deserialize<HardwareProfile>(File.ReadAllText(path), Json); }
        catch (Exception e) when (e is JsonException or ArgumentException or NotSupportedException)
        {
            throw new InvalidDataException($"{path}: not a latency profile ({e.Message}); delete it and run `fiddler calibrate`", e);
        }
        if (p is null) throw new InvalidDataException($"{path}: empty latency profile; delete it and run `fiddler calibrate`");
        p.Validate(path);
        return p;
    }

    /// <summary>
    /// The cached profile when <paramref name="path"/> exists, has this format version and was measured for
    /// <paramref name="expected"/>; null means calibrate. A corrupt file still throws: silently recalibrating would
    /// hide a disk or tooling problem.
    /// </summary>
    public static HardwareProfile? LoadIfMatches(string path, HardwareKey expected) => LoadIfMatches(path, expected, out _);

    /// <param name="mismatch">Why an existing file was not used ("format version", or the key fields that differ, e.g.
    /// "cpu_threads (15, not 14)"); null when the file is missing or used.</param>
    public static HardwareProfile? LoadIfMatches(string path, HardwareKey expected, out string? mismatch)
    {
        mismatch = null;
        if (!File.Exists(path)) return null;
        if (ReadVersion(path) != FormatVersion)
        {
            mismatch = "format version";
            return null;
        }
        var p = Load(path);
        if (p.Key == expected) return p;
        var k = p.Key;
        var fields = new List<string>();
        void Field<T>(string name, T cached, T wanted)
        {
            if (!EqualityComparer<T>.Default.Equals(cached, wanted)) fields.Add($"{name} ({cached}, not {wanted})");
        }
        Field("cpu_model", k.CpuModel, expected.CpuModel);
        Field("cpu_cores", k.CpuCores, expected.CpuCores);
        Field("cpu_threads", k.CpuThreads, expected.CpuThreads);
        Field("cpu_kernel", k.CpuKernel ?? "none", expected.CpuKernel ?? "none");
        Field("gpu_name", k.GpuName, expected.GpuName);
        Field("model_shape", k.ModelShapeHash, expected.ModelShapeHash);
        Field("dtype", k.Dtype, expected.Dtype);
        mismatch = string.Join(", ", fields);
        return null;
    }

    private static int? ReadVersion(string path)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            return doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("version", out var v)
                && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n) ? n : null;
        }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not JSON ({e.Message}); delete it and run `fiddler calibrate`", e); }
    }

    private void Validate(string source)
    {
        // Deserialization bypasses nullable annotations, so a file missing a field shows up here as null.
        if (Key is null || CpuExpert is null || GpuExpert is null || ActivationRoundTrip is null)
            throw new InvalidDataException($"{source}: latency profile lacks key, cpu_expert, gpu_expert or activation_round_trip; " +
                "delete it and run `fiddler calibrate`");
        if (!double.IsFinite(TransferMs) || TransferMs <= 0)
            throw new InvalidDataException($"{source}: transfer_ms must be finite and > 0, got {TransferMs}; run `fiddler calibrate`");
        // An expert that takes no time on a lane would send every miss there and teach the router nothing (a lane
        // planned at 0 ms is never accounted): a measured expert always takes some time.
        if (CpuExpert.Points.All(p => p.Ms <= 0) || GpuExpert.Points.All(p => p.Ms <= 0))
            throw new InvalidDataException($"{source}: cpu_expert and gpu_expert need a time above 0; delete it and run `fiddler calibrate`");
    }

    // Relaxed escaping keeps CPU names such as "Xeon(R) Platinum 8480+" readable in the file; it is never embedded in HTML.
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
}
