namespace Fiddler.Kernels.Text;

/// <summary>
/// A tokenizer file (<c>tokenizer.json</c>, <c>tokenizer_config.json</c>, chat template) is missing,
/// unreadable, not valid JSON, or rejected by the HF tokenizers native library.
/// The message always names the offending file; <see cref="Path"/> holds it too.
/// </summary>
public sealed class TokenizerLoadException : IOException
{
    public TokenizerLoadException(string path, string message, Exception? inner = null)
        : base($"{message} (file: {path})", inner)
    {
        Path = path;
    }

    /// <summary>The file that could not be loaded.</summary>
    public string Path { get; }
}
