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
}
