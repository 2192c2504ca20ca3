using System.CommandLine;
using Fiddler.Actors.Engine;
using Fiddler.Actors.Placement;
using Fiddler.Actors.Scheduling;
using Fiddler.Kernels.Config;
using Fiddler.Kernels.Cuda;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Host.Cli;

/// <summary>
/// <c>fiddler calibrate</c>: measures this host's CPU expert, GPU expert, weight transfer and activation round-trip
/// times for a model's shape, fits the router's latency models and writes the cache file that `bench` and offloaded
/// generation load (they calibrate by themselves when the file is missing or was made for another host or model).
/// </summary>
public static class CalibrateCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Hugging Face directory (only config.json is read)" };
        var config = new Option<string?>("--config") { Description = "Named config, e.g. mixtral-8x7b" };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cuda" };
        var dtype = new Option<string?>("--dtype") { Description = "bfloat16 | float16 | float32 (default: the checkpoint's with --model, else bfloat16)" };
        var outFile = new Option<string>("--out") { DefaultValueFactory = _ => new EngineOptions { Device = CPU }.ProfilePath };
        var libtorch = new Option<string?>("--libtorch");
        var cpuThreads = new Option<int>("--cpu-threads")
        {
            Description = "CPU expert workers to calibrate for, as the engine will run them (default: logical CPUs − 1, as bench, " +
                "generate and serve). A profile is used only by an engine with the same count.",
        };
        var command = new Command("calibrate", "Measure and cache the router's latency models for this host");
        foreach (var o in new Option[] { model, config, device, dtype, outFile, libtorch, cpuThreads }) command.Add(o);
        command.SetAction(r =>
        {
            if (CudaBootstrap.ReexecIfNeeded(r.GetValue(device)!, r.GetValue(libtorch)) is int code) return code;
            if ((r.GetValue(model) is null) == (r.GetValue(config) is null)) throw new ArgumentException("give exactly one of --model or --config");
            var c = r.GetValue(model) is { } dir ? MixtralConfig.Load(Path.Combine(dir, "config.json")) : MixtralConfig.Named(r.GetValue(config)!);
            // As the engine loads the checkpoint: in its own dtype unless told otherwise (a profile is used only by an
            // engine of the same dtype).
            var dt = TorchRuntime.ParseDType(r.GetValue(dtype) ?? (r.GetValue(model) is not null ? c.CheckpointDtype : null) ?? "bfloat16");
            int threads = r.GetValue(cpuThreads);
            if (threads < 0 || threads > Environment.ProcessorCount)
                throw new ArgumentException($"--cpu-threads: {threads} is not in 1..{Environment.ProcessorCount} (0: the default)");
            string outPath = OutputFile.CheckWritable(r.GetValue(outFile)!, "--out", createFolder: true); // before minutes of measuring
            var dev = TorchRuntime.Initialize(r.GetValue(device)!);
            using var pool = new CpuWorkerPool(threads > 0 ? threads : Math.Max(1, Environment.ProcessorCount - 1));
            using IWeightStager stager = dev.type == DeviceType.CUDA
                ? new CudaWeightStager(new WeightStager(dev, new ExpertShape(c.HiddenSize, c.IntermediateSize, dt), 1))
                : new CopyStager(1, c.HiddenSize, c.IntermediateSize, dt, dev);
            var points = Calibration.Measure(c, dt, dev, new SimdCpuBackend(pool), new TorchCpuBackend(dev.type == DeviceType.CUDA ? pool.Concurrency : 0), stager, [1, 2, 4, 8, 16, 32, 64, 128, 256]);
            var shape = OffloadEngine.ShapeOf(c, dt);
            var profile = HardwareProfiles.FromCalibration(HardwareKey.ForThisHost(Fiddler.Kernels.Cuda.CudaRuntime.DeviceLabel(dev), shape, dt.ToString(), pool.Concurrency,
                Fiddler.Kernels.Experts.CpuKernelSettings.ProfileKey), points);
            profile.Save(outPath);
            Console.WriteLine("tokens   cpu simd ms   cpu torch ms   device ms   round trip ms");
            for (int i = 0; i < points.Tokens.Length; i++)
                Console.WriteLine($"{points.Tokens[i],6} {points.CpuMs[i],13:F3} {points.CpuTorchMs[i],14:F3} {points.DeviceMs[i],11:F3} {points.RoundTripMs[i],15:F3}");
            Console.WriteLine($"weight transfer per expert: {points.TransferMs:F3} ms → {r.GetValue(outFile)}");
            return 0;
        });
        return command;
    }
}
