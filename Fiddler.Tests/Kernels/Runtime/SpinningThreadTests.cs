using Xunit;
using Fiddler.Kernels.Runtime;

namespace Fiddler.Tests.Kernels.Runtime;

public class SpinningThreadTests
{
    [Theory]
    [InlineData(2000)] // the thread spins between lanes
    [InlineData(0)]    // it blocks after every lane: exercises the sleep/wake handshake
    public async Task Start_ManyLanes_RunInOrderOnOneOtherThread(int spinMicroseconds)
    {
        using var lane = new SpinningThread(TimeSpan.FromMicroseconds(spinMicroseconds));
        var order = new List<int>();
        var threads = new HashSet<int>();
        var tasks = new List<Task>();
        for (int i = 0; i < 2000; i++)
        {
            int n = i;
            tasks.Add(lane.Start(() => { order.Add(n); threads.Add(Environment.CurrentManagedThreadId); }));
            if (i % 3 == 0) await tasks[^1].WaitAsync(TimeSpan.FromSeconds(10)); // some back to back, some after the thread went idle
        }
        await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromSeconds(30)); // a lost wake-up fails here instead of hanging
        Assert.Equal(Enumerable.Range(0, 2000), order);
        Assert.Single(threads);
        Assert.DoesNotContain(Environment.CurrentManagedThreadId, threads);
    }

    [Fact]
    public async Task Start_BodyThrows_FaultsItsTaskOnly()
    {
        using var lane = new SpinningThread();
        var failed = lane.Start(() => throw new InvalidOperationException("lane 1"));
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => failed);
        Assert.Equal("lane 1", e.Message);
        int ran = 0;
        await lane.Start(() => ran = 1).WaitAsync(TimeSpan.FromSeconds(10)); // still usable
        Assert.Equal(1, ran);
    }

    [Fact]
    public async Task Dispose_RunsLanesAlreadyStarted_ThenRefusesNewOnes()
    {
        var lane = new SpinningThread(TimeSpan.Zero);
        int ran = 0;
        var gate = new ManualResetEventSlim();
        var first = lane.Start(() => gate.Wait());
        var second = lane.Start(() => Interlocked.Increment(ref ran));
        var disposing = Task.Run(lane.Dispose);
        gate.Set();
        await disposing.WaitAsync(TimeSpan.FromSeconds(10));
        await Task.WhenAll(first, second).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(1, ran);
        Assert.IsType<ObjectDisposedException>(Record.Exception(() => { _ = lane.Start(() => { }); })); // thrown by Start itself
    }

    [Fact]
    public async Task Dispose_WakesAThreadAsleepOnItsSemaphore()
    {
        var lane = new SpinningThread(TimeSpan.Zero); // blocks at once when idle
        await lane.Start(() => { }).WaitAsync(TimeSpan.FromSeconds(10));
        await Task.Delay(100);                       // long enough to be asleep
        var disposing = Task.Run(lane.Dispose);
        await disposing.WaitAsync(TimeSpan.FromSeconds(10)); // hangs (and fails) if the sleeping thread is never woken
    }
}
