using System.CommandLine;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

/// <summary>
/// <c>fiddler cuda-selftest</c>: the CUDA runtime interop (Fiddler.Kernels.Cuda) on a real GPU. Loads libcudart next
/// to torch, stages a pinned expert into GPU slots with <see cref="WeightStager"/> and checks, on the GPU, that torch
/// ops ordered by the stager's events see exactly the source bytes (with negative controls showing the events are what
/// orders them); measures H2D bandwidth from each kind of host memory; times a GPU matmul loop, the transfers, and
/// both at once (overlap works when "both" ≈ max, not sum), and the same with CPU work. Exit code 0 only when every
/// check passes; the timings are reported, not judged.
/// </summary>
public static class CudaSelfTestCommand
{
    public static Command Create()
    {
        var mb = new Option<int>("--mb") { Description = "Expert size in MB (352 = Mixtral-8x7B: 3 × 4096×14336 bf16)", DefaultValueFactory = _ => 352 };
        var iterations = new Option<int>("--iterations") { Description = "Experts copied per timing", DefaultValueFactory = _ => 10 };
        var device = new Option<string>("--device") { Description = "cuda or cuda:N", DefaultValueFactory = _ => "cuda" };
        var libtorch = new Option<string?>("--libtorch") { Description = $"Folder of a CUDA libtorch (default: ${TorchRuntime.LibTorchEnvironmentVariable}, else python3's torch)" };
        var command = new Command("cuda-selftest", "Check CUDA streams, events and weight staging on this GPU; measure H2D bandwidth and overlap");
        foreach (var o in new Option[] { mb, iterations, device, libtorch }) command.Add(o);
        command.SetAction(r =>
        {
            if (CudaBootstrap.ReexecIfNeeded(r.GetValue(device)!, r.GetValue(libtorch)) is int code) return code;
            int megabytes = r.GetValue(mb), iters = r.GetValue(iterations);
            if (megabytes < 1) throw new ArgumentException("--mb must be ≥ 1");
            if (iters < 1) throw new ArgumentException("--iterations must be ≥ 1");
            var dev = TorchRuntime.Initialize(r.GetValue(device)!);
            if (dev.type != DeviceType.CUDA) throw new ArgumentException("cuda-selftest needs --device cuda or cuda:N");
            if (!CudaRuntime.IsAvailable) throw new DeviceUnavailableException("libcudart not available: " + CudaRuntime.UnavailableReason);
            const long hidden = 4096;
            long intermediate = Math.Max(128, (long)Math.Round(megabytes * 1e6 / (3.0 * hidden * 2) / 128) * 128);
            return new CudaSelfTest(dev, new ExpertShape(hidden, intermediate, ScalarType.BFloat16), iters).Run();
        });
        return command;
    }
}
