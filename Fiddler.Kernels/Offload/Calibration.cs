using System.Diagnostics;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.Modules;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Offload;

/// <summary>Measured times (ms) for one expert of a model's shape on this host, per token count: CPU times are the best
/// of their repeats, device, transfer and round-trip times medians.</summary>
public sealed record CalibrationPoints(int[] Tokens, double[] CpuMs, double[] CpuTorchMs, double[] DeviceMs,
    double TransferMs, double[] RoundTripMs, string CpuBackend);

/// <summary>
/// Measures what the router's latency models need (`fiddler calibrate`): a CPU expert on each CPU backend, a device
/// expert, one expert's weight transfer, and the activation round trip, for each token count. Host experts are
/// cycled so the CPU never finds the weights in its cache (a Mixtral expert is 352 MB; L3 is ~300 MB).
/// </summary>
public static class Calibration
{
    public static CalibrationPoints Measure(MixtralConfig c, ScalarType dtype, Device device, ICpuExpertBackend cpu,
        ICpuExpertBackend cpuTorch, IWeightStager? stager, int[] tokens, int repeats = 5, int hostExperts = 4)
    {
        using var noGrad = no_grad();
        bool pin = device.type == DeviceType.CUDA;
        var host = Enumerable.Range(0, hostExperts).Select(_ => new MixtralBlockSparseTop2MLP(c, dtype, CPU, pin, fused: false,
            hugePages: HugePages.Policy == HugePagePolicy.All)).ToArray();
        using var onDevice = new MixtralBlockSparseTop2MLP(c, dtype, device);
        foreach (var p in host.SelectMany(e => e.parameters()).Concat(onDevice.parameters())) p.normal_(0, 0.02);
        try
        {
            int turn = 0;
            // CPU times are the best of the repeats, over two sweeps a moment apart: other load on the host (a noisy
            // neighbour, the kernel still settling 90 GB of fresh pages) only ever makes a run slower, and one
            // disturbed calibration would mislead every later routing decision on this host (it is cached).
            double[] Cpu(ICpuExpertBackend backend) => tokens.Select(n =>
            {
                using var x = randn([n, c.HiddenSize], ScalarType.Float32);
                using var y = empty_like(x);
                return Best(repeats, () => backend.Run([new CpuExpertJob(host[turn++ % host.Length], x, y)]));
            }).ToArray();
            double[] Sweep(ICpuExpertBackend backend)
            {
                var first = Cpu(backend);
                Thread.Sleep(200);
                return first.Zip(Cpu(backend), Math.Min).ToArray();
            }
            var cpuMs = Sweep(cpu);
            var cpuTorchMs = Sweep(cpuTorch);
            var deviceMs = tokens.Select(n =>
            {
                using var x = randn([n, c.HiddenSize], dtype, device);
                return Median(repeats, () => { using var y = onDevice.forward(x); Sync(device); });
            }).ToArray();
            double transferMs = stager is null ? double.PositiveInfinity : Median(repeats, () =>
            {
                var e = host[turn++ % host.Length];
                stager.Await(stager.Begin(0, e.Gate.Weight, e.Up.Weight, e.Down.Weight));
                Sync(device);
                stager.Release(0);
            });
            var roundTripMs = tokens.Select(n =>
            {
                using var x = randn([n, c.HiddenSize], dtype, device);
                return Median(repeats, () =>
                {
                    using var h = x.to(ScalarType.Float32, CPU);
                    using var back = h.to(dtype, device);
                    Sync(device);
                });
            }).ToArray();
            return new CalibrationPoints(tokens, cpuMs, cpuTorchMs, deviceMs, transferMs, roundTripMs, cpu.Name);
        }
        finally
        {
            foreach (var e in host)
            {
                Cuda.HostPinning.Release(e);
                e.Dispose();
            }
        }
    }

    private static void Sync(Device device)
    {
        if (device.type == DeviceType.CUDA) cuda.synchronize(device);
    }

    private static double Best(int repeats, Action action)
    {
        action(); // warm-up
        double best = double.PositiveInfinity;
        for (int i = 0; i < repeats; i++)
        {
            long t = Stopwatch.GetTimestamp();
            action();
            best = Math.Min(best, Stopwatch.GetElapsedTime(t).TotalMilliseconds);
        }
        return best;
    }

    private static double Median(int repeats, Action action)
    {
        action(); // warm-up
        var times = new double[repeats];
        for (int i = 0; i < repeats; i++)
        {
            long t = Stopwatch.GetTimestamp();
            action();
            times[i] = Stopwatch.GetElapsedTime(t).TotalMilliseconds;
        }
        Array.Sort(times);
        return times[repeats / 2];
    }
}
