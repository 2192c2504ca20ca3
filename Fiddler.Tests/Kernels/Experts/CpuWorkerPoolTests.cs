using Xunit;
using Fiddler.Kernels.Experts;

namespace Fiddler.Tests.Kernels.Experts;

public class CpuWorkerPoolTests
{
    [Fact]
    public void ParallelFor_EveryIndex_RunsExactlyOnce()
    {
        using var pool = new CpuWorkerPool(threads: 4);
        var hits = new int[10_007];
        pool.ParallelFor(hits.Length, i => Interlocked.Increment(ref hits[i]));
        Assert.All(hits, h => Assert.Equal(1, h));
    }

    [Fact]
    public void ParallelFor_BodyThrows_RethrowsOriginalException()
    {
        using var pool = new CpuWorkerPool(threads: 4);
        var e = Assert.Throws<InvalidOperationException>(() =>
            pool.ParallelFor(1000, i => { if (i == 637) throw new InvalidOperationException("body 637"); }, grain: 1));
        Assert.Equal("body 637", e.Message);
        int sum = 0;
        pool.ParallelFor(100, i => Interlocked.Add(ref sum, i)); // still usable afterwards
        Assert.Equal(4950, sum);
    }

    [Theory]
    [InlineData(500)] // workers spin between calls
    [InlineData(0)]   // workers block on every call: exercises the sleep/wake handshake
    public void ParallelFor_ManySmallCalls_AllComplete(int spinMicroseconds)
    {
        using var pool = new CpuWorkerPool(threads: 3, TimeSpan.FromMicroseconds(spinMicroseconds));
        long total = 0;
        for (int call = 0; call < 20_000; call++)
        {
            int count = call % 17;
            pool.ParallelFor(count, i => Interlocked.Add(ref total, i + 1), grain: 1);
        }
        long expected = Enumerable.Range(0, 20_000).Sum(c => (long)(c % 17) * (c % 17 + 1) / 2);
        Assert.Equal(expected, total);
    }

    [Fact]
    public void ParallelFor_TwoPhases_SecondSeesAllOfFirst()
    {
        using var pool = new CpuWorkerPool(threads: 4);
        for (int round = 0; round < 200; round++)
        {
            var first = new int[257];
            var seen = new int[64];
            pool.ParallelFor(first.Length, i => Volatile.Write(ref first[i], 1), seen.Length, j => seen[j] = first.Sum(), grain: 1);
            Assert.All(seen, s => Assert.Equal(first.Length, s));
        }
    }

    [Fact]
    public void ParallelFor_CallersOnSeveralThreads_AreSerialised()
    {
        using var pool = new CpuWorkerPool(threads: 3);
        long total = 0;
        Parallel.For(0, 4, _ =>
        {
            for (int i = 0; i < 500; i++) pool.ParallelFor(10, j => Interlocked.Add(ref total, j));
        });
        Assert.Equal(4 * 500 * 45, total);
    }

    [Fact]
    public void ParallelFor_NestedOnSamePool_Throws()
    {
        using var pool = new CpuWorkerPool(threads: 2);
        Assert.Throws<InvalidOperationException>(() => pool.ParallelFor(4, _ => pool.ParallelFor(1, _ => { }), grain: 1));
    }

