using System.CommandLine;
using Fiddler.Kernels.Runtime;
using Fiddler.Kernels.Verification;

namespace Fiddler.Host.Cli;

/// <summary>
/// <c>fiddler verify --fixtures DIR --device cuda</c>: the Hugging Face parity checks of the test suite, runnable on a
/// GPU host from the bundle (which has no test runner). Exit code 1 when any check fails.
/// </summary>
public static class VerifyCommand
{
    public const double RelativeTolerance = 1e-4;

    public static Command Create()
    {
        var fixtures = new Option<string>("--fixtures") { Description = "Folder of fixture models (Fiddler.Tests/Fixtures)", Required = true };
        var device = new Option<string>("--device") { Description = "cpu, cuda or cuda:N", DefaultValueFactory = _ => "cpu" };
        var libtorch = new Option<string?>("--libtorch") { Description = "Folder of a CUDA libtorch" };
        var plans = new Option<bool>("--plans") { Description = "Also run every offload plan (CPU, SIMD, transfers, splits) against HF greedy tokens, and some against HF beam search" };
        var command = new Command("verify", "Check logits and greedy tokens against Hugging Face transformers fixtures");
        command.Add(fixtures); command.Add(device); command.Add(libtorch); command.Add(plans);
        command.SetAction(r =>
        {
            if (CudaBootstrap.ReexecIfNeeded(r.GetValue(device)!, r.GetValue(libtorch)) is int code) return code;
            var dev = TorchRuntime.Initialize(r.GetValue(device)!);
            var dirs = FixtureParity.ModelDirectories(r.GetValue(fixtures)!).ToList();
            if (dirs.Count == 0) throw new ArgumentException($"no fixture models (with {FixtureParity.ReferenceFile}) under {r.GetValue(fixtures)}");
            bool ok = true;
            Console.WriteLine($"device {dev}  tolerance {RelativeTolerance:G} relative");
            Console.WriteLine($"{"model",-22} {"p",2} {"prefill max|Δ|",15} {"prefill rel",12} {"steps rel",12} {"greedy",7} {"bf16 div@",9} {"bf16 top5",9}");
            foreach (var dir in dirs)
                foreach (var rep in FixtureParity.Check(dir, dev))
                {
                    bool pass = rep.PrefillRelative <= RelativeTolerance && rep.StepRelative <= RelativeTolerance && rep.GreedyEqual && rep.Bf16Top5Agree;
                    ok &= pass;
                    Console.WriteLine($"{rep.Model,-22} {rep.Prompt,2} {rep.PrefillMaxAbs,15:E2} {rep.PrefillRelative,12:E2} {rep.StepRelative,12:E2} " +
                        $"{(rep.GreedyEqual ? "same" : "DIFF"),7} {(rep.Bf16FirstDivergence < 0 ? "none" : rep.Bf16FirstDivergence.ToString()),9} " +
                        $"{(rep.Bf16Top5Agree ? "ok" : "FAIL"),9}{(rep.Detail.Length == 0 ? "" : "  " + rep.Detail)}");
                }
            if (r.GetValue(plans))
            {
                ok &= RunPlans("plan", "same tokens", dirs, PlanParity.Plans, (dir, residency, route) =>
                    (PlanParity.Check(dir, residency, route, dev, out long copied, out int cpuTokens), copied, cpuTokens));
                ok &= RunPlans("beams", "same beams", dirs.Where(d => File.Exists(Path.Combine(d, BeamFixture.FileName))), PlanParity.BeamPlans,
                    (dir, residency, route) => (PlanParity.CheckBeams(dir, residency, route, dev, out long copied, out int cpuTokens), copied, cpuTokens));
            }
            Console.WriteLine(ok ? "verify: all checks passed" : "verify: FAILED");
            return ok ? 0 : 1;
        });
        return command;
    }

    /// <summary>Runs <paramref name="check"/> for every plan on every model, one line each; true when all passed.</summary>
    private static bool RunPlans(string label, string pass, IEnumerable<string> dirs, IEnumerable<(string Residency, string Route)> plans,
        Func<string, string, string, (List<string> Failures, long Copied, int CpuTokens)> check)
    {
        bool ok = true;
        foreach (var dir in dirs)
            foreach (var (residency, route) in plans)
            {
                var (failures, copied, cpuTokens) = check(dir, residency, route);
                ok &= failures.Count == 0;
                Console.WriteLine($"{label} {Path.GetFileName(dir),-22} experts {residency,-4} route {route,-10} " +
                    $"{(failures.Count == 0 ? pass : "DIFF")}  (staged {copied / 1024.0:F0} KiB, {cpuTokens} CPU expert tokens)");
                foreach (var f in failures) Console.WriteLine("  " + f);
            }
        return ok;
    }
}
