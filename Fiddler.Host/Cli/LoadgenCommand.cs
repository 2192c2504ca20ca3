using System.CommandLine;
using Fiddler.Host.Serving.Load;

namespace Fiddler.Host.Cli;

/// <summary>
/// <c>fiddler loadgen</c>: closed-loop load against an OpenAI-compatible server (<c>fiddler serve</c> or any other),
/// then a table (or one JSON object with --json) of outcomes, throughput and latency percentiles. Exit code 0 when
/// every request was answered (200 or 429), <see cref="RequestsFailedExitCode"/> when any failed, 2 for bad flags or
/// a server it cannot reach.
/// </summary>
public static class LoadgenCommand
{
    public const int RequestsFailedExitCode = 3;

    public static Command Create()
    {
        var url = new Option<string>("--url") { Description = "Server root, e.g. http://127.0.0.1:8080", Required = true };
        var concurrency = new Option<int>("--concurrency") { Description = "Closed-loop clients", DefaultValueFactory = _ => 8 };
        var requests = new Option<int?>("--requests") { Description = "Requests to send in all (default 64)" };
        var duration = new Option<string?>("--duration") { Description = "Send for this long instead, e.g. 30s, 2m" };
        var maxTokens = new Option<int>("--max-tokens") { DefaultValueFactory = _ => 32 };
        var stream = new Option<bool>("--stream") { Description = "stream: true (SSE); adds time to first token" };
        var chat = new Option<bool>("--chat") { Description = "POST /v1/chat/completions instead of /v1/completions" };
        var prompts = new Option<string?>("--prompts") { Description = "File of prompts: JSONL {\"text\": ...} or plain lines" };
        var temperature = new Option<double>("--temperature") { DefaultValueFactory = _ => 0.0 };
        var apiKey = new Option<string?>("--api-key") { Description = "Sent as Authorization: Bearer KEY" };
        var model = new Option<string?>("--model") { Description = "Model id (default: the first GET /v1/models lists)" };
        var timeout = new Option<string>("--timeout") { Description = "Per-request deadline", DefaultValueFactory = _ => "300s" };
        var json = new Option<bool>("--json") { Description = "Print one JSON object instead of the table" };
        var command = new Command("loadgen", "Closed-loop load against an OpenAI-compatible server; latency and throughput report");
        foreach (var o in new Option[] { url, concurrency, requests, duration, maxTokens, stream, chat, prompts, temperature, apiKey, model, timeout, json })
            command.Add(o);
        command.SetAction(r =>
        {
            if (r.GetValue(requests) is not null && r.GetValue(duration) is not null) throw new ArgumentException("give --requests or --duration, not both");
            if (!Uri.TryCreate(r.GetValue(url), UriKind.Absolute, out var baseUrl)) throw new ArgumentException($"--url must be an absolute http(s) URL, got '{r.GetValue(url)}'");
            var options = new LoadOptions
            {
                BaseUrl = baseUrl,
                Concurrency = r.GetValue(concurrency),
                Requests = r.GetValue(requests) ?? 64,
                Duration = r.GetValue(duration) is { } d ? LoadOptions.ParseDuration(d, "--duration") : null,
                MaxTokens = r.GetValue(maxTokens),
                Stream = r.GetValue(stream),
                Chat = r.GetValue(chat),
                Temperature = r.GetValue(temperature),
                ApiKey = r.GetValue(apiKey),
                Model = r.GetValue(model),
                Prompts = r.GetValue(prompts) is { } file ? PromptSet.Load(file) : PromptSet.BuiltIn,
                RequestTimeout = LoadOptions.ParseDuration(r.GetValue(timeout)!, "--timeout"),
            };
            var report = Run(options);
            Console.Write(r.GetValue(json) ? report.ToJson() + "\n" : report.ToTable());
            return report.Failed == 0 ? 0 : RequestsFailedExitCode;
        });
        return command;
    }

    private static LoadReport Run(LoadOptions options)
    {
        using var generator = new LoadGenerator(options);
        // Ctrl+C stops the run early and still prints what finished.
        using var stop = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; stop.Cancel(); };
        Console.CancelKeyPress += onCancel;
        try { return generator.RunAsync(stop.Token).GetAwaiter().GetResult(); }
        catch (HttpRequestException e)
        {
            // Only the model lookup throws this (each load request's failure is counted instead).
            throw new ArgumentException($"cannot list models at {options.BaseUrl} ({CliErrors.OneLine(e.Message)}); is the server up? (--model skips this call)");
        }
        finally { Console.CancelKeyPress -= onCancel; }
    }
}
