namespace Fiddler.Host.Cli;

/// <summary>The small MoE checkpoint shipped beside the app (made by DefaultModel/make_default_model.py).</summary>
public static class DefaultModel
{
    public static string Directory => Path.Combine(AppContext.BaseDirectory, "default-model");

    public static string Resolve(string? model) => model ?? (System.IO.Directory.Exists(Directory) ? Directory
        : throw new DirectoryNotFoundException($"no --model given and the embedded default is missing at {Directory}"));
}
