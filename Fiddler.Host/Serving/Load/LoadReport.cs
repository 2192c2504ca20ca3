using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Fiddler.Host.Serving.Load;

/// <summary>
/// What a load run measured. Latency covers answered (200) requests, send to last byte; time to first token
/// covers streamed ones; rejection latency covers the 429s (a full queue should say so at once). Throughput divides
/// by the wall time of the whole run.
/// </summary>
public sealed record LoadReport(
    string Url, string Model, string Endpoint, bool Stream, int Concurrency, int MaxTokens,
    int Requests, int Ok, int Rejected, int Failed, IReadOnlyDictionary<string, int> FailedBy,
    double ElapsedSeconds, double RequestsPerSecond, long CompletionTokens, double CompletionTokensPerSecond,
    LatencySummary LatencyMs, LatencySummary TimeToFirstTokenMs, LatencySummary RejectionLatencyMs)
{
    private static readonly JsonSerializerOptions JsonOptions = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.Strict,
    };

    public static LoadReport From(LoadOptions options, string model, IReadOnlyList<RequestSample> samples, TimeSpan elapsed)
    {
        var ok = samples.Where(s => s.Outcome == RequestOutcome.Ok).ToArray();
        var rejected = samples.Where(s => s.Outcome == RequestOutcome.Rejected).ToArray();
        var failedBy = new SortedDictionary<string, int>(StringComparer.Ordinal);
        foreach (var s in samples.Where(s => s.Outcome == RequestOutcome.Failed))
            failedBy[s.FailureKind ?? "unknown"] = failedBy.GetValueOrDefault(s.FailureKind ?? "unknown") + 1;
        double seconds = Math.Max(elapsed.TotalSeconds, 1e-9);
        long tokens = ok.Sum(s => (long)s.CompletionTokens);
        return new LoadReport(
            options.BaseUrl.AbsoluteUri, model, options.Chat ? "/v1/chat/completions" : "/v1/completions", options.Stream,
            options.Concurrency, options.MaxTokens,
            samples.Count, ok.Length, rejected.Length, samples.Count - ok.Length - rejected.Length, failedBy,
            Math.Round(elapsed.TotalSeconds, 3), Math.Round(samples.Count / seconds, 3), tokens, Math.Round(tokens / seconds, 3),
            Round(Percentiles.Summarize(ok.Select(s => s.LatencyMs))),
            Round(Percentiles.Summarize(ok.Where(s => s.TimeToFirstTokenMs is not null).Select(s => s.TimeToFirstTokenMs!.Value))),
            Round(Percentiles.Summarize(rejected.Select(s => s.LatencyMs))));
    }

    /// <summary>One JSON object, snake_case keys; empty latency sets have null percentiles.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// <summary>The human-readable table `fiddler loadgen` prints by default.</summary>
    public string ToTable()
    {
        var t = new StringBuilder();
        void Line(string label, string value) => t.Append(CultureInfo.InvariantCulture, $"{label,-26}{value}\n");
        Line("target", $"{Url} {Endpoint}{(Stream ? " (stream)" : "")} model={Model}");
        Line("load", $"{Concurrency} closed-loop clients, max_tokens={MaxTokens}");
        Line("requests", $"{Requests} in {ElapsedSeconds:F2} s");
        Line("  ok", Ok.ToString(CultureInfo.InvariantCulture));
        Line("  rejected (429)", Rejected.ToString(CultureInfo.InvariantCulture));
        Line("  failed", Failed == 0 ? "0" : $"{Failed} ({string.Join(", ", FailedBy.Select(kv => $"{kv.Key}: {kv.Value}"))})");
        Line("throughput", $"{RequestsPerSecond:F2} requests/s, {CompletionTokensPerSecond:F1} completion tokens/s ({CompletionTokens} tokens)");
        t.Append(CultureInfo.InvariantCulture, $"{"ms",-26}{"n",8}{"p50",10}{"p90",10}{"p99",10}{"max",10}\n");
        Row(t, "latency", LatencyMs);
        if (Stream) Row(t, "time to first token", TimeToFirstTokenMs);
        Row(t, "rejection latency (429)", RejectionLatencyMs);
        return t.ToString();
    }

    private static void Row(StringBuilder t, string label, LatencySummary s)
    {
        static string F(double? v) => v is { } x ? x.ToString("F1", CultureInfo.InvariantCulture) : "-";
        t.Append(CultureInfo.InvariantCulture, $"{label,-26}{s.Count,8}{F(s.P50),10}{F(s.P90),10}{F(s.P99),10}{F(s.Max),10}\n");
    }

    private static LatencySummary Round(LatencySummary s) => s with
    {
        P50 = R(s.P50), P90 = R(s.P90), P99 = R(s.P99), Max = R(s.Max),
    };

    private static double? R(double? v) => v is { } x ? Math.Round(x, 3) : null;
}
