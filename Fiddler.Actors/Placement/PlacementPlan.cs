using System.Globalization;
using System.Text;

namespace Fiddler.Actors.Placement;

/// <summary>
/// Which experts live on the GPU, and what the budget is spent on. Everything not on the GPU stays in pinned CPU memory.
/// Made by <see cref="PlacementPlanner.Plan"/>.
/// </summary>
public sealed class PlacementPlan
{
    private readonly bool[,] _onGpu;
    private readonly int[] _perLayer;

    internal PlacementPlan(ModelShape shape, bool[,] onGpu, long budgetBytes, long kvCacheBytes, long reserveBytes,
        double expectedHitRate)
    {
        Shape = shape;
        _onGpu = onGpu;
        BudgetBytes = budgetBytes;
        KvCacheBytes = kvCacheBytes;
        ReserveBytes = reserveBytes;
        ExpectedHitRate = expectedHitRate;
        _perLayer = new int[shape.Layers];
        for (int l = 0; l < shape.Layers; l++)
            for (int e = 0; e < shape.Experts; e++)
                if (onGpu[l, e]) _perLayer[l]++;
    }

    public ModelShape Shape { get; }

    /// <summary>A copy of the [layers, experts] residency table.</summary>
    public bool[,] OnGpu => (bool[,])_onGpu.Clone();

    /// <summary>The residency table as one array per layer (the layout <c>ExpertResidency</c> in Kernels takes).</summary>
    public bool[][] OnGpuByLayer() =>
        Enumerable.Range(0, Shape.Layers).Select(l => Enumerable.Range(0, Shape.Experts).Select(e => _onGpu[l, e]).ToArray()).ToArray();

    /// <summary>Whether expert <paramref name="expert"/> of <paramref name="layer"/> is resident on the GPU.</summary>
    public bool IsOnGpu(int layer, int expert) => _onGpu[layer, expert];

    public IReadOnlyList<int> ExpertsOnGpuPerLayer => _perLayer;
    public int ExpertsOnGpu => _perLayer.Sum();
    public int TotalExperts => Shape.Layers * Shape.Experts;

    public long BudgetBytes { get; }
    public long NonExpertBytes => Shape.NonExpertBytes;
    public long KvCacheBytes { get; }
    public long ReserveBytes { get; }
    public long ExpertBytesOnGpu => ExpertsOnGpu * Shape.ExpertBytes;

    /// <summary>Non-expert weights + KV cache + resident experts; the reserve is budgeted but not counted as used.</summary>
    public long UsedBytes => NonExpertBytes + KvCacheBytes + ExpertBytesOnGpu;
    public double UsedGiB => MemoryBudget.ToGiB(UsedBytes);

    /// <summary>Share of router choices in the popularity profile that this plan serves from the GPU.</summary>
    public double ExpectedHitRate { get; }

    /// <summary>A table for the console: experts on the GPU per layer (with a map, X = on GPU), totals and GiB.</summary>
    public string Summary()
    {
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.AppendLine(inv, $"layer  on GPU  experts (X = on GPU)");
        for (int l = 0; l < Shape.Layers; l++)
        {
            var map = new char[Shape.Experts];
            for (int e = 0; e < Shape.Experts; e++) map[e] = _onGpu[l, e] ? 'X' : '.';
            sb.AppendLine(inv, $"{l,5}  {_perLayer[l],3}/{Shape.Experts,-3} {new string(map)}");
        }
        sb.AppendLine(inv, $"total  {ExpertsOnGpu}/{TotalExperts} experts on GPU ({MemoryBudget.Format1(ExpertBytesOnGpu)}), " +
                           $"expected hit rate {ExpectedHitRate:P1}");
        sb.Append(inv, $"GPU    {MemoryBudget.Format1(UsedBytes)} used of {MemoryBudget.Format(BudgetBytes)}: " +
                       $"non-expert {MemoryBudget.Format1(NonExpertBytes)} + KV cache {MemoryBudget.Format1(KvCacheBytes)} + " +
                       $"experts {MemoryBudget.Format1(ExpertBytesOnGpu)}; reserve {MemoryBudget.Format1(ReserveBytes)}");
        return sb.ToString();
    }
}
