using System.Diagnostics;
using System.Runtime.InteropServices;
using Fiddler.Kernels.Runtime;

namespace Fiddler.Host.Cli;

/// <summary>
/// CUDA runs on PyTorch's libtorch, which the dynamic loader finds only through LD_LIBRARY_PATH set before the
/// process starts. When a CUDA device is asked for and that folder is not on it, run this same command again in a
/// child process with it set, streaming its output, and return its exit code. Termination signals are passed on, so
/// `fiddler serve --device cuda` still shuts down gracefully on SIGTERM (SIGINT from a terminal reaches the child by
/// itself: it is in the same process group).
/// </summary>
public static partial class CudaBootstrap
{
    private const string Marker = "FIDDLER_CUDA_BOOTSTRAPPED";

    /// <returns>The child's exit code, or null when this process should go on itself.</returns>
    public static int? ReexecIfNeeded(string device, string? libtorch)
    {
        if (!device.StartsWith("cuda", StringComparison.OrdinalIgnoreCase)) return null;
        if (Environment.GetEnvironmentVariable(Marker) == "1") return null;
        string? dir = TorchRuntime.FindLibTorch(libtorch);
        if (dir is null) return null; // Initialize() will explain that CUDA libtorch is not loadable
        string current = Environment.GetEnvironmentVariable("LD_LIBRARY_PATH") ?? "";
        if (current.Split(':').Contains(dir)) return null;
        string? exe = Environment.ProcessPath;
        if (exe is null) return null;
        var psi = new ProcessStartInfo(exe) { UseShellExecute = false };
        // Under `dotnet fiddler.dll`, ProcessPath is dotnet itself and the dll must come first.
        if (Path.GetFileNameWithoutExtension(exe) == "dotnet") psi.ArgumentList.Add(typeof(CudaBootstrap).Assembly.Location);
        foreach (var a in Environment.GetCommandLineArgs().Skip(1)) psi.ArgumentList.Add(a);
        psi.Environment["LD_LIBRARY_PATH"] = current.Length == 0 ? dir : dir + ":" + current;
        psi.Environment[Marker] = "1";
        // The handlers exist before the child does, so no SIGTERM falls between starting it and forwarding to it.
        var gate = new object();
        Process? child = null;
        bool terminated = false;
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, ctx =>
        {
            ctx.Cancel = true; // the parent stays until the child has drained and exited
            lock (gate)
            {
                terminated = true;
                if (child is { HasExited: false }) _ = Kill(child.Id, SigTerm);
            }
        });
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, ctx => ctx.Cancel = true);
        lock (gate)
        {
            if (terminated) return 128 + SigTerm; // asked to stop before anything started
            child = Process.Start(psi)!;
        }
        using (child)
        {
            child.WaitForExit();
            return child.ExitCode;
        }
    }

    private const int SigTerm = 15;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
