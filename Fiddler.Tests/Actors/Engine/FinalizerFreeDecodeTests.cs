using Fiddler.Actors.Engine;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Sampling;
using Fiddler.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace Fiddler.Tests.Actors.Engine;

/// <summary>
/// What a decode step leaves for .NET's finalizer. TorchSharp objects that are never disposed (the arrays behind
/// <c>Tensor.shape</c>, a <c>Scalar</c> made from a double, ...) each stay registered for finalization; a collection then
/// keeps them alive, copies them a generation up and hands them to the finalizer thread. On the GPU machine at full size
/// one such collection in the decode windows paused every thread for ~330 ms (2026-11-28).
/// </summary>
[Collection(nameof(GcSensitive))]
public sealed class FinalizerFreeDecodeTests(ITestOutputHelper output)
{
    [Fact]
    public void OffloadedDecode_LeavesAlmostNothingForTheFinalizer()
    {
        string model = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny-gqa4-top3");
        string dir = TinyCheckpoint.TempDir();
        try
        {
            using var engine = OffloadEngine.Create(new EngineOptions
            {
                ModelDir = model, Device = TorchSharp.torch.CPU, GpuBudgetBytes = 3 << 20, ContextTokens = 64, CpuThreads = 2,
                ProfilePath = Path.Combine(dir, "profile.json"),
            }, _ => { });
            var generator = new Generator(engine.Model, null);
            var options = new GenerationOptions { MaxNewTokens = 40, Sampling = SamplingOptions.Greedy, StopOnEos = false };
            int[] prompt = [1, 5, 9, 13, 17, 21, 25, 29];
            generator.Run(prompt, options); // warm: first-use allocations (JIT, caches) are not what this counts

            // The runtime's own objects for the finalizer per full collection (its GC callbacks re-register each time):
            // a baseline, counted the way the run's are below.
            PendingAfterFullCollection(); // the warm-up's
            long baseline = PendingAfterFullCollection();
            // No collection during the run: one there would hand the run's objects to the finalizer out of sight.
            Assert.True(GC.TryStartNoGCRegion(256L << 20), "could not start a no-GC region for the measured run");
            GenerationResult result;
            try { result = generator.Run(prompt, options); }
            finally
            {
                if (System.Runtime.GCSettings.LatencyMode == System.Runtime.GCLatencyMode.NoGCRegion) GC.EndNoGCRegion();
            }
            using var finalized = new FinalizedTypes();
            long pending = PendingAfterFullCollection() - baseline;
            // The breakdown by type, for the message: the runtime's events reach a listener from a session read about
            // once a second.
            for (var wait = System.Diagnostics.Stopwatch.StartNew(); finalized.Count(_ => true) < pending && wait.Elapsed.TotalSeconds < 10;)
                Thread.Sleep(100);
            string types = finalized.Summary();
            double perToken = (double)pending / result.Tokens.Length;
            output.WriteLine($"{pending} objects for the finalizer over {result.Tokens.Length} tokens (beyond the runtime's {baseline}): {perToken:F1} per token ({types})");
            // What is left: topk's result array, once per layer (no single-output op gives the router's top-k as
            // cheaply), and the prefill's attention-mask scalars. Before the fix: 73.8 per token.
            Assert.True(perToken <= engine.Config.NumHiddenLayers + 2, $"{perToken:F1} objects per token left for the finalizer: {types}");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>A full blocking collection: how many objects it found for the finalizer (which then drains).</summary>
    private static long PendingAfterFullCollection()
    {
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true);
        long pending = GC.GetGCMemoryInfo(GCKind.FullBlocking).FinalizationPendingCount;
        GC.WaitForPendingFinalizers();
        return pending;
    }
}

/// <summary>Counts the objects the finalizer runs, by type (the runtime's FinalizeObject events).</summary>
internal sealed class FinalizedTypes : System.Diagnostics.Tracing.EventListener
{
    private readonly Dictionary<IntPtr, int> _byType = [];

    protected override void OnEventSourceCreated(System.Diagnostics.Tracing.EventSource source)
    {
        if (source.Name == "Microsoft-Windows-DotNETRuntime")
            EnableEvents(source, System.Diagnostics.Tracing.EventLevel.Verbose, (System.Diagnostics.Tracing.EventKeywords)0x1); // GC
    }

    protected override void OnEventWritten(System.Diagnostics.Tracing.EventWrittenEventArgs e)
    {
        if (e.EventName != "FinalizeObject" || e.Payload is null) return;
        var type = e.Payload[e.PayloadNames!.IndexOf("TypeID")] switch { IntPtr p => p, ulong u => (IntPtr)u, var other => (IntPtr)Convert.ToInt64(other) };
        lock (_byType) _byType[type] = _byType.GetValueOrDefault(type) + 1;
    }

    /// <summary>How many of the finalized objects were of a type that <paramref name="counted"/> accepts.</summary>
    public int Count(Func<Type, bool> counted)
    {
        lock (_byType) return _byType.Where(p => TypeOf(p.Key) is { } t && counted(t)).Sum(p => p.Value);
    }

    private static Type? TypeOf(IntPtr type) => Type.GetTypeFromHandle(RuntimeTypeHandle.FromIntPtr(type));

    public string Summary()
    {
        lock (_byType)
            return string.Join(", ", _byType.OrderByDescending(p => p.Value).Select(p => $"{Name(p.Key)} {p.Value}"));
        static string Name(IntPtr type) => TypeOf(type)?.ToString() ?? $"0x{type:x}";
    }
}

/// <summary>Tests that read the process's garbage collection counters run alone.</summary>
[CollectionDefinition(nameof(GcSensitive), DisableParallelization = true)]
public sealed class GcSensitive;
