using System.Diagnostics;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Runtime;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

// --with-copies: the kernel as the engine's decode lanes run it, beside host→GPU expert copies that read the same DRAM.
public static unsafe partial class BenchCpuExpertCommand
{
    private const int CopiedExperts = 6, CopiesPerWindow = 24;

    /// <summary>
    /// The kernel's experts page-locked in place (as the engine's host experts are), six more to copy into two staging
    /// slots; then the plain read beside the copies (the lane-ceiling probe) and, per tuning, the 1-token kernel alone
    /// (median) and beside the copies (over a window of 24 copies, best of two).
    /// </summary>
    private static void BesideCopies(CpuWorkerPool pool, Device cuda, int h, int i, (Tensor W1, Tensor W3, Tensor W2)[] weights,
        ExpertWeights[] kernelWeights, int n, CpuKernelSettings[] tunings)
    {
        var pinned = new List<PinnedRegistration>();
        void Pin(Tensor t) => pinned.Add(PinnedMemory.Pin(TensorMemory.DataPtr(t), t.NumberOfElements * t.ElementSize));
        var copySources = Enumerable.Range(0, CopiedExperts)
            .Select(e => (W1: RandomBf16(pool, i, h, 1000 + 3 * e), W3: RandomBf16(pool, i, h, 1001 + 3 * e), W2: RandomBf16(pool, h, i, 1002 + 3 * e))).ToArray();
        var saved = CpuKernelSettings.Current;
        try
        {
            foreach (var (w1, w3, w2) in weights.Concat(copySources)) { Pin(w1); Pin(w3); Pin(w2); }
            using var stager = new WeightStager(cuda, new ExpertShape(h, i, ScalarType.BFloat16), slotCount: 2);
            var copied = copySources.Select(w => HostExpert.FromTensors(w.W1, w.W3, w.W2)).ToArray();
            var read = weights.Select(w => HostExpert.FromTensors(w.W1, w.W3, w.W2)).ToArray();
            var probe = LaneCeiling.Measure(pool, stager, copied, read, CopiesPerWindow);
            Console.WriteLine();
            Console.WriteLine($"beside host→GPU copies ({CopiedExperts} experts cycled through 2 slots, {CopiesPerWindow} per window):");
            Console.WriteLine($"  plain read (the lane-ceiling probe): alone {probe.CpuReadGBps:F1} GB/s, beside copies {probe.CpuReadWithCopyGBps:F1} GB/s; " +
                $"copies alone {probe.CopyGBps:F1}, beside the read {probe.CopyWithCpuReadGBps:F1} GB/s");
            Console.WriteLine($"{"prefetch B",11} {"level",6} {"next rows",10} {"item KB",8} {"rows",9} {"tail KB",8} {"alone ms",9} {"GB/s",7} {"beside GB/s",12} {"copies GB/s",12} {"of read beside",15}");
            long expertBytes = 3L * h * i * sizeof(ushort);
            var x = randn(1, h);
            var y = empty(1, h);
            float* xp = (float*)TensorMemory.DataPtr(x), yp = (float*)TensorMemory.DataPtr(y);
            foreach (var tuning in tunings)
            {
                tuning.Apply();
                double aloneMs = MedianMs(n, kernelWeights.Length, e => CpuExpertKernel.SwiGlu(pool, xp, 1, kernelWeights[e], yp));
                double beside = 0, copyRate = 0;
                for (int window = 0; window < 2; window++)
                {
                    int next = 0;
                    var (work, copyGBps, _) = LaneCeiling.Beside(stager, copied, CopiesPerWindow, () =>
                    {
                        CpuExpertKernel.SwiGlu(pool, xp, 1, kernelWeights[next++ % kernelWeights.Length], yp);
                        return expertBytes;
                    });
                    if (work > beside) (beside, copyRate) = (work, copyGBps);
                }
                Console.WriteLine($"{tuning.PrefetchBytes,11} {CpuKernelTuning.Name(tuning.Level),6} {(tuning.NextRows ? "yes" : "no"),10} {tuning.ItemBytes / 1024,8} {CpuKernelTuning.RowOrderName(tuning.SpreadRows),9} {tuning.TailItemBytes / 1024,8} {aloneMs,9:F3} {expertBytes / aloneMs / 1e6,7:F1} {beside,12:F1} {copyRate,12:F1} {beside / probe.CpuReadWithCopyGBps,14:P0}");
            }
        }
        finally
        {
            saved.Apply();
            foreach (var p in pinned) p.Dispose();
            foreach (var (w1, w3, w2) in copySources) { w1.Dispose(); w3.Dispose(); w2.Dispose(); }
        }
    }

    /// <summary>
    /// Every --prefetch-bytes × --prefetch-level × --next-rows × --item-kb × --rows × --tail-kb combination, each value
    /// checked as <see cref="CpuKernelTuning"/> would.
    /// </summary>
    private static CpuKernelSettings[] Tunings(string prefetchList, string levelList, string nextRowsList, string itemList, string rowsList, string tailList)
    {
        static string[] Words(string list) => list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        static int[] Parse(string list, string option) => Words(list)
            .Select(s => int.TryParse(s, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int v) ? v
                : throw new ArgumentException($"{option}: '{s}' is not a whole number")).ToArray();
        int[] prefetches = Parse(prefetchList, "--prefetch-bytes"), items = Parse(itemList, "--item-kb"), tails = Parse(tailList, "--tail-kb");
        var levels = Words(levelList).Select(w => CpuKernelTuning.ParseLevel(w) ?? throw new ArgumentException($"--prefetch-level: '{w}' is not one of l1, l2, l3, nta")).ToArray();
        var nextRows = Words(nextRowsList).Select(w => CpuKernelTuning.ParseSwitch(w) ?? throw new ArgumentException($"--next-rows: '{w}' is not 0 or 1")).ToArray();
        var spread = Words(rowsList).Select(w => CpuKernelTuning.ParseRowOrder(w) ?? throw new ArgumentException($"--rows: '{w}' is not spread or adjacent")).ToArray();
        if (prefetches.Length == 0 || items.Length == 0 || levels.Length == 0 || nextRows.Length == 0 || spread.Length == 0 || tails.Length == 0)
            throw new ArgumentException("--prefetch-bytes, --prefetch-level, --next-rows, --item-kb, --rows and --tail-kb need at least one value each");
        foreach (int p in prefetches)
            if (!CpuKernelTuning.ValidPrefetch(p)) throw new ArgumentException($"--prefetch-bytes: {p} is not a multiple of 64 in 0..16384");
        foreach (int kb in items)
            if (kb is < 16 or > 4096 || !CpuKernelTuning.ValidItem(kb * 1024)) throw new ArgumentException($"--item-kb: {kb} is not in 16..4096");
        foreach (int kb in tails)
            if (kb is < 0 or > 4096 || !CpuKernelTuning.ValidTail(kb * 1024)) throw new ArgumentException($"--tail-kb: {kb} is not 0 or in 16..4096");
        return [.. from p in prefetches from l in levels from x in nextRows from kb in items from sp in spread from tail in tails
            select new CpuKernelSettings(p, l, x, kb * 1024, sp, tail * 1024)];
    }
}
