using Akka.Actor;
using Fiddler.Actors.Actors;
using Fiddler.Actors.Protocols;
using Fiddler.Actors.Runtime;
using Fiddler.Kernels.Experts;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.IO;
using Fiddler.Kernels.Loading;
using Fiddler.Kernels.Offload;
using Fiddler.Kernels.Sampling;
using Fiddler.Kernels.Verification;
using Xunit;
using static TorchSharp.torch;

namespace Fiddler.Tests.Actors.Runtime;

public class FiddlerRuntimeTests() : Akka.TestKit.Xunit2.TestKit(FiddlerRuntime.DefaultConfig())
{
    private static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    private static (int[] Prompt, long[] Expected) Reference(string model)
    {
        using var refs = new SafetensorsFile(Path.Combine(Fixture(model), FixtureParity.ReferenceFile));
        return (FixtureParity.Longs(refs, "p0.prompt_ids").Select(i => (int)i).ToArray(), FixtureParity.Longs(refs, "p0.greedy_tokens"));
    }

    private static LoadedModel LoadHostExperts(string model)
    {
        var config = Fiddler.Kernels.Config.MixtralConfig.Load(Path.Combine(Fixture(model), "config.json"));
        return ModelLoader.Load(Fixture(model), new LoadOptions(CPU, ScalarType.Float32, ExpertResidency.Where(config.NumHiddenLayers, config.NumLocalExperts, (_, _) => false)));
    }

    [Fact]
    public async Task GenerateAsync_OffloadedThroughActors_MatchesTransformersGreedyTokens()
    {
        using var loaded = LoadHostExperts("tiny-gqa2-top2-swa8");
        using var pool = new CpuWorkerPool(2);
        using var stager = new CopyStager(2, 64, loaded.Model.Config.IntermediateSize, ScalarType.Float32, CPU);
        var scheduler = new PlanParity.ForcedScheduler((layer, w) => (layer + w.Expert) % 2 == 0 ? ExpertRoute.Transfer : ExpertRoute.Cpu);
        await using var runtime = FiddlerRuntime.Start(loaded.Model, null, (scheduler, new SimdCpuBackend(pool), stager));
        var (prompt, expected) = Reference("tiny-gqa2-top2-swa8");

        var tokens = new List<long>();
        await foreach (var t in runtime.GenerateAsync(prompt, new GenerationOptions
            { MaxNewTokens = expected.Length, Sampling = SamplingOptions.Greedy, StopOnEos = false }))
            if (t.Id >= 0) tokens.Add(t.Id);

        Assert.Equal(expected, tokens);
        var stats = await runtime.LayerStatsAsync();
        Assert.Equal(loaded.Model.Config.NumHiddenLayers, stats.Length);
        Assert.All(stats, s => Assert.True(s.Steps > 0 && s.Cpu > 0 && s.Transfers > 0 && s.Resident == 0));
    }

    [Fact]
    public async Task RunAsync_BadRequest_ThrowsAndRuntimeKeepsServing()
    {
        using var loaded = ModelLoader.Load(Fixture("tiny-mha-top1"), new LoadOptions(CPU, ScalarType.Float32));
        await using var runtime = FiddlerRuntime.Start(loaded.Model, null);
        await Assert.ThrowsAsync<Fiddler.Kernels.Generation.GenerationRequestException>(() => runtime.RunAsync([1, 99999], new GenerationOptions { MaxNewTokens = 2 }));
        var (prompt, expected) = Reference("tiny-mha-top1");
        var result = await runtime.RunAsync(prompt, new GenerationOptions { MaxNewTokens = 8, Sampling = SamplingOptions.Greedy, StopOnEos = false });
        Assert.Equal(expected.Take(8), result.Tokens.Select(t => (long)t));
    }

    [Fact]
    public async Task RunAsync_CancelledAfterThreeTokens_StopsWithinAStepAndServesNext()
    {
        // The embedded default model: 500 new tokens fit its 512-token context and take far longer than a few steps.
        using var loaded = ModelLoader.Load(Path.Combine(AppContext.BaseDirectory, "default-model"), new LoadOptions(CPU));
        await using var runtime = FiddlerRuntime.Start(loaded.Model, loaded.Tokenizer);
        using var cts = new CancellationTokenSource();
        int seen = 0;
        var result = await runtime.RunAsync([1, 415, 1102], new GenerationOptions { MaxNewTokens = 500, StopOnEos = false },
            _ => { if (++seen == 3) cts.Cancel(); }, cts.Token);
        Assert.Equal(FinishReason.Cancelled, result.Finish);
        Assert.InRange(result.Tokens.Length, 3, 100);
        var next = await runtime.RunAsync([4, 5], new GenerationOptions { MaxNewTokens = 3, StopOnEos = false });
        Assert.Equal(3, next.Tokens.Length);
    }