    [Fact]
    public void ActiveConcurrency_Fewer_RunsOnThatManyThreadsThenAllAgain()
    {
        using var pool = new CpuWorkerPool(threads: 4, TimeSpan.FromMicroseconds(200));
        Assert.Equal(4, pool.ActiveConcurrency);
        HashSet<Thread> ThreadsOf(int items)
        {
            var seen = new System.Collections.Concurrent.ConcurrentDictionary<Thread, bool>();
            pool.ParallelFor(items, _ => { seen[Thread.CurrentThread] = true; Thread.SpinWait(2000); }, grain: 1);
            return seen.Keys.ToHashSet();
        }
        pool.ActiveConcurrency = 2;
        for (int round = 0; round < 50; round++) Assert.True(ThreadsOf(64).Count <= 2);
        pool.ActiveConcurrency = 1;
        Assert.Equal([Thread.CurrentThread], ThreadsOf(16));
        long sum = 0;
        pool.ParallelFor(1000, i => Interlocked.Add(ref sum, i), 10, _ => Interlocked.Increment(ref sum)); // two phases on the caller alone
        Assert.Equal(499_500 + 10, sum);

        pool.ActiveConcurrency = 4;
        using var arrived = new CountdownEvent(4); // one item per participant, each waiting for all: every worker is back
        var all = new System.Collections.Concurrent.ConcurrentDictionary<Thread, bool>();
        pool.ParallelFor(4, _ => { all[Thread.CurrentThread] = true; arrived.Signal(); Assert.True(arrived.Wait(TimeSpan.FromSeconds(10))); }, grain: 1);
        Assert.Equal(4, all.Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.ActiveConcurrency = 0);
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.ActiveConcurrency = 5);
    }

    [Fact]
    public void Dispose_AfterWork_JoinsWorkerThreadsAndRejectsCalls()
    {
        var pool = new CpuWorkerPool(threads: 4);
        var threads = new System.Collections.Concurrent.ConcurrentDictionary<Thread, bool>();
        using (var arrived = new CountdownEvent(pool.Concurrency))
        {
            // One item per participant, each waiting for all: every worker must run one.
            pool.ParallelFor(pool.Concurrency, _ =>
            {
                threads[Thread.CurrentThread] = true;
                arrived.Signal();
                Assert.True(arrived.Wait(TimeSpan.FromSeconds(10)));
            }, grain: 1);
        }
        Assert.Equal(pool.Concurrency, threads.Count);
        pool.Dispose();
        Assert.All(threads.Keys.Where(t => t != Thread.CurrentThread), t => Assert.False(t.IsAlive));
        Assert.Throws<ObjectDisposedException>(() => pool.ParallelFor(1, _ => { }));
        pool.Dispose(); // idempotent
    }

    [Fact]
    public void Constructor_SingleThread_RunsOnCaller()
    {
        using var pool = new CpuWorkerPool(threads: 1);
        var caller = Thread.CurrentThread;
        bool others = false;
        pool.ParallelFor(100, _ => others |= Thread.CurrentThread != caller);
        Assert.False(others);
    }

    [Fact]
    public void Stats_CountSleepingWakesAndALongTail()
    {
        // No spinning: a worker that finished its last region blocks on its semaphore at once, so a later publication
        // must wake it (at least one of the two has gone to sleep after the 20 ms pause).
        using var pool = new CpuWorkerPool(threads: 3, spin: TimeSpan.Zero);
        pool.ParallelFor(6, _ => { }, grain: 1);
        pool.ResetStats();
        Thread.Sleep(20);
        // The last phase-1 item runs 5 ms after the others are done: that phase's tail is ≥ 5 ms.
        pool.ParallelFor(4, i => { if (i == 3) Thread.Sleep(5); }, 4, _ => { }, grain: 1);
        var s = pool.Stats;
        Assert.Equal(1, s.Regions);
        Assert.InRange(s.SleepWakes, 1, 2);
        Assert.InRange(s.AbsentWorkers, 0, 2);
        Assert.InRange(s.Phases, 1, 2);
        Assert.True(s.MeanPhaseTailUs * s.Phases >= 4500, $"tails {s.MeanPhaseTailUs} µs over {s.Phases} phases");
        Assert.InRange(s.LongTails, 1, 2);
        pool.ResetStats();
        Assert.Equal(new PoolStats(0, 0, 0, 0, 0, 0, 0), pool.Stats);
        // A caller alone (no workers) is not a region with workers.
        using var single = new CpuWorkerPool(threads: 1);
        single.ParallelFor(3, _ => { });
        Assert.Equal(0, single.Stats.Regions);
    }

    [Fact]
    public async Task CallsBackIntoThePoolFromAWorkItem_ThrowInsteadOfDeadlocking()
    {
        using var pool = new CpuWorkerPool(threads: 3);
        var errors = new System.Collections.Concurrent.ConcurrentBag<Exception>();
        // Every item (on workers and on the caller) tries the calls that take the pool's call lock.
        var run = Task.Run(() => pool.ParallelFor(6, _ =>
        {
            try { pool.Dispose(); } catch (InvalidOperationException e) { errors.Add(e); }
            try { pool.ActiveConcurrency = 1; } catch (InvalidOperationException e) { errors.Add(e); }
            try { pool.ParallelFor(1, _ => { }); } catch (InvalidOperationException e) { errors.Add(e); }
        }, grain: 1));
        await run.WaitAsync(TimeSpan.FromSeconds(20)); // a TimeoutException here: a call from inside a work item deadlocked
        Assert.Equal(18, errors.Count);
        Assert.All(errors, e => Assert.Contains("same CpuWorkerPool", e.Message));
    }

    [Fact]
    public unsafe void Kernel_OnADisposedPool_ThrowsObjectDisposed()
    {
        var pool = new CpuWorkerPool(threads: 2);
        float[] w = new float[16 * 8], x = new float[8], y = new float[8];
        fixed (float* pw = w, px = x, py = y)
        {
            var weights = new ExpertWeights(pw, pw, pw, 8, 16, WeightType.F32);
            CpuExpertKernel.SwiGlu(pool, px, 1, weights, py); // allocates the pool's scratch
            pool.Dispose();
            var ptrs = (W: (IntPtr)pw, X: (IntPtr)px, Y: (IntPtr)py);
            Assert.Throws<ObjectDisposedException>(() =>
                CpuExpertKernel.SwiGlu(pool, (float*)ptrs.X, 1, new ExpertWeights((void*)ptrs.W, (void*)ptrs.W, (void*)ptrs.W, 8, 16, WeightType.F32), (float*)ptrs.Y));
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => CpuExpertKernel.ForceIsa = (CpuIsa)3);
    }
}
