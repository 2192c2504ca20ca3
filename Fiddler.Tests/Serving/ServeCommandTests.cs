using System.Diagnostics;
using System.Net;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Fiddler.Host.Serving;
using Fiddler.Tests.Host;
using Fiddler.Tests.Support;
using Xunit;

namespace Fiddler.Tests.Serving;

/// <summary><c>fiddler serve</c> option errors in-process (exit code 2, one line), before any model is loaded.</summary>
[Collection(ConsoleCollection.Name)]
public sealed class ServeCommandErrorTests : IDisposable
{
    private readonly string _dir = TinyCheckpoint.TempDir();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static void AssertUserError(CliResult r, string expected) => CliAssert.UserError(r, StringComparison.OrdinalIgnoreCase, expected);

    [Theory]
    [InlineData("--port", "70000", "--port")]
    [InlineData("--grpc-port", "-5", "--grpc-port")]
    [InlineData("--host", "not-an-ip", "--host")]
    [InlineData("--queue-size", "0", "--queue-size")]
    [InlineData("--shutdown-timeout", "soon", "--shutdown-timeout")]
    [InlineData("--max-context", "1", "--max-context")]
    [InlineData("--otel", "jaeger", "--otel must be console, otlp or none")]
    [InlineData("--otlp-endpoint", "http://collector:4317", "--otlp-endpoint needs --otel otlp")]
    public void Serve_BadOption_ExitCode2(string option, string value, string expected) =>
        AssertUserError(CliHarness.Run("serve", option, value), expected);

    [Fact]
    public void Serve_ChatTemplateThatCannotRun_ExitCode2BeforeLoading()
    {
        foreach (string f in Directory.GetFiles(ServingHarness.ModelDir)) File.Copy(f, Path.Combine(_dir, Path.GetFileName(f)));
        string configPath = Path.Combine(_dir, "tokenizer_config.json");
        var config = JsonNode.Parse(File.ReadAllText(configPath))!;
        config["chat_template"] = "{% for m in messages %}{{ m.content }}{% endfor %}{{ 123456789012345678901234567890 }}";
        File.WriteAllText(configPath, config.ToJsonString());

        AssertUserError(CliHarness.Run("serve", "--model", _dir, "--port", "0"), "chat template");
    }

    [Theory]
    [InlineData("30s", 30)]
    [InlineData("2m", 120)]
    [InlineData("500ms", 0.5)]
    [InlineData("7", 7)]
    public void ParseDuration_Units_Seconds(string text, double seconds) =>
        Assert.Equal(TimeSpan.FromSeconds(seconds), ServeCommand.ParseDuration(text, "--x"));

    [Fact]
    public void ServeOptions_GrpcPortDefault_PortPlusOneOrPickedOrNone()
    {
        Assert.Equal(8081, new ServeOptions { Port = 8080 }.ResolvedGrpcPort);
        Assert.Equal(0, new ServeOptions { Port = 0 }.ResolvedGrpcPort);
        Assert.Null(new ServeOptions { GrpcPort = -1 }.ResolvedGrpcPort);
    }
}

/// <summary>The real binary: started with port 0, it prints its URL once ready, serves, and drains on SIGTERM with exit code 0.</summary>
[Collection(ServingTimingCollection.Name)]
public sealed class ServeProcessTests
{
    [DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int signal);

    private const int SigTerm = 15;

