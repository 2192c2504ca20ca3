using Xunit;
using Fiddler.Actors.Scheduling;

namespace Fiddler.Tests.Actors.Scheduling;

/// <summary>Checks that a plan's predicted timeline is physically possible on the modelled host.</summary>
internal static class RouterInvariants
{
    private const double Eps = 1e-9;

    /// <summary>The most streamed experts holding a staging slot (copy start to compute end) at any instant.</summary>
    public static int MaxInFlight(LayerPlan plan)
    {
        var held = plan.Decisions.Where(d => d.Placement == ExpertPlacement.Transfer).Select(d => (d.StartMs, d.FinishMs)).ToArray();
        // A slot freed at t can take a copy starting at t: intervals are half-open.
        return held.Length == 0 ? 0 : held.Max(h => held.Count(o => o.StartMs <= h.StartMs + Eps && o.FinishMs > h.StartMs + Eps));
    }

    /// <param name="cpuScales">Experts' read-speed scales (<see cref="ExpertLoad.CpuScale"/>; others 1), which apply at ≤ 4 tokens.</param>
    public static void Check(LayerPlan plan, HardwareProfile host, int slots, double contention = 1, IReadOnlyDictionary<int, double>? cpuScales = null)
    {
        double Scale(ExpertDecision d) => d.Tokens <= 4 && cpuScales is not null && cpuScales.TryGetValue(d.Expert, out double x) ? x : 1;
        bool copies = plan.Decisions.Any(d => d.Placement is ExpertPlacement.Transfer or ExpertPlacement.Split);
        double factor = copies ? contention : 1;
        double splitCpuMs = 0;
        foreach (var d in plan.Decisions)
        {
            Assert.True(d.StartMs >= 0 && d.ComputeStartMs >= d.StartMs - Eps && d.FinishMs >= d.ComputeStartMs - Eps);
            double gpu = host.GpuExpert.Ms(d.Tokens);
            switch (d.Placement)
            {
                case ExpertPlacement.Gpu:
                    Assert.Equal(gpu, d.PredictedMs, 9);
                    Assert.Equal(gpu, d.FinishMs - d.ComputeStartMs, 9);
                    break;
                case ExpertPlacement.Cpu:
                    Assert.Equal((host.CpuMs(d.Tokens) * Scale(d) + host.ActivationRoundTrip.Ms(d.Tokens)) * factor, d.PredictedMs, 9);
                    Assert.Equal(d.PredictedMs, d.FinishMs - d.StartMs, 9);
                    Assert.Equal(host.CpuPrefersTorch(d.Tokens), d.CpuViaTorch);
                    break;
                case ExpertPlacement.Transfer:
                    Assert.Equal(host.TransferMs + gpu, d.PredictedMs, 9);
                    Assert.True(d.ComputeStartMs >= d.StartMs + host.TransferMs - Eps, "compute before the weights arrived");
                    Assert.Equal(gpu, d.FinishMs - d.ComputeStartMs, 9);
                    break;
                case ExpertPlacement.Split:
                    Assert.InRange(d.CpuShare, 0.02, 0.98);
                    double t = 1 - d.CpuShare;
                    Assert.True(d.ComputeStartMs >= d.StartMs + t * host.TransferMs - Eps, "split compute before its weights arrived");
                    Assert.True(d.FinishMs >= d.ComputeStartMs + t * gpu - Eps);
                    splitCpuMs = (d.CpuShare * host.CpuMs(d.Tokens) * Scale(d) + host.ActivationRoundTrip.Ms(d.Tokens)) * factor;
                    break;
            }
        }
        Assert.True(plan.Decisions.Count(d => d.Placement == ExpertPlacement.Split) <= 1, "more than one split expert");
        NoOverlap(plan.Decisions.Where(d => d.Placement == ExpertPlacement.Cpu).Select(d => (d.StartMs, d.FinishMs)), "CPU");
        NoOverlap(plan.Decisions.Where(d => d.Placement != ExpertPlacement.Cpu).Select(d => (d.ComputeStartMs, GpuEnd(d, host))), "GPU");
        NoOverlap(plan.Decisions.Where(d => d.Placement is ExpertPlacement.Transfer or ExpertPlacement.Split)
            .Select(d => (d.StartMs, d.StartMs + (d.Placement == ExpertPlacement.Split ? 1 - d.CpuShare : 1) * host.TransferMs)), "copy engine");
        Assert.True(MaxInFlight(plan) <= slots, $"{MaxInFlight(plan)} transfers in flight with {slots} slots");
        Assert.Equal(Finish(plan, d => d.Placement == ExpertPlacement.Cpu) + splitCpuMs, plan.CpuLaneMs, 9);
        Assert.Equal(plan.Decisions.Where(d => d.Placement != ExpertPlacement.Cpu).Select(d => GpuEnd(d, host)).DefaultIfEmpty(0).Max(), plan.GpuLaneMs, 9);
    }

    private static double GpuEnd(ExpertDecision d, HardwareProfile host) =>
        d.Placement == ExpertPlacement.Split ? d.ComputeStartMs + (1 - d.CpuShare) * host.GpuExpert.Ms(d.Tokens) : d.FinishMs;

    private static double Finish(LayerPlan plan, Func<ExpertDecision, bool> lane) =>
        plan.Decisions.Where(lane).Select(d => d.FinishMs).DefaultIfEmpty(0).Max();

    private static void NoOverlap(IEnumerable<(double Start, double End)> intervals, string resource)
    {
        var sorted = intervals.OrderBy(i => i.Start).ToArray();
        for (int i = 1; i < sorted.Length; i++)
            Assert.True(sorted[i].Start >= sorted[i - 1].End - Eps, $"{resource} runs two things at once at {sorted[i].Start} ms");
    }
}
