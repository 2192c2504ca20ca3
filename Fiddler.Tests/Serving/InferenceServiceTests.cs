using Fiddler.Host.Serving;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Sampling;
using Xunit;

namespace Fiddler.Tests.Serving;

/// <summary>InferenceService called directly (no frontend): how a job's end reaches the engine.</summary>
public sealed class InferenceServiceTests
{
    [Fact]
    public async Task RunAsync_ConsumerLeavesEarly_CancelsTheEngineToken()
    {
        // An engine that stops only on its token (as the tests' Pump, or any decorator that reads ahead): disposing
        // its enumerator alone does not stop it. A consumer that leaves before its own token fires (gRPC completes a
        // call at its deadline before cancelling the call's token) must still stop it.
        var tokens = new List<CancellationToken>();
        await using var h = await ServingHarness.StartAsync(wrap: engine => (p, o, c) =>
        {
            if (o.MaxNewTokens > 1) lock (tokens) tokens.Add(c);
            return ServingLifecycleTests.Pump(engine(p, o, c), () => { });
        });
        var job = new CompletionJob(h.Service.Tokenize("Once upon a time"),
            new GenerationOptions { MaxNewTokens = 400, Sampling = SamplingOptions.Greedy, StopOnEos = false }, "early");

        await foreach (var e in h.Service.RunAsync(h.Service.Admit(), job, CancellationToken.None))
            if (e is TokenEvent) break;

        CancellationToken engineToken;
        lock (tokens) engineToken = Assert.Single(tokens);
        Assert.True(engineToken.IsCancellationRequested, "the engine's token was not cancelled when the consumer left");
        Assert.Equal(0, h.Service.QueueDepth);
    }

    [Theory]
    [InlineData(false)] // e.g. the sampler refusing NaN logits, or a weight copy refused: the request was valid
    [InlineData(true)]  // the generator's own request checks (Validate runs the same ones first)
    public async Task RunAsync_EngineThrowsMidStream_OnlyARequestErrorIsABadRequest(bool requestError)
    {
        int probes = 0; // one-token generations: the health probes
        await using var h = await ServingHarness.StartAsync(wrap: engine => (p, o, c) =>
        {
            if (o.MaxNewTokens == 1) { Interlocked.Increment(ref probes); return engine(p, o, c); }
            return FailAfterFirst(engine(p, o, c), requestError
                ? new GenerationRequestException("prompt token id 99999 is outside the vocabulary")
                : new ArgumentException("Logits contain NaN."));
        });
        int probesBefore = Volatile.Read(ref probes);
        var job = new CompletionJob(h.Service.Tokenize("Once upon a time"),
            new GenerationOptions { MaxNewTokens = 5, Sampling = SamplingOptions.Greedy, StopOnEos = false }, "mid-stream");
        int streamed = 0;
        var e = await Assert.ThrowsAnyAsync<Exception>(async () =>
        {
            await foreach (var ev in h.Service.RunAsync(h.Service.Admit(), job, CancellationToken.None))
                if (ev is TokenEvent) streamed++;
        });
        Assert.Equal(1, streamed);
        if (requestError)
        {
            Assert.Contains("outside the vocabulary", Assert.IsType<RequestException>(e).Message);
            Assert.Equal(probesBefore, Volatile.Read(ref probes)); // the engine is fine: no re-probe
        }
        else
        {
            Assert.IsNotType<RequestException>(e); // a 500 at the frontend, not a 400
            Assert.Contains("NaN", e.Message);
            // An engine failure: the service re-probes the engine (and reports ok again once the probe generates).
            for (int i = 0; i < 200 && (Volatile.Read(ref probes) == probesBefore || h.Service.Health.Status != "ok"); i++) await Task.Delay(25);
            Assert.True(Volatile.Read(ref probes) > probesBefore, "no re-probe after the engine failed");
        }
        Assert.Equal("ok", h.Service.Health.Status);
    }

    private static async IAsyncEnumerable<GeneratedToken> FailAfterFirst(IAsyncEnumerable<GeneratedToken> source, Exception failure)
    {
        await foreach (var t in source)
        {
            yield return t;
            if (t.Id >= 0) throw failure;
        }
    }

    [Fact]
    public async Task RunAsync_StreamEndsNormally_FinishIsNotCancelled()
    {
        await using var h = await ServingHarness.StartAsync();
        var job = new CompletionJob(h.Service.Tokenize("Once upon a time"),
            new GenerationOptions { MaxNewTokens = 3, Sampling = SamplingOptions.Greedy, StopOnEos = false }, "whole");
        CompletedEvent? done = null;
        await foreach (var e in h.Service.RunAsync(h.Service.Admit(), job, CancellationToken.None))
            if (e is CompletedEvent c) done = c;
        Assert.NotNull(done);
        Assert.Equal(FinishReason.Length, done.Finish);
        Assert.Equal(3, done.CompletionTokens);
    }

    [Fact]
    public async Task Tokenize_TextNoContextCouldHold_IsRefusedWithoutEncodingIt()
    {
        // Encoding runs before the queue admits a request: a multi-megabyte prompt must not cost seconds of the CPU the
        // experts use only to be refused for its length afterwards.
        await using var h = await ServingHarness.StartAsync();
        int most = h.Service.Model.ContextLength * 2 * 64; // above any bound the default model's tokenizer gives
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var e = Assert.Throws<RequestException>(() => h.Service.Tokenize(new string('a', most)));
        Assert.Contains("more than this model's context", e.Message);
        Assert.Equal(RequestErrorKind.ContextLength, e.Kind);
        Assert.True(watch.ElapsedMilliseconds < 100, $"refusing took {watch.ElapsedMilliseconds} ms");
        Assert.NotEmpty(h.Service.Tokenize("a short prompt")); // and ordinary text still encodes
    }
}
