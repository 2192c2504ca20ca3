using Fiddler.Kernels.Config;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Runtime;
using Fiddler.Kernels.Text;

namespace Fiddler.Host.Cli;

/// <summary>Turns the errors a user can cause (bad path, bad checkpoint, bad request) into one line and exit code 2.</summary>
public static class CliErrors
{
    public static int Run(Func<int> action)
    {
        try { return action(); }
        catch (Exception e) when (IsUserError(e))
        {
            Console.Error.WriteLine($"fiddler: error: {OneLine(e.Message)}");
            return 2;
        }
    }

    /// <summary>The message on one line: some (e.g. TorchSharp's native load errors) carry line breaks.</summary>
    public static string OneLine(string message) =>
        string.Join(" ", message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    public static bool IsUserError(Exception e) => e is ArgumentException or ModelConfigException or SafetensorsFormatException
        or SafetensorsTensorNotFoundException or CheckpointMismatchException or TokenizerLoadException
        or DeviceUnavailableException or Fiddler.Actors.Placement.PlacementException or FileNotFoundException or DirectoryNotFoundException or InvalidDataException;
}