    [Fact]
    public void RouterActor_DecideAndObserve_RoutesAndFeedsLayerActors()
    {
        var scheduler = new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu);
        var router = Sys.ActorOf(RouterActor.Props(scheduler, layers: 2), "router");
        var work = new[] { new ExpertWork(0, 1, true), new ExpertWork(3, 1, false) };
        router.Tell(new DecideLayer(1, work), TestActor);
        var routes = ExpectMsg<LayerRoutes>();
        Assert.Equal([ExpertRoute.Gpu, ExpertRoute.Cpu], routes.Routes);

        router.Tell(new LayerObserved(new LayerObservation(1, work, routes.Routes, 2.5, 3.0, 1, 0)));
        router.Tell(GetLayerStats.Instance, TestActor);
        var stats = ExpectMsg<LayerStats[]>();
        Assert.Equal(0, stats[0].Steps);
        Assert.Equal(1, stats[1].Steps);
        Assert.Equal(0.5, stats[1].HitRate);
        Assert.Single(scheduler.Observed);
    }

    [Fact]
    public async Task RouterActor_DecideWithReplySlot_AnswersThereAndReportsSchedulerFailures()
    {
        var router = Sys.ActorOf(RouterActor.Props(new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Transfer), layers: 1), "router-slot");
        var reply = new TaskCompletionSource<LayerRoutes>();
        router.Tell(new DecideLayer(0, [new ExpertWork(2, 1, false)], reply));
        Assert.Equal([ExpertRoute.Transfer], (await reply.Task.WaitAsync(TimeSpan.FromSeconds(5))).Routes);
        ExpectNoMsg(TimeSpan.FromMilliseconds(50)); // nothing to the sender

        var failing = Sys.ActorOf(RouterActor.Props(new PlanParity.ForcedScheduler((_, _) => throw new InvalidOperationException("no route on purpose")), layers: 1), "router-failing");
        var failed = new TaskCompletionSource<LayerRoutes>();
        failing.Tell(new DecideLayer(0, [new ExpertWork(2, 1, false)], failed));
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => failed.Task.WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Contains("on purpose", e.Message);
    }

    /// <summary>A layer actor whose statistics answer comes late (or never); it acknowledges resets at once.</summary>
    private sealed class SlowStatsLayer : ReceiveActor
    {
        public SlowStatsLayer(int layer, TimeSpan? delay)
        {
            Receive<GetLayerStats>(_ =>
            {
                if (delay is { } d)
                    Context.System.Scheduler.ScheduleTellOnce(d, Sender, new LayerStats(layer, 7, 0, 0, 0, 0, 0, 0), Self);
            });
            Receive<ResetLayerStats>(_ => Sender.Tell(Akka.Done.Instance));
        }
    }

    [Fact]
    public async Task RouterActor_StatisticsQuery_NeverHoldsUpRouting()
    {
        // Layer 1 answers its statistics 1.5 s late: meanwhile the router must still answer routing at once.
        var router = Sys.ActorOf(RouterActor.Props(new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu), layers: 2,
            layer => Props.Create(() => new SlowStatsLayer(layer, layer == 1 ? TimeSpan.FromMilliseconds(1500) : TimeSpan.Zero))), "router-slow-stats");
        var stats = router.Ask<LayerStats[]>(GetLayerStats.Instance, TimeSpan.FromSeconds(10));
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var routes = await router.Ask<LayerRoutes>(new DecideLayer(0, [new ExpertWork(1, 1, false)]), TimeSpan.FromSeconds(10));
        Assert.True(watch.ElapsedMilliseconds < 1000, $"routing waited {watch.ElapsedMilliseconds} ms behind a statistics query");
        Assert.Equal([ExpertRoute.Cpu], routes.Routes);
        Assert.False(stats.IsCompleted);
        Assert.Equal([7L, 7L], (await stats).Select(s => s.Steps));
        await router.Ask<Akka.Done>(ResetLayerStats.Instance, TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task RouterActor_LayerThatNeverAnswers_FailsTheQueryNotTheRouter()
    {
        var router = Sys.ActorOf(RouterActor.Props(new PlanParity.ForcedScheduler((_, _) => ExpertRoute.Cpu), layers: 2,
            layer => Props.Create(() => new SlowStatsLayer(layer, layer == 1 ? null : TimeSpan.Zero))), "router-mute-layer");
        // The asker hears the router's failure once the layer's 5 s are up, before its own 20 s timeout.
        var watch = System.Diagnostics.Stopwatch.StartNew();
        await Assert.ThrowsAsync<AskTimeoutException>(() => router.Ask<LayerStats[]>(GetLayerStats.Instance, TimeSpan.FromSeconds(20)));
        Assert.InRange(watch.Elapsed.TotalSeconds, 4, 15);
        var routes = await router.Ask<LayerRoutes>(new DecideLayer(0, [new ExpertWork(1, 1, false)]), TimeSpan.FromSeconds(5));
        Assert.Equal([ExpertRoute.Cpu], routes.Routes);
    }

    [Fact]
    public async Task CpuWorkerPoolActor_CallsFinishedBeforeItReplies()
    {
        var order = new List<string>();
        var pool = Sys.ActorOf(CpuWorkerPoolActor.Props(new RecordingBackend(order)), "cpu-pool-order");
        using var release = new ManualResetEventSlim();
        var asked = pool.Ask<object>(new RunCpuExperts([], () =>
        {
            lock (order) order.Add("finished");
            release.Wait(TimeSpan.FromSeconds(5)); // the reply must wait for this callback to return
        }), TimeSpan.FromSeconds(10));
        await Task.Delay(200);
        Assert.False(asked.IsCompleted, "the pool actor replied before Finished returned");
        release.Set();
        var reply = await asked;
        lock (order) order.Add("reply");
        Assert.IsType<CpuExpertsDone>(reply);
        Assert.Equal(["run", "finished", "reply"], order);
    }

    [Fact]
    public async Task CpuWorkerPoolActor_JobsGivenUpBeforeTheyStart_AreSkippedButFinishedIsCalled()
    {
        var order = new List<string>();
        var pool = Sys.ActorOf(CpuWorkerPoolActor.Props(new RecordingBackend(order)), "cpu-pool-abandoned");
        using var abandoned = new CancellationTokenSource();
        abandoned.Cancel(); // the caller timed out while the jobs waited in the pool's mailbox
        var slot = new TaskCompletionSource<object>();
        pool.Tell(new RunCpuExperts([], () => { lock (order) order.Add("finished"); }, slot, abandoned.Token));
        var reply = Assert.IsType<CpuExpertsFailed>(await slot.Task.WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.IsAssignableFrom<OperationCanceledException>(reply.Error);
        Assert.Equal(["finished"], order); // not run; the end still reported, so the caller can free what they used

        var ran = new TaskCompletionSource<object>();
        pool.Tell(new RunCpuExperts([], null, ran, CancellationToken.None));
        Assert.IsType<CpuExpertsDone>(await ran.Task.WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Equal(["finished", "run"], order);
    }

    [Fact]
    public async Task CpuWorkerPoolActor_RunsOnTheRoutersSpinningThread_AndCompletesTheReplySlotThere()
    {
        var order = new List<string>();
        // FiddlerRuntime's dispatcher for the pool and the router: one spinning-thread executor from akka.hocon.
        var pool = Sys.ActorOf(CpuWorkerPoolActor.Props(new RecordingBackend(order)), "cpu-pool-slot");
        (string? Name, int Id) runThread = default, replyThread = default;
        var slot = new TaskCompletionSource<object>();
        _ = slot.Task.ContinueWith(_ => replyThread = Current(), TaskContinuationOptions.ExecuteSynchronously);
        pool.Tell(new RunCpuExperts([], () => runThread = Current(), slot));
        Assert.IsType<CpuExpertsDone>(await slot.Task.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal("fiddler-lane-dispatcher", runThread.Name);
        Assert.Equal(runThread, replyThread); // completed inline on the pool's thread
        ExpectNoMsg(TimeSpan.FromMilliseconds(100)); // nothing sent to the sender as well

        // The router decides on that same thread: the actor path takes one thread beside the pool's workers, as the
        // direct path's CPU lane does.
        var scheduler = new ThreadRecordingScheduler();
        var router = Sys.ActorOf(RouterActor.Props(scheduler, 1), "router-thread");
        var routes = new TaskCompletionSource<LayerRoutes>();
        router.Tell(new DecideLayer(0, [new ExpertWork(0, 1, false)], routes));
        Assert.Single((await routes.Task.WaitAsync(TimeSpan.FromSeconds(10))).Routes);
        Assert.Equal(runThread, scheduler.Thread);

        static (string?, int) Current() => (Thread.CurrentThread.Name, Environment.CurrentManagedThreadId);
    }

    private sealed class ThreadRecordingScheduler : IExpertScheduler
    {
        public (string?, int) Thread { get; private set; }
        public IReadOnlyList<ExpertRoute> Decide(int layer, IReadOnlyList<ExpertWork> work)
        {
            Thread = (System.Threading.Thread.CurrentThread.Name, Environment.CurrentManagedThreadId);
            return [.. work.Select(_ => ExpertRoute.Cpu)];
        }
        public void Observe(LayerObservation observation) { }
    }

    [Fact]
    public async Task SpinningThreadExecutor_RunsOnItsNamedThread_AndRefusesASpinOutOfRange()
    {
        static Akka.Configuration.Config Executor(string spin) => Akka.Configuration.ConfigurationFactory.ParseString(
            $"executor = \"Fiddler.Actors.Runtime.SpinningThreadExecutorConfigurator, Fiddler.Actors\"\nspinning-thread-executor.spin-time = {spin}");
        var good = new SpinningThreadExecutorConfigurator(Executor("1ms"), Sys.Dispatchers.Prerequisites).Produce("fiddler.test-dispatcher");
        var ran = new TaskCompletionSource<string?>(TaskCreationOptions.RunContinuationsAsynchronously);
        good.Execute(new Runnable(() => ran.SetResult(Thread.CurrentThread.Name)));
        Assert.Equal("fiddler-test-dispatcher", await ran.Task.WaitAsync(TimeSpan.FromSeconds(10)));
        good.Shutdown();
        var bad = new SpinningThreadExecutorConfigurator(Executor("5s"), Sys.Dispatchers.Prerequisites);
        var e = Assert.Throws<Akka.Configuration.ConfigurationException>(() => bad.Produce("fiddler.bad"));
        Assert.Contains("spin-time", e.Message);
        var noCores = Akka.Configuration.ConfigurationFactory.ParseString("spinning-thread-executor.min-processors = 0")
            .WithFallback(Executor("1ms"));
        e = Assert.Throws<Akka.Configuration.ConfigurationException>(
            () => new SpinningThreadExecutorConfigurator(noCores, Sys.Dispatchers.Prerequisites).Produce("fiddler.bad"));
        Assert.Contains("min-processors", e.Message);
    }

    [Theory]
    [InlineData(16, 8, 20)] // the H100 host: spins
    [InlineData(8, 8, 20)]
    [InlineData(2, 8, 0)]   // CI's two cores: blocks at once
    [InlineData(2, 1, 20)]  // asked to spin anyway
    public void SpinningThreadExecutor_SpinsOnlyOnAHostWithEnoughProcessors(int processors, int minProcessors, int expectedMs) =>
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMs),
            SpinningThreadExecutorConfigurator.EffectiveSpin(TimeSpan.FromMilliseconds(20), minProcessors, processors));

    private sealed class Runnable(Action action) : Akka.Dispatch.IRunnable
    {
        public void Run() => action();
#if NET6_0_OR_GREATER
        public void Execute() => action();
#endif
    }

    private sealed class RecordingBackend(List<string> order) : ICpuExpertBackend
    {
        public string Name => "recording";
        public void Run(IReadOnlyList<CpuExpertJob> jobs) { lock (order) order.Add("run"); }
    }
    /// <summary>A tiny model with a 2^20-token context: a generation of <see cref="Endless"/> runs until the test stops it.
    /// Its checkpoint is deleted once loaded (the weights are copied into the model).</summary>
    private static LoadedModel LongContextModel()
    {
        string dir = Fiddler.Tests.Support.TinyCheckpoint.TempDir();
        try
        {
            Fiddler.Tests.Support.TinyCheckpoint.Write(dir, Fiddler.Tests.Support.TinyCheckpoint.Config() with { MaxPositionEmbeddings = 1 << 20 });
            return ModelLoader.Load(dir, new LoadOptions(CPU, ScalarType.Float32));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    private static readonly GenerationOptions Endless = new() { MaxNewTokens = (1 << 20) - 4, Sampling = SamplingOptions.Greedy, StopOnEos = false };

    [Fact]
    public async Task DisposeAsync_WithARunningAndAQueuedGeneration_EndsBothPromptlyAndRefusesNewOnes()
    {
        // A context long enough that the first generation cannot finish on its own before the runtime is disposed.
        using var loaded = LongContextModel();
        var runtime = FiddlerRuntime.Start(loaded.Model, null);
        var options = Endless;
        var started = new TaskCompletionSource();
        async Task<(string End, int Tokens)> Consume(bool first)
        {
            int n = 0;
            try
            {
                await foreach (var t in runtime.GenerateAsync([1, 2], options))
                    if (t.Id >= 0 && ++n == 3 && first) started.TrySetResult();
                return ("ended", n);
            }
            catch (ObjectDisposedException) { return ("disposed", n); }
        }
        var running = Consume(first: true);
        var queued = Consume(first: false); // waits in the device actor's mailbox behind the first
        await started.Task.WaitAsync(TimeSpan.FromSeconds(60));

        await runtime.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(60)); // no hang
        var (runningEnd, runningTokens) = await running.WaitAsync(TimeSpan.FromSeconds(30));
        var (queuedEnd, queuedTokens) = await queued.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Contains(runningEnd, new[] { "ended", "disposed" });
        Assert.InRange(runningTokens, 3, options.MaxNewTokens - 1); // cut short
        Assert.Contains(queuedEnd, new[] { "ended", "disposed" });
        Assert.Equal(0, queuedTokens); // never started
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => { await foreach (var _ in runtime.GenerateAsync([1], options)) { } });
        await Assert.ThrowsAsync<ObjectDisposedException>(() => runtime.RunAsync([1], options));
        await runtime.DisposeAsync(); // twice: a no-op
    }

    [Fact]
    public async Task QueuedGeneration_CancelledByItsCaller_EndsAtOnceAndNeverRuns()
    {
        using var loaded = LongContextModel();
        await using var runtime = FiddlerRuntime.Start(loaded.Model, null);
        var options = Endless;
        using var stopFirst = new CancellationTokenSource();
        var started = new TaskCompletionSource();
        int firstTokens = 0;
        var running = Task.Run(async () =>
        {
            await foreach (var t in runtime.GenerateAsync([1, 2], options, stopFirst.Token))
                if (++firstTokens == 3) started.TrySetResult();
        });
        await started.Task.WaitAsync(TimeSpan.FromSeconds(60));

        // A second request waits behind the first (which would run for hours); its caller gives up.
        using var stopQueued = new CancellationTokenSource();
        int queuedTokens = 0;
        var queued = Task.Run(async () => { await foreach (var _ in runtime.GenerateAsync([3, 4], options, stopQueued.Token)) queuedTokens++; });
        var ran = Task.Run(() => runtime.RunAsync([5], options with { MaxNewTokens = 2 }, cancel: stopQueued.Token));
        await Task.Delay(300);
        stopQueued.Cancel();
        // Both end at once, as a generation cancelled before its first token does: no tokens, finish "cancelled".
        await queued.WaitAsync(TimeSpan.FromSeconds(5));
        var withdrawn = await ran.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(FinishReason.Cancelled, withdrawn.Finish);
        Assert.Empty(withdrawn.Tokens);
        Assert.Equal(0, queuedTokens);
        Assert.False(running.IsCompleted, "the first generation should still be running");

        // The first still runs and stops on its own cancel; the withdrawn ones are skipped, and the runtime serves on.
        stopFirst.Cancel();
        await running.WaitAsync(TimeSpan.FromSeconds(30));
        var after = await runtime.RunAsync([1, 2], options with { MaxNewTokens = 3 }).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(3, after.Tokens.Length);
    }
}
