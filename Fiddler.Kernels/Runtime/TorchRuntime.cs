using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Fiddler.Kernels.Runtime;

/// <summary>The device asked for is not usable here; the message says why and what to do.</summary>
public sealed class DeviceUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Device selection and where CUDA libtorch comes from. CPU runs on the libtorch-cpu package the build carries.
/// CUDA runs on an existing PyTorch installation's libtorch (TorchSharp-cuda packages are often not served):
/// the process must start with that folder on LD_LIBRARY_PATH and without bundled CPU natives (deploy/bundle.sh builds
/// such an app; the Host re-executes itself with LD_LIBRARY_PATH set when needed).
/// </summary>
public static class TorchRuntime
{
    public const string LibTorchEnvironmentVariable = "FIDDLER_LIBTORCH";

    /// <summary>Parses "cpu", "cuda", "cuda:N"; initialises the CUDA backend when asked and checks it works.</summary>
    public static Device Initialize(string deviceName)
    {
        string name = deviceName.Trim().ToLowerInvariant();
        if (name == "cpu") return CPU;
        if (name != "cuda" && !name.StartsWith("cuda:", StringComparison.Ordinal))
            throw new DeviceUnavailableException($"unknown device '{deviceName}' (use cpu, cuda or cuda:N)");
        AllocatorConfig.ApplyDefault();
        try { InitializeDeviceType(DeviceType.CUDA); }
        catch (Exception e)
        {
            throw new DeviceUnavailableException("CUDA libtorch could not be loaded. Run the GPU bundle (deploy/bundle.sh) " +
                $"on a host with PyTorch+CUDA, or pass --libtorch DIR / set {LibTorchEnvironmentVariable}. ({e.Message})", e);
        }
        if (!cuda.is_available())
            throw new DeviceUnavailableException("CUDA was requested but torch.cuda.is_available() is false: no GPU, or this " +
                "build carries CPU-only libtorch (use deploy/bundle.sh for GPU hosts)");
        AttentionBackends.DisableCuDnn();
        var device = torch.device(name);
        if (device.index >= cuda.device_count())
            throw new DeviceUnavailableException($"{deviceName}: only {cuda.device_count()} CUDA device(s) present");
        return device;
    }

    /// <summary>
    /// The libtorch folder to use for CUDA: an explicit one, else $FIDDLER_LIBTORCH, else the one of the
    /// <c>python3</c> on PATH that can <c>import torch</c>. Null when none is found.
    /// </summary>
    public static string? FindLibTorch(string? explicitDir)
    {
        foreach (var dir in new[] { explicitDir, Environment.GetEnvironmentVariable(LibTorchEnvironmentVariable) })
            if (!string.IsNullOrWhiteSpace(dir))
                return File.Exists(Path.Combine(dir, "libtorch.so")) ? Path.GetFullPath(dir)
                    : throw new DeviceUnavailableException($"{dir}: no libtorch.so there");
        try
        {
            var psi = new ProcessStartInfo("python3", ["-c", "import torch,os;print(os.path.join(os.path.dirname(torch.__file__),'lib'))"])
            { RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = Process.Start(psi);
            if (p is null) return null;
            string output = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit(30_000);
            return p.ExitCode == 0 && File.Exists(Path.Combine(output, "libtorch.so")) ? output : null;
        }
        catch (System.ComponentModel.Win32Exception) { return null; } // no python3 on PATH
    }

    /// <summary>Parses "bfloat16" / "bf16" / "float32" / "fp32" / "float16" / "fp16" (HF spellings too).</summary>
    public static ScalarType ParseDType(string name) => name.Trim().ToLowerInvariant() switch
    {
        "bfloat16" or "bf16" or "torch.bfloat16" => ScalarType.BFloat16,
        "float32" or "fp32" or "float" or "torch.float32" => ScalarType.Float32,
        "float16" or "fp16" or "half" or "torch.float16" => ScalarType.Float16,
        _ => throw new ArgumentException($"unknown dtype '{name}' (use bfloat16, float16 or float32)"),
    };
}
