namespace Fiddler.Actors.Placement;

/// <summary>
/// Fills a GPU memory budget the way the Fiddler paper does: what every token needs first (non-expert weights, the
/// KV cache, a reserve for activations and staging), then whole experts in descending popularity until the next one
/// no longer fits. Staging slots exist only for experts left in host memory: a budget that holds every expert without
/// them reserves none.
/// </summary>
public static class PlacementPlanner
{
    /// <summary>
    /// Plans residency for <paramref name="shape"/> under <paramref name="budgetBytes"/>. Popularity ties go to the lower
    /// layer, then the lower expert index, so a uniform profile gives the same plan on every run.
    /// </summary>
    /// <param name="reserveBytes">Always kept free (activations, libtorch's workspaces).</param>
    /// <param name="stagingBytes">Also kept free when some expert stays in host memory (the weight-transfer slots).</param>
    /// <exception cref="PlacementException">The budget cannot hold the non-expert weights + KV cache + reserve.</exception>
    public static PlacementPlan Plan(ModelShape shape, long budgetBytes, ExpertPopularity pop, long kvCacheBytes,
        long reserveBytes, long stagingBytes = 0)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(pop);
        ArgumentOutOfRangeException.ThrowIfNegative(budgetBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(kvCacheBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(reserveBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(stagingBytes);
        pop.EnsureMatches(shape.Layers, shape.Experts);

        // Every expert resident needs no staging; otherwise the slots come out of the budget before any expert.
        if (shape.NonExpertBytes + kvCacheBytes + reserveBytes + shape.AllExpertsBytes > budgetBytes) reserveBytes += stagingBytes;
        long fixedBytes = shape.NonExpertBytes + kvCacheBytes + reserveBytes;
        if (fixedBytes > budgetBytes)
            throw new PlacementException($"budget {MemoryBudget.Format(budgetBytes)} cannot hold the non-expert weights " +
                $"({MemoryBudget.Format1(shape.NonExpertBytes)}) + KV cache ({MemoryBudget.Format1(kvCacheBytes)}) + " +
                $"reserve ({MemoryBudget.Format1(reserveBytes)}) = {MemoryBudget.Format1(fixedBytes)}");

        // All experts are the same size, so "until the budget is full" is simply the first n in popularity order.
        long fit = (budgetBytes - fixedBytes) / shape.ExpertBytes;
        int n = (int)Math.Min(fit, (long)shape.Layers * shape.Experts);

        var order = new List<(int Layer, int Expert, long Count)>(shape.Layers * shape.Experts);
        for (int l = 0; l < shape.Layers; l++)
            for (int e = 0; e < shape.Experts; e++)
                order.Add((l, e, pop.Count(l, e)));
        order.Sort((a, b) => b.Count != a.Count ? b.Count.CompareTo(a.Count)
            : a.Layer != b.Layer ? a.Layer.CompareTo(b.Layer) : a.Expert.CompareTo(b.Expert));

        var (onGpu, hitRate) = TakeFirst(shape, order, n);
        return new PlacementPlan(shape, onGpu, budgetBytes, kvCacheBytes, reserveBytes, hitRate);
    }

    /// <summary>The first <paramref name="n"/> experts of <paramref name="ranked"/> on the GPU, and the share of the
    /// profile's recorded choices they serve (a uniform, all-zero profile has none: the share of experts instead).</summary>
    private static (bool[,] OnGpu, double HitRate) TakeFirst(ModelShape shape, IReadOnlyList<(int Layer, int Expert, long Count)> ranked, int n)
    {
        var onGpu = new bool[shape.Layers, shape.Experts];
        long hits = 0, all = 0;
        for (int i = 0; i < ranked.Count; i++)
        {
            if (i < n) { onGpu[ranked[i].Layer, ranked[i].Expert] = true; hits += ranked[i].Count; }
            all += ranked[i].Count;
        }
        return (onGpu, all > 0 ? (double)hits / all : (double)n / ranked.Count);
    }

    /// <summary>An expert whose host memory reads below this share of the median rate sits in slow memory.</summary>
    public const double SlowReadShare = 0.9;

    /// <summary>
    /// The same number of GPU experts as <paramref name="plan"/>, chosen for the CPU time they save: an expert left in
    /// host memory costs its choice rate × bytes ÷ how fast this host reads its memory, so the GPU takes the experts of
    /// highest (count + 1) ÷ read rate. With a uniform profile that is the slowest-reading experts: on a host that backs
    /// part of the process's memory with slower DRAM, the CPU lane then reads only the faster part. Experts with no
    /// measured rate (null, NaN or ≤ 0 in <paramref name="readGBps"/>), and those within <paramref name="slowBelow"/> of
    /// the median, count at the median rate: on a host whose memory reads evenly the plan keeps the popularity order,
    /// which fills whole layers first (measured on an even H200 host, 2026-11-28: experts spread over every layer gave
    /// −3.7 % decode at 24 GiB, as more layers then have a CPU lane and its hand-off).
    /// </summary>
    /// <param name="slowBelow">A rate below this share of the median is slow memory (default <see cref="SlowReadShare"/>).</param>
    public static PlacementPlan ByReadSpeed(PlacementPlan plan, ExpertPopularity pop, double?[,] readGBps, double slowBelow = SlowReadShare)
    {
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(pop);
        ArgumentNullException.ThrowIfNull(readGBps);
        var shape = plan.Shape;
        if (readGBps.GetLength(0) != shape.Layers || readGBps.GetLength(1) != shape.Experts)
            throw new ArgumentException($"read rates are [{readGBps.GetLength(0)}, {readGBps.GetLength(1)}], the model has [{shape.Layers}, {shape.Experts}]");
        pop.EnsureMatches(shape.Layers, shape.Experts);
        var known = new List<double>();
        foreach (var r in readGBps)
            if (r is double v && v > 0 && double.IsFinite(v)) known.Add(v);
        known.Sort();
        double median = known.Count == 0 ? 1 : known[known.Count / 2];

        var order = new List<(int Layer, int Expert, double Score, long Count)>(shape.Layers * shape.Experts);
        for (int l = 0; l < shape.Layers; l++)
            for (int e = 0; e < shape.Experts; e++)
            {
                double rate = readGBps[l, e] is double v && v > 0 && double.IsFinite(v) && v < slowBelow * median ? v : median;
                order.Add((l, e, (pop.Count(l, e) + 1) / rate, pop.Count(l, e)));
            }
        order.Sort((a, b) => b.Score != a.Score ? b.Score.CompareTo(a.Score)
            : a.Layer != b.Layer ? a.Layer.CompareTo(b.Layer) : a.Expert.CompareTo(b.Expert));

        var (onGpu, hitRate) = TakeFirst(shape, [.. order.Select(o => (o.Layer, o.Expert, o.Count))], plan.ExpertsOnGpu);
        return new PlacementPlan(shape, onGpu, plan.BudgetBytes, plan.KvCacheBytes, plan.ReserveBytes, hitRate);
    }
}
