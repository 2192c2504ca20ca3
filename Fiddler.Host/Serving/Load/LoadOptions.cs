using System.Globalization;
using System.Text.Json;

namespace Fiddler.Host.Serving.Load;

/// <summary>
/// One load run: <see cref="Concurrency"/> closed-loop clients (each sends its next request when its last one answered)
/// until <see cref="Requests"/> were sent or <see cref="Duration"/> passed (requests in flight then are waited for).
/// </summary>
public sealed record LoadOptions
{
    /// <summary>The server root, e.g. http://127.0.0.1:8080 (a trailing /v1 is accepted).</summary>
    public required Uri BaseUrl { get; init; }
    public int Concurrency { get; init; } = 8;
    /// <summary>Total requests to send; ignored when <see cref="Duration"/> is set.</summary>
    public int Requests { get; init; } = 64;
    public TimeSpan? Duration { get; init; }
    public int MaxTokens { get; init; } = 32;
    public bool Stream { get; init; }
    /// <summary>POST /v1/chat/completions with one user message; otherwise POST /v1/completions with the prompt.</summary>
    public bool Chat { get; init; }
    public double Temperature { get; init; }
    public string? ApiKey { get; init; }
    /// <summary>The model id to ask for; null takes the first one GET /v1/models lists.</summary>
    public string? Model { get; init; }
    public IReadOnlyList<string> Prompts { get; init; } = PromptSet.BuiltIn;
    /// <summary>A request still unanswered after this long counts as failed ("timeout").</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>Throws <see cref="ArgumentException"/> naming the flag for a value no run can use.</summary>
    public void Validate()
    {
        if (BaseUrl is not { IsAbsoluteUri: true } || (BaseUrl.Scheme != Uri.UriSchemeHttp && BaseUrl.Scheme != Uri.UriSchemeHttps))
            throw new ArgumentException($"--url must be an absolute http(s) URL, got '{BaseUrl}'");
        if (Concurrency < 1) throw new ArgumentException($"--concurrency must be at least 1, got {Concurrency}");
        if (Duration is null && Requests < 1) throw new ArgumentException($"--requests must be at least 1, got {Requests}");
        if (Duration is { } d && d <= TimeSpan.Zero) throw new ArgumentException($"--duration must be positive, got {d}");
        if (MaxTokens < 1) throw new ArgumentException($"--max-tokens must be at least 1, got {MaxTokens}");
        if (!double.IsFinite(Temperature) || Temperature < 0) throw new ArgumentException($"--temperature must be a number ≥ 0, got {Temperature}");
        if (Prompts.Count == 0) throw new ArgumentException("no prompts to send");
        if (RequestTimeout <= TimeSpan.Zero) throw new ArgumentException($"--timeout must be positive, got {RequestTimeout}");
    }

    /// <summary>"30s", "500ms", "2m", "1h" or plain seconds ("45", "1.5").</summary>
    public static TimeSpan ParseDuration(string text, string flag)
    {
        string t = text.Trim();
        (string number, double scaleMs) = t.EndsWith("ms", StringComparison.Ordinal) ? (t[..^2], 1.0)
            : t.EndsWith('s') ? (t[..^1], 1000.0)
            : t.EndsWith('m') ? (t[..^1], 60_000.0)
            : t.EndsWith('h') ? (t[..^1], 3_600_000.0)
            : (t, 1000.0);
        if (!double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double value) || value <= 0 || !double.IsFinite(value * scaleMs))
            throw new ArgumentException($"{flag} must be a positive duration like 30s, 500ms, 2m or 1h, got '{text}'");
        return TimeSpan.FromMilliseconds(value * scaleMs);
    }
}

/// <summary>The prompts a load run cycles through.</summary>
public static class PromptSet
{
    public static readonly IReadOnlyList<string> BuiltIn =
    [
        "The meaning of life is",
        "Write a haiku about autumn leaves.",
        "Explain in one paragraph why the sky is blue.",
        "List three uses of a paperclip:",
        "Once upon a time, in a small village by the sea,",
        "Translate to French: The weather is nice today.",
        "def fibonacci(n):",
        "Summarize the plot of Hamlet in two sentences.",
    ];

    /// <summary>
    /// One prompt per non-blank line: a JSON object line gives its "text" field (JSONL), any other line is the prompt
    /// itself. Throws <see cref="InvalidDataException"/> (with the line number) for a JSON line without a string "text".
    /// </summary>
    public static IReadOnlyList<string> Load(string path)
    {
        var prompts = new List<string>();
        int lineNumber = 0;
        foreach (string line in File.ReadLines(path))
        {
            lineNumber++;
            string trimmed = line.Trim();
            if (trimmed.Length == 0) continue;
            if (!trimmed.StartsWith('{')) { prompts.Add(line); continue; }
            try
            {
                using var doc = JsonDocument.Parse(trimmed);
                if (doc.RootElement.TryGetProperty("text", out var text) && text.ValueKind == JsonValueKind.String)
                    prompts.Add(text.GetString()!);
                else
                    throw new InvalidDataException($"{path}:{lineNumber}: a JSON line needs a string \"text\" field");
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{path}:{lineNumber}: not valid JSON ({e.Message})");
            }
        }
        if (prompts.Count == 0) throw new InvalidDataException($"{path}: no prompts (empty file)");
        return prompts;
    }
}