    [Fact]
    public async Task Serve_Subprocess_PrintsUrlServesAndExitsZeroOnSigterm()
    {
        var psi = new ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "fiddler"))
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        foreach (string a in (string[])["serve", "--port", "0", "--grpc-port", "0", "--shutdown-timeout", "5s"]) psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            string? line = await process.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(90));
            Assert.True(line is not null, $"no URL printed; stderr: {(process.HasExited ? await stderr : "")}");
            var urls = Regex.Matches(line!, @"http://127\.0\.0\.1:(\d+)").Select(m => m.Value).ToList();
            Assert.Equal(2, urls.Count); // HTTP, then the gRPC h2c endpoint
            Assert.NotEqual(urls[0], urls[1]);

            using var http = new HttpClient { BaseAddress = new Uri(urls[0]), Timeout = TimeSpan.FromSeconds(60) };
            using (var health = await http.GetAsync("/health")) Assert.Equal(HttpStatusCode.OK, health.StatusCode);
            using (var completion = await http.PostAsync("/v1/completions",
                new StringContent("""{"model":"default-model","prompt":"Once","max_tokens":2,"temperature":0}""")))
                Assert.Equal(HttpStatusCode.OK, completion.StatusCode);
            string metrics = await http.GetStringAsync("/metrics");
            Assert.Contains("fiddler_requests_total{", metrics);
            Assert.Contains("fiddler_frontend=\"openai\"", metrics);
            using (var channel = Grpc.Net.Client.GrpcChannel.ForAddress(urls[1]))
                Assert.Equal("default-model", (await new Fiddler.Host.Serving.Grpc.V1.Inference.InferenceClient(channel)
                    .ModelInfoAsync(new Fiddler.Host.Serving.Grpc.V1.ModelInfoRequest())).Id);

            Assert.Equal(0, kill(process.Id, SigTerm));
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            Assert.True(process.ExitCode == 0, $"exit code {process.ExitCode}; stderr: {await stderr}");
            Assert.Contains("fiddler: stopped", await stderr);
            Assert.Null(await process.StandardOutput.ReadLineAsync()); // the URL line was the only stdout
        }
        finally
        {
            if (!process.HasExited) process.Kill(entireProcessTree: true);
        }
    }
}

/// <summary>The context the served model admits, against the KV cache the offload planner reserved.</summary>
public sealed class ServeContextTests
{
    [Fact]
    public void ServedContext_OffloadWithoutMaxContext_IsTheReservedKvCache() =>
        // A chat request without max_tokens gets the rest of the context: it must not exceed what the budget reserved.
        Assert.Equal(ServeCommand.OffloadDefaultContext, ServeCommand.ServedContext(null, offload: true));

    [Theory]
    [InlineData(1000, true, 1000)]
    [InlineData(8192, true, 8192)]
    [InlineData(1000, false, 1000)]
    public void ServedContext_MaxContextGiven_IsUsed(int max, bool offload, int expected) =>
        Assert.Equal(expected, ServeCommand.ServedContext(max, offload));

    [Fact]
    public void ServedContext_NoOffloadNoCap_IsTheModels() => Assert.Null(ServeCommand.ServedContext(null, offload: false));
}

/// <summary>What a repeated SIGINT/SIGTERM to <c>fiddler serve</c> does.</summary>
public sealed class ShutdownSignalCounterTests
{
    [Fact]
    public void Next_SameSignalDeliveredTwiceAtOnce_DrainsWithoutSkippingGrace()
    {
        // A process-group SIGTERM under CudaBootstrap: the child gets it directly and forwarded by the parent.
        var now = TimeSpan.FromSeconds(100);
        var counter = new ShutdownSignalCounter(() => now);
        Assert.Equal(ShutdownSignalCounter.Step.Drain, counter.Next());
        now += TimeSpan.FromMilliseconds(2);
        Assert.Equal(ShutdownSignalCounter.Step.Ignored, counter.Next());
    }

    [Fact]
    public void Next_SecondSignalLater_SkipsGrace()
    {
        var now = TimeSpan.FromSeconds(100);
        var counter = new ShutdownSignalCounter(() => now);
        Assert.Equal(ShutdownSignalCounter.Step.Drain, counter.Next());
        now += ShutdownSignalCounter.Echo;
        Assert.Equal(ShutdownSignalCounter.Step.SkipGrace, counter.Next());
        now += TimeSpan.FromSeconds(5);
        Assert.Equal(ShutdownSignalCounter.Step.SkipGrace, counter.Next());
    }
}
