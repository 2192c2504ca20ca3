using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;

namespace Fiddler.Tests.Serving;

/// <summary>
/// One case's answer: its status, or the exception the client saw instead (timeout, reset connection);
/// <see cref="DroppedWhileSending"/> when the server closed the connection before a large body (≥ 1 MiB) was all sent.
/// </summary>
public sealed record FuzzOutcome(string Name, int? Status, string? Exception, double Milliseconds, bool DroppedWhileSending = false);

/// <summary>
/// What a corpus run saw. A server passes when <see cref="ServerErrors"/> and <see cref="Exceptions"/> are empty and
/// <see cref="WellFormedStillWorks"/>: client input never gets a 5xx, never kills a connection unanswered, and the
/// server still serves afterwards. <see cref="DroppedWhileSending"/> is allowed: refusing an oversized body by closing
/// the connection mid-upload is legitimate HTTP/1.1 (Kestrel does it past MaxRequestBodySize).
/// </summary>
public sealed record FuzzReport(
    IReadOnlyList<FuzzOutcome> Outcomes, IReadOnlyDictionary<int, int> StatusCounts,
    IReadOnlyList<FuzzOutcome> ServerErrors, IReadOnlyList<FuzzOutcome> Exceptions, IReadOnlyList<FuzzOutcome> DroppedWhileSending,
    bool WellFormedStillWorks, string WellFormedDetail)
{
    public bool Passed => ServerErrors.Count == 0 && Exceptions.Count == 0 && WellFormedStillWorks;

    /// <summary>Counts by status, every ≥ 500 and exception by case name, and the final check: the text a failing assertion shows.</summary>
    public string Summary()
    {
        var s = new StringBuilder();
        s.AppendLine($"{Outcomes.Count} cases; status counts: {string.Join(", ", StatusCounts.Select(kv => $"{kv.Key}: {kv.Value}"))}");
        s.AppendLine($"≥ 500 answers: {ServerErrors.Count}");
        foreach (var o in ServerErrors.Take(50)) s.AppendLine($"  {o.Status} {o.Name}");
        s.AppendLine($"exceptions: {Exceptions.Count}");
        foreach (var o in Exceptions.Take(50)) s.AppendLine($"  {o.Name}: {o.Exception}");
        s.AppendLine($"closed while a large body was still being sent (allowed): {string.Join(", ", DroppedWhileSending.Select(o => o.Name))}");
        s.AppendLine($"well-formed request afterwards: {(WellFormedStillWorks ? "ok" : "FAILED")} ({WellFormedDetail})");
        return s.ToString();
    }
}

public static partial class MalformedRequests
{
    /// <summary>
    /// Sends every case (one at a time, in order) through <paramref name="client"/>, whose BaseAddress is the server
    /// root and whose default headers carry the api key if the server wants one, then one well-formed chat completion
    /// for the first model GET /v1/models lists (or <paramref name="model"/>).
    /// </summary>
    public static async Task<FuzzReport> RunAsync(HttpClient client, IEnumerable<MalformedCase> cases, string? model = null, TimeSpan? perCaseTimeout = null)
    {
        var root = client.BaseAddress ?? throw new ArgumentException("the client needs a BaseAddress (the server root)", nameof(client));
        var outcomes = new List<FuzzOutcome>();
        foreach (var c in cases)
        {
            long start = Stopwatch.GetTimestamp();
            using var deadline = new CancellationTokenSource(perCaseTimeout ?? TimeSpan.FromSeconds(60));
            using var request = c.ToRequest(root);
            try
            {
                using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, deadline.Token);
                // Read the answer whole (a stream included): a server that fails mid-body shows up as an exception.
                await response.Content.ReadAsByteArrayAsync(deadline.Token);
                outcomes.Add(new FuzzOutcome(c.Name, (int)response.StatusCode, null, Stopwatch.GetElapsedTime(start).TotalMilliseconds));
            }
            catch (Exception e) when (e is HttpRequestException or IOException or OperationCanceledException)
            {
                string what = e is OperationCanceledException ? "timeout" : $"{e.GetType().Name}: {e.Message}{(e.InnerException is { } inner ? $" ({inner.Message})" : "")}";
                bool dropped = e is not OperationCanceledException && !MalformedCase.BodySent(request) && c.Body.Length >= 1 << 20;
                outcomes.Add(new FuzzOutcome(c.Name, null, what, Stopwatch.GetElapsedTime(start).TotalMilliseconds, dropped));
            }
        }
        var (works, detail) = await WellFormedAsync(client, root, model);
        var counts = new SortedDictionary<int, int>();
        foreach (var o in outcomes.Where(o => o.Status is not null)) counts[o.Status!.Value] = counts.GetValueOrDefault(o.Status!.Value) + 1;
        return new FuzzReport(outcomes, counts, [.. outcomes.Where(o => o.Status >= 500)], [.. outcomes.Where(o => o.Exception is not null && !o.DroppedWhileSending)],
            [.. outcomes.Where(o => o.DroppedWhileSending)], works, detail);
    }

    private static async Task<(bool Works, string Detail)> WellFormedAsync(HttpClient client, Uri root, string? model)
    {
        try
        {
            if (model is null)
            {
                string models = await client.GetStringAsync(new Uri(root, "v1/models"));
                model = JsonNode.Parse(models)?["data"]?[0]?["id"]?.GetValue<string>() ?? DefaultModel;
            }
            string body = $$"""{"model":{{Quote(model)}},"messages":[{"role":"user","content":"Hello"}],"max_tokens":4,"temperature":0}""";
            using var response = await client.PostAsync(new Uri(root, "v1/chat/completions"), new StringContent(body, Encoding.UTF8, "application/json"));
            string text = await response.Content.ReadAsStringAsync();
            bool ok = response.IsSuccessStatusCode && JsonNode.Parse(text)?["choices"]?[0]?["message"]?["content"] is not null;
            return (ok, $"POST /v1/chat/completions model={model}: {(int)response.StatusCode} {(text.Length > 200 ? text[..200] + "…" : text)}");
        }
        catch (Exception e)
        {
            return (false, $"{e.GetType().Name}: {e.Message}");
        }
    }
}
