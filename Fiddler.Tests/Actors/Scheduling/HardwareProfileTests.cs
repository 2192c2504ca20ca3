using Xunit;
using Fiddler.Actors.Scheduling;

namespace Fiddler.Tests.Actors.Scheduling;

public sealed class HardwareProfileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fiddler-hw-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly HardwareKey Key = new("Intel(R) Xeon(R) Platinum 8480+", 16, "NVIDIA H100 80GB HBM3", "0123456789abcdef", "bfloat16");

    /// <summary>The H100 host's numbers (NOTES.md, issue 3): C# kernel at the 3.9 ms goal, PyTorch/oneDNN CPU path.</summary>
    public static HardwareProfile H100(HardwareKey? key = null) => new(
        key ?? Key,
        CpuExpert: LatencyModel.FromPoints((1, 3.9), (16, 6.0), (64, 14.0), (256, 50.0)),
        CpuExpertTorch: LatencyModel.FromPoints((1, 6.5), (64, 8.5), (128, 17.5), (256, 27.0)),
        GpuExpert: LatencyModel.FromPoints((1, 0.15), (256, 0.6)),
        TransferMs: 6.45,
        ActivationRoundTrip: LatencyModel.Linear(0.02, 0.0001));

    private string PathOf(string name) => Path.Combine(_dir, name);

    [Fact]
    public void SaveLoad_RoundTrip_SameProfile()
    {
        var p = H100();
        p.Save(PathOf("sub/latency.json"));
        var back = HardwareProfile.Load(PathOf("sub/latency.json"));
        Assert.Equal(p.Key, back.Key);
        Assert.Equal(p.TransferMs, back.TransferMs);
        Assert.Equal(HardwareProfile.FormatVersion, back.Version);
        Assert.Equal(p.CpuExpert.Points, back.CpuExpert.Points);
        Assert.Equal(p.CpuExpertTorch!.Points, back.CpuExpertTorch!.Points);
        Assert.Equal(p.GpuExpert.Points, back.GpuExpert.Points);
        Assert.Equal(p.ActivationRoundTrip.Points, back.ActivationRoundTrip.Points);
        string text = File.ReadAllText(PathOf("sub/latency.json"));
        Assert.Contains("\"cpu_model\": \"Intel(R) Xeon(R) Platinum 8480+\"", text);
        Assert.Contains("\"transfer_ms\": 6.45", text);
    }

    [Fact]
    public void SaveLoad_NoTorchPath_Null()
    {
        (H100() with { CpuExpertTorch = null }).Save(PathOf("p.json"));
        Assert.Null(HardwareProfile.Load(PathOf("p.json")).CpuExpertTorch);
    }

    [Fact]
    public void LoadIfMatches_SameKey_Profile()
    {
        H100().Save(PathOf("p.json"));
        Assert.NotNull(HardwareProfile.LoadIfMatches(PathOf("p.json"), Key));
    }

    [Fact]
    public void LoadIfMatches_AnyKeyFieldDiffers_Null()
    {
        H100().Save(PathOf("p.json"));
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("p.json"), Key with { CpuCores = 32 }));
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("p.json"), Key with { GpuName = "NVIDIA H200" }));
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("p.json"), Key with { ModelShapeHash = "ffff" }));
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("p.json"), Key with { Dtype = "float16" }));
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("p.json"), Key with { CpuModel = "AMD EPYC" }));
    }

    [Fact]
    public void LoadIfMatches_MissingFileOrOtherVersion_Null()
    {
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("none.json"), Key));
        (H100() with { Version = 0 }).Save(PathOf("old.json"));
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("old.json"), Key));
    }

    [Theory]
    [InlineData("""{"version": "x"}""")]
    [InlineData("""{"version": null}""")]
    [InlineData("""{"version": 1.5}""")]
    public void Load_VersionNotAWholeNumber_RecalibratesWithoutAnError(string text)
    {
        File.WriteAllText(PathOf("v.json"), text);
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("v.json"), Key, out string? why));
        Assert.Equal("format version", why);
    }

    [Theory]
    [InlineData("not json")]
    [InlineData("""{"version": 1, "key": null}""")]
    [InlineData("""{"version": 1, "cpu_expert": {"points": []}}""")]
    public void Load_Corrupt_InvalidDataSaysRecalibrate(string text)
    {
        File.WriteAllText(PathOf("bad.json"), text);
        var e = Assert.Throws<InvalidDataException>(() => HardwareProfile.LoadIfMatches(PathOf("bad.json"), Key));
        Assert.Contains("fiddler calibrate", e.Message);
    }

    [Theory]
    [InlineData("null-point")]
    [InlineData("zero-transfer")]
    [InlineData("zero-cpu")]
    public void Load_ProfileThatWouldRouteAbsurdly_InvalidDataNamingTheFile(string damage)
    {
        // A null point crashed start-up with a bare NullReferenceException; zero times loaded and sent every miss to
        // one lane for good (a lane planned at 0 ms is never learned from).
        H100().Save(PathOf("p.json"));
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(PathOf("p.json")))!.AsObject();
        switch (damage)
        {
            case "null-point": json["cpu_expert"]!["points"]!.AsArray().Add(null); break;
            case "zero-transfer": json["transfer_ms"] = 0; break;
            case "zero-cpu":
                foreach (var point in json["cpu_expert"]!["points"]!.AsArray()) point!["ms"] = 0;
                break;
        }
        File.WriteAllText(PathOf("p.json"), json.ToJsonString());
        var e = Assert.Throws<InvalidDataException>(() => HardwareProfile.Load(PathOf("p.json")));
        Assert.Contains(PathOf("p.json"), e.Message);
        Assert.Contains("fiddler calibrate", e.Message);
    }

    [Fact]
    public void CpuMs_BothPaths_FasterOneWins()
    {
        var p = H100();
        Assert.Equal(3.9, p.CpuMs(1), 9);
        Assert.False(p.CpuPrefersTorch(1));
        Assert.Equal(27.0, p.CpuMs(256), 9);
        Assert.True(p.CpuPrefersTorch(256));
        Assert.Equal(50.0, (p with { CpuExpertTorch = null }).CpuMs(256), 9);
    }

    [Fact]
    public void ForThisHost_UsesShapeFingerprintAndCores()
    {
        var shape = new Fiddler.Actors.Placement.ModelShape(2, 4, 32, 48, 96, 4, 2, 8, 4, false);
        var key = HardwareKey.ForThisHost("cpu", shape, "float32", cpuThreads: 7, cpuKernel: "1024,l1,0,512,spread,128");
        Assert.Equal(shape.Fingerprint, key.ModelShapeHash);
        Assert.Equal(Environment.ProcessorCount, key.CpuCores);
        Assert.Equal(7, key.CpuThreads);
        Assert.Equal("1024,l1,0,512,spread,128", key.CpuKernel);
        Assert.False(string.IsNullOrWhiteSpace(key.CpuModel));
        Assert.Equal("cpu", Fiddler.Kernels.Cuda.CudaRuntime.DeviceLabel(TorchSharp.torch.CPU));
    }

    [Fact]
    public void LoadIfMatches_OtherWorkerCount_OrAFileFromBeforeTheField_Recalibrates()
    {
        var keyed = Key with { CpuThreads = 15 };
        H100(keyed).Save(PathOf("t.json"));
        Assert.NotNull(HardwareProfile.LoadIfMatches(PathOf("t.json"), keyed));
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("t.json"), keyed with { CpuThreads = 14 }, out string? why)); // serve's count
        Assert.Equal("cpu_threads (15, not 14)", why);
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("t.json"), keyed with { CpuThreads = 14, GpuName = "cuda" }, out why));
        Assert.Equal("cpu_threads (15, not 14), gpu_name (NVIDIA H100 80GB HBM3, not cuda)", why);
        Assert.NotNull(HardwareProfile.LoadIfMatches(PathOf("t.json"), keyed, out why));
        Assert.Null(why);
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("missing.json"), keyed, out why));
        Assert.Null(why);
        // A cache written before cpu_threads existed has no such field: it reads as 0 and matches no engine.
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(PathOf("t.json")))!;
        json["key"]!.AsObject().Remove("cpu_threads");
        File.WriteAllText(PathOf("old.json"), json.ToJsonString());
        Assert.Equal(0, HardwareProfile.Load(PathOf("old.json")).Key.CpuThreads);
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("old.json"), keyed));
    }

    [Fact]
    public void LoadIfMatches_AnotherKernelSetting_Recalibrates()
    {
        // Calibrated with the kernel's earlier layout: its CPU times do not hold for another one.
        var keyed = Key with { CpuThreads = 15, CpuKernel = "1024,l1,0,128" };
        H100(keyed).Save(PathOf("k.json"));
        Assert.NotNull(HardwareProfile.LoadIfMatches(PathOf("k.json"), keyed));
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("k.json"), keyed with { CpuKernel = "1024,l1,0,512,spread,128" }, out string? why));
        Assert.Equal("cpu_kernel (1024,l1,0,128, not 1024,l1,0,512,spread,128)", why);
        // A cache from before the field: none recorded, so it matches no engine.
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(PathOf("k.json")))!;
        json["key"]!.AsObject().Remove("cpu_kernel");
        File.WriteAllText(PathOf("old-kernel.json"), json.ToJsonString());
        Assert.Null(HardwareProfile.LoadIfMatches(PathOf("old-kernel.json"), keyed, out why));
        Assert.Equal("cpu_kernel (none, not 1024,l1,0,128)", why);
    }
}
