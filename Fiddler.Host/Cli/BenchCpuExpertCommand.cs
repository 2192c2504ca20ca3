using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

/// <summary>
/// <c>fiddler bench-cpu-expert</c>: the CPU expert kernel (Fiddler's decode path for experts that stay off the GPU) on
/// random bf16 weights, against the machine's own DRAM read bandwidth measured with the same threads, and against
/// libtorch's bf16 <c>linear</c> (oneDNN) on the same weights. Experts are cycled so that their weights come from DRAM,
/// not from the last-level cache.
/// </summary>
public static unsafe partial class BenchCpuExpertCommand
{
    public static Command Create()
    {
        var hidden = new Option<int>("--hidden") { DefaultValueFactory = _ => 4096 };
        var intermediate = new Option<int>("--intermediate") { DefaultValueFactory = _ => 14336 };
        var tokens = new Option<string>("--tokens") { Description = "Token counts, comma-separated", DefaultValueFactory = _ => "1,2,4,8,16" };
        var threads = new Option<int>("--threads") { Description = "Worker threads (0: one per logical CPU)" };
        var iterations = new Option<int>("--iterations") { DefaultValueFactory = _ => 20 };
        var experts = new Option<int>("--experts") { Description = "Distinct experts to cycle (0: ≥ 8 and ≥ 2 GB together)" };
        var bandwidthGb = new Option<double>("--bandwidth-gb") { Description = "Buffer for the read-bandwidth probe", DefaultValueFactory = _ => 2 };
        var isa = new Option<string?>("--isa") { Description = "Force a kernel path: scalar, avx2, avx512" };
        var noTorch = new Option<bool>("--no-torch") { Description = "Skip the libtorch comparison" };
        var sliceRows = new Option<string?>("--slice-rows") { Description = "Split slices, comma-separated intermediate rows K: the kernel on rows [0, K) of each expert (w2 columns strided, as a CPU/GPU split runs it) beside a contiguous expert of K rows" };
        var withCopies = new Option<bool>("--with-copies") { Description = "Also run the 1-token kernel while expert copies stream host→GPU (CUDA), as in the engine's decode lanes, for each --prefetch-bytes × --prefetch-level × --next-rows × --item-kb × --rows × --tail-kb setting" };
        var prefetch = new Option<string>("--prefetch-bytes") { Description = "With --with-copies: kernel prefetch distances to compare, comma-separated bytes", DefaultValueFactory = _ => CpuKernelTuning.DefaultPrefetchBytes.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        var level = new Option<string>("--prefetch-level") { Description = "With --with-copies: prefetch cache levels to compare, comma-separated (l1, l2, l3, nta)", DefaultValueFactory = _ => CpuKernelTuning.Name(CpuKernelTuning.DefaultPrefetchLevel) };
        var nextRows = new Option<string>("--next-rows") { Description = "With --with-copies: next-row-group prefetch off/on to compare, comma-separated (0, 1)", DefaultValueFactory = _ => CpuKernelTuning.DefaultNextRowsPrefetch ? "1" : "0" };
        var itemKb = new Option<string>("--item-kb") { Description = "With --with-copies: kernel work-item sizes to compare, comma-separated KB", DefaultValueFactory = _ => (CpuKernelTuning.DefaultItemBytes / 1024).ToString(System.Globalization.CultureInfo.InvariantCulture) };
        var rows = new Option<string>("--rows") { Description = "With --with-copies: row orders to compare, comma-separated (spread: each item's rows as contiguous runs side by side; adjacent: neighbouring rows)", DefaultValueFactory = _ => CpuKernelTuning.DefaultSpreadRows ? "spread" : "adjacent" };
        var tailKb = new Option<string>("--tail-kb") { Description = "With --with-copies: sizes of the items at each phase's end to compare, comma-separated KB (0: off)", DefaultValueFactory = _ => (CpuKernelTuning.DefaultTailItemBytes / 1024).ToString(System.Globalization.CultureInfo.InvariantCulture) };
        var hugePages = new Option<bool>("--huge-pages") { Description = "Advise the experts' memory into 2 MiB transparent huge pages before it is filled (MADV_HUGEPAGE, as FIDDLER_HUGE_PAGES=1 does for the engine's host experts)" };
        var libtorch = new Option<string?>("--libtorch") { Description = "With --with-copies: folder of a CUDA libtorch (default: python3's torch)" };
        var warmMb = new Option<string?>("--warm-mb") { Description = "Cache warming, comma-separated MB: before each timed 1-token call, read that many MB of the expert's first w1 and w3 rows (untimed); shows what reading ahead into the CPU caches saves the kernel" };
        var command = new Command("bench-cpu-expert", "CPU expert kernel: ms per expert and GB/s against DRAM read bandwidth and libtorch");
        foreach (var o in new Option[] { hidden, intermediate, tokens, threads, iterations, experts, bandwidthGb, isa, noTorch, warmMb, sliceRows, withCopies, prefetch, level, nextRows, itemKb, rows, tailKb, hugePages, libtorch }) command.Add(o);
        command.SetAction(r =>
        {
            // Every option is checked before any work (and before a re-exec for CUDA).
            int h = r.GetValue(hidden), i = r.GetValue(intermediate), n = r.GetValue(iterations), threadCount = r.GetValue(threads);
            if (h <= 0 || i <= 0 || n <= 0 || threadCount < 0) throw new ArgumentException("--hidden, --intermediate, --iterations must be positive, --threads ≥ 0");
            int[] tokenCounts = r.GetValue(tokens)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(s => int.TryParse(s, out int t) && t > 0 ? t : throw new ArgumentException($"--tokens: '{s}' is not a positive integer")).ToArray();
            double[]? warmSizes = r.GetValue(warmMb) is string warmList ? ParseSizes(warmList) : null;
            int[]? slices = r.GetValue(sliceRows) is string sliceList ? ParseRows(sliceList, i) : null;
            CpuIsa? forcedIsa = r.GetValue(isa) is string name
                ? Enum.TryParse<CpuIsa>(name, ignoreCase: true, out var forced) ? forced : throw new ArgumentException($"--isa: unknown path '{name}' (scalar, avx2, avx512)")
                : null;
            bool copies = r.GetValue(withCopies);
            foreach (var o in new Option[] { prefetch, level, nextRows, itemKb, rows, tailKb, libtorch })
                if (!copies && r.GetResult(o) is { Implicit: false }) throw new ArgumentException($"{o.Name} only applies with --with-copies");
            var tunings = copies ? Tunings(r.GetValue(prefetch)!, r.GetValue(level)!, r.GetValue(nextRows)!, r.GetValue(itemKb)!, r.GetValue(rows)!, r.GetValue(tailKb)!) : null;
            if (copies && CudaBootstrap.ReexecIfNeeded("cuda", r.GetValue(libtorch)) is int code) return code;
            var cuda = copies ? TorchRuntime.Initialize("cuda") : null;
            if (forcedIsa is not null) CpuExpertKernel.ForceIsa = forcedIsa;
            using var pool = new CpuWorkerPool(threadCount);
            long expertBytes = 3L * h * i * sizeof(ushort);
            int count = r.GetValue(experts) is > 0 and var e ? e : (int)Math.Clamp((2L << 30) / expertBytes + 1, 8, 1024);
            Console.WriteLine($"CPU expert H={h} I={i} bf16: {expertBytes / 1e6:F1} MB/expert, {count} experts cycled " +
                $"({count * expertBytes / 1e9:F1} GB); {pool.Concurrency} threads; path {CpuExpertKernel.ForceIsa ?? CpuExpertKernel.BestIsa} " +
                $"(best here: {CpuExpertKernel.BestIsa}); {Environment.ProcessorCount} logical CPUs");

            long d0 = Stopwatch.GetTimestamp();
            for (int k = 0; k < 10_000; k++) pool.ParallelFor(pool.Concurrency, _ => { }, pool.Concurrency, _ => { }, grain: 1);
            Console.WriteLine($"pool: {Stopwatch.GetElapsedTime(d0).TotalMicroseconds / 10_000:F1} µs per empty two-phase region (workers spinning)");
            double readGBps = MeasureBandwidth(pool, (long)(r.GetValue(bandwidthGb) * 1e9));
            Console.WriteLine($"DRAM read bandwidth (parallel vector sum, {pool.Concurrency} threads): {readGBps:F1} GB/s");

            using var scope = NewDisposeScope();
            set_num_threads(pool.Concurrency);
            var clock = Stopwatch.StartNew();
            t_huge = r.GetValue(hugePages);
            var weights = Enumerable.Range(0, count).Select(e => (
                W1: RandomBf16(pool, i, h, 3 * e), W3: RandomBf16(pool, i, h, 3 * e + 1), W2: RandomBf16(pool, h, i, 3 * e + 2))).ToArray();
            var kernelWeights = weights.Select(w => new ExpertWeights((void*)TensorMemory.DataPtr(w.W1), (void*)TensorMemory.DataPtr(w.W3),
                (void*)TensorMemory.DataPtr(w.W2), h, i, WeightType.BF16)).ToArray();
            Console.WriteLine($"random weights: {clock.Elapsed.TotalSeconds:F1} s; huge pages {(t_huge ? "advised" : "not advised")}, " +
                $"{(Fiddler.Kernels.Runtime.HugePages.ProcessHugeBytes() is long hb ? $"{hb / (double)(1L << 30):F1} GiB" : "unknown")} of the process in them");

            Console.WriteLine();
            Console.WriteLine($"{"tokens",6} {"kernel ms",10} {"GB/s",7} {"of DRAM",8} {"torch ms",9} {"torch GB/s",11} {"speed-up",9}");
            foreach (int t in tokenCounts)
            {
                var x = randn(t, h);
                var y = empty(t, h);
                float* xp = (float*)TensorMemory.DataPtr(x), yp = (float*)TensorMemory.DataPtr(y);
                double kernelMs = MedianMs(n, count, e => CpuExpertKernel.SwiGlu(pool, xp, t, kernelWeights[e], yp));
                double kernelGBps = expertBytes / kernelMs / 1e6;
                string torchColumns = "";
                if (!r.GetValue(noTorch))
                {
                    var xb = x.to(ScalarType.BFloat16);
                    double torchMs = MedianMs(n, count, e =>
                    {
                        using var inner = NewDisposeScope();
                        var w = weights[e];
                        var act = nn.functional.silu(nn.functional.linear(xb, w.W1)) * nn.functional.linear(xb, w.W3);
                        nn.functional.linear(act, w.W2);
                    });
                    torchColumns = $" {torchMs,9:F3} {expertBytes / torchMs / 1e6,11:F1} {torchMs / kernelMs,8:F2}x";
                }
                Console.WriteLine($"{t,6} {kernelMs,10:F3} {kernelGBps,7:F1} {kernelGBps / readGBps,7:P0}{torchColumns}");
            }
            if (slices is not null) Slices(pool, h, i, kernelWeights, tokenCounts, n, slices);
            if (cuda is not null) BesideCopies(pool, cuda, h, i, weights.Select(w => (w.W1, w.W3, w.W2)).ToArray(), kernelWeights, n, tunings!);
            if (warmSizes is not null) WarmCaches(pool, h, i, kernelWeights, weights.Select(w => (w.W1, w.W3)).ToArray(), n, warmSizes);
            return 0;
        });
        return command;
    }

    /// <summary>
    /// --warm-mb: for each size, the 1-token kernel timed right after an untimed parallel read of that many MB of its
    /// expert's first w1 and w3 rows (the rows the kernel reads first), against the kernel alone: whether weights read
    /// ahead (e.g. while the GPU runs the hand-off between two layers) are still in the CPU's caches when the kernel runs.
    /// </summary>
    private static void WarmCaches(CpuWorkerPool pool, int h, int i, ExpertWeights[] kernelWeights, (Tensor W1, Tensor W3)[] weights, int n, double[] sizes)
    {
        var x = randn(1, h);
        var y = empty(1, h);
        float* xp = (float*)TensorMemory.DataPtr(x), yp = (float*)TensorMemory.DataPtr(y);
        // ReadOnce reads whole MiB: each of w1 and w3 gives the requested half, rounded down to whole MiB (at least one,
        // at most the matrix), and the table shows what was read.
        const long MiB = 1 << 20;
        long matrixBytes = (long)h * i * sizeof(ushort) / MiB * MiB;
        Console.WriteLine();
        Console.WriteLine($"{"asked MB",8} {"read MB",8} {"read ms",8} {"read GB/s",10} {"kernel ms",10} {"saved ms",9}");
        double cold = 0;
        foreach (double mb in sizes.Prepend(0))
        {
            long each = mb == 0 ? 0 : Math.Min(matrixBytes, Math.Max(MiB, (long)(mb * 1e6 / 2) / MiB * MiB));
            var readMs = new List<double>();
            long readBytes = 0;
            double kernelMs = MedianMs(n, kernelWeights.Length, expert =>
            {
                if (each == 0) return;
                long t0 = Stopwatch.GetTimestamp();
                readBytes = CpuBandwidth.ReadOnce(pool, [(TensorMemory.DataPtr(weights[expert].W1), each), (TensorMemory.DataPtr(weights[expert].W3), each)]);
                readMs.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            }, expert => CpuExpertKernel.SwiGlu(pool, xp, 1, kernelWeights[expert], yp));
            if (mb == 0) cold = kernelMs;
            double read = readMs.Count > 0 ? readMs.Order().ElementAt(readMs.Count / 2) : 0;
            Console.WriteLine($"{mb,8:F0} {readBytes / 1e6,8:F1} {read,8:F3} {(read > 0 ? readBytes / read / 1e6 : 0),10:F1} {kernelMs,10:F3} {cold - kernelMs,9:F3}");
        }
    }

    /// <summary>
    /// --slice-rows: for each K, the kernel on intermediate rows [0, K) of each expert (w1/w3 rows contiguous, w2's first K
    /// columns: Hidden runs of K elements with the expert's row pitch; the CPU half of a split) against the same bytes laid
    /// out contiguously (an expert of K rows), per token count.
    /// </summary>
    private static void Slices(CpuWorkerPool pool, int h, int i, ExpertWeights[] whole, int[] tokenCounts, int n, int[] slices)
    {
        Console.WriteLine();
        Console.WriteLine($"{"rows",6} {"tokens",6} {"slice ms",9} {"GB/s",7} {"compact ms",11} {"GB/s",7} {"compact/slice",14}");
        foreach (int k in slices)
        {
            long bytes = 3L * h * k * sizeof(ushort);
            var slice = whole.Select(w => new ExpertWeights(w.W1, w.W3, w.W2, h, k, WeightType.BF16, w2Stride: i)).ToArray();
            var compact = whole.Select(w => new ExpertWeights(w.W1, w.W3, w.W2, h, k, WeightType.BF16)).ToArray();
            foreach (int t in tokenCounts)
            {
                var x = randn(t, h);
                var y = empty(t, h);
                float* xp = (float*)TensorMemory.DataPtr(x), yp = (float*)TensorMemory.DataPtr(y);
                double sliceMs = MedianMs(n, slice.Length, e => CpuExpertKernel.SwiGlu(pool, xp, t, slice[e], yp));
                double compactMs = MedianMs(n, compact.Length, e => CpuExpertKernel.SwiGlu(pool, xp, t, compact[e], yp));
                Console.WriteLine($"{k,6} {t,6} {sliceMs,9:F3} {bytes / sliceMs / 1e6,7:F1} {compactMs,11:F3} {bytes / compactMs / 1e6,7:F1} {sliceMs / compactMs,13:F2}x");
                x.Dispose();
                y.Dispose();
            }
        }
    }

    private static int[] ParseRows(string list, int intermediate) => list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(s => int.TryParse(s, out int v) && v > 0 && v <= intermediate ? v
            : throw new ArgumentException($"--slice-rows: '{s}' is not a row count in 1..{intermediate}")).ToArray();

    private static double[] ParseSizes(string list) => list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(s => double.TryParse(s, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v) && v > 0 && double.IsFinite(v) ? v
            : throw new ArgumentException($"--warm-mb: '{s}' is not a positive size in MB")).ToArray();

    private static double MeasureBandwidth(CpuWorkerPool pool, long bytes)
    {
        bytes = Math.Max(bytes, 64L << 20) & ~((1L << 20) - 1);
        byte* buffer = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
        try
        {
            CpuBandwidth.Fill(pool, buffer, bytes, 1);
            return CpuBandwidth.MeasureReadGBps(pool, buffer, bytes, repeats: 5);
        }
        finally { NativeMemory.AlignedFree(buffer); }
    }

    [ThreadStatic] private static bool t_huge; // --huge-pages, for RandomBf16 on the command's thread

    /// <summary>Uniform in [−0.05, 0.05), rounded to bf16 (xorshift per 1 MiB chunk: libtorch's randn takes minutes for GBs).</summary>
    private static Tensor RandomBf16(CpuWorkerPool pool, long rows, long cols, int seed)
    {
        var t = empty(rows, cols, dtype: ScalarType.BFloat16);
        ushort* p = (ushort*)TensorMemory.DataPtr(t);
        if (t_huge) Fiddler.Kernels.Runtime.HugePages.Advise((nint)p, rows * cols * sizeof(ushort)); // before the fill touches it
        long n = rows * cols, chunk = 1 << 20;
        pool.ParallelFor((int)((n + chunk - 1) / chunk), c =>
        {
            ulong s = ((ulong)seed << 32 | (uint)c) * 0x9E3779B97F4A7C15UL | 1;
            for (long k = c * chunk, end = Math.Min(n, k + chunk); k < end; k++)
            {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                float v = ((int)(s >> 40) - (1 << 23)) * (0.05f / (1 << 23));
                p[k] = (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16);
            }
        });
        return t;
    }

    /// <summary>Median of <paramref name="iterations"/> timed calls after two warm-up calls, each on the next expert.</summary>
    private static double MedianMs(int iterations, int experts, Action<int> run) => MedianMs(iterations, experts, _ => { }, run);

    /// <summary>As above, with an untimed <paramref name="before"/> on the same expert right before each call.</summary>
    private static double MedianMs(int iterations, int experts, Action<int> before, Action<int> run)
    {
        int next = 0;
        for (int w = 0; w < 2; w++) { before(next % experts); run(next++ % experts); }
        var ms = new double[iterations];
        for (int k = 0; k < iterations; k++)
        {
            before(next % experts);
            long t0 = Stopwatch.GetTimestamp();
            run(next++ % experts);
            ms[k] = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
        }
        Array.Sort(ms);
        return ms[iterations / 2];
    }
}
