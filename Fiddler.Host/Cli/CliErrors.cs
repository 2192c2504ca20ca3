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

    /// <summary>
    /// A command-line parse error in the user's words: System.CommandLine names the .NET type an option's value did not
    /// convert to ("… as expected type 'System.Int32'"); this says what the option takes instead. Other errors pass as
    /// they are.
    /// </summary>
    public static string ParseError(string message)
    {
        var m = System.Text.RegularExpressions.Regex.Match(message,
            @"^Cannot parse argument '(?<value>.*)' for option '(?<option>[^']+)' as expected type '(?<type>[\w.`\[\]]+)'\.?$");
        if (!m.Success) return message;
        // An optional option's type is Nullable`1[T]: say what T takes.
        string type = System.Text.RegularExpressions.Regex.Replace(m.Groups["type"].Value, @"^System\.Nullable`1\[(?<inner>[\w.]+)\]$", "${inner}");
        string takes = type switch
        {
            "System.Int32" => $"a whole number from {int.MinValue} to {int.MaxValue}",
            "System.Int64" => $"a whole number from {long.MinValue} to {long.MaxValue}",
            "System.UInt64" => $"a whole number from 0 to {ulong.MaxValue}",
            "System.Single" or "System.Double" => "a number (e.g. 0.7)",
            "System.Boolean" => "true or false",
            var t => $"a value of type {t[(t.LastIndexOf('.') + 1)..]}",
        };
        return $"option '{m.Groups["option"].Value}' takes {takes}, not '{m.Groups["value"].Value}'";
    }

    /// <summary>The message on one line: some (e.g. TorchSharp's native load errors) carry line breaks.</summary>
    public static string OneLine(string message) =>
        string.Join(" ", message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    public static bool IsUserError(Exception e) => e is ArgumentException or ModelConfigException or SafetensorsFormatException
        or SafetensorsTensorNotFoundException or CheckpointMismatchException or TokenizerLoadException
        or DeviceUnavailableException or Fiddler.Actors.Placement.PlacementException or FileNotFoundException or DirectoryNotFoundException or InvalidDataException
        or UnauthorizedAccessException // a model file the user cannot read: the message names the path
        or IOException; // a disk that is full or failing, a path that is a device: the message says which
}
