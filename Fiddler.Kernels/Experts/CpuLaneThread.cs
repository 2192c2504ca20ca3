using System.Diagnostics;

namespace Fiddler.Kernels.Experts;

/// <summary>
/// One long-lived thread that starts CPU lanes: the thread that queues GPU work hands it a lane and goes on at once.
/// Instead of the .NET thread pool (whose idle threads sleep, so every layer's lane began with a thread wake-up), it
/// spins for <c>spin</c> after each lane — long enough to bridge the GPU work between two MoE layers — and only then
/// blocks. The lane's body runs on this thread, which joins the worker pool's parallel region as its caller. Lanes run
/// one after another in submission order.
/// </summary>
public sealed class CpuLaneThread : IDisposable
{
    private readonly Queue<(Action Body, TaskCompletionSource Done)> _queue = new();
    private readonly SemaphoreSlim _signal = new(0);
    private readonly Thread _thread;
    private readonly long _spinTicks;
    private volatile int _pending;
    private volatile bool _disposed;
    private int _sleeping;

    /// <param name="spin">How long the idle thread polls for the next lane before it blocks (default 2 ms).</param>
    public CpuLaneThread(TimeSpan? spin = null)
    {
        _spinTicks = (long)((spin ?? TimeSpan.FromMilliseconds(2)).TotalSeconds * Stopwatch.Frequency);
        _thread = new Thread(Loop) { IsBackground = true, Name = "fiddler-cpu-lane" };
        _thread.Start();
    }

    /// <summary>Runs <paramref name="body"/> on the lane thread; the task ends with it (its exception included).</summary>
    public Task Start(Action body)
    {
        ArgumentNullException.ThrowIfNull(body);
        // Continuations never run on the lane thread (an await would take it over); a thread blocked on the task is
        // still released directly as the lane ends.
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_queue)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _queue.Enqueue((body, done));
        }
        Interlocked.Increment(ref _pending);
        // Dekker pairing with Loop: _pending was bumped (full fence) before this read.
        if (Volatile.Read(ref _sleeping) == 1 && Interlocked.Exchange(ref _sleeping, 0) == 1) _signal.Release();
        return done.Task;
    }

    private void Loop()
    {
        while (true)
        {
            if (_pending == 0)
            {
                long deadline = Stopwatch.GetTimestamp() + _spinTicks;
                while (_pending == 0 && !_disposed && Stopwatch.GetTimestamp() < deadline) Thread.SpinWait(8);
                while (_pending == 0 && !_disposed)
                {
                    Interlocked.Exchange(ref _sleeping, 1);
                    if (_pending != 0 || _disposed)
                    {
                        // A submitter that already cleared the flag has released (or will release) the semaphore.
                        if (Interlocked.Exchange(ref _sleeping, 0) == 0) _signal.Wait();
                        break;
                    }
                    _signal.Wait();
                }
            }
            (Action Body, TaskCompletionSource Done) item;
            lock (_queue)
            {
                if (_queue.Count == 0)
                {
                    if (_disposed) return;
                    continue;
                }
                item = _queue.Dequeue();
            }
            Interlocked.Decrement(ref _pending);
            try
            {
                item.Body();
                item.Done.SetResult();
            }
            catch (Exception e)
            {
                item.Done.SetException(e);
            }
        }
    }

    /// <summary>Runs the lanes already submitted, then stops the thread.</summary>
    public void Dispose()
    {
        lock (_queue)
        {
            if (_disposed) return;
            _disposed = true;
        }
        if (Interlocked.Exchange(ref _sleeping, 0) == 1) _signal.Release();
        _thread.Join();
        _signal.Dispose();
    }
}
