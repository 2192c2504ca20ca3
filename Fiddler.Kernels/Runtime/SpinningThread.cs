using System.Diagnostics;

namespace Fiddler.Kernels.Runtime;

/// <summary>
/// One long-lived thread that runs what it is handed, in submission order, and spins for <c>spin</c> after each item
/// before it blocks. For work on a decode step's critical path that arrives once per layer: the .NET thread pool's (or
/// a blocked thread's) wake-up cost ~50-130 µs per layer on the H100 host, where every core is busy while CPU experts
/// run. It starts the executor's CPU lanes (the lane's body joins the worker pool's parallel region as its caller) and
/// runs the critical actors' mailboxes (Fiddler.Actors' spinning executor). It costs the core it spins on.
/// </summary>
public sealed class SpinningThread : IDisposable
{
    private readonly Queue<(Action Body, TaskCompletionSource Done)> _queue = new();
    private readonly SemaphoreSlim _signal = new(0);
    private readonly Thread _thread;
    private readonly long _spinTicks;
    private volatile int _pending;
    private volatile bool _disposed;
    private int _sleeping;

    /// <param name="spin">How long the idle thread polls for the next item before it blocks (default 2 ms).</param>
    /// <param name="name">The thread's name.</param>
    public SpinningThread(TimeSpan? spin = null, string name = "fiddler-cpu-lane")
    {
        _spinTicks = (long)((spin ?? TimeSpan.FromMilliseconds(2)).TotalSeconds * Stopwatch.Frequency);
        _thread = new Thread(Loop) { IsBackground = true, Name = name };
        _thread.Start();
    }

    /// <summary>Runs <paramref name="body"/> on the thread; the task ends with it (its exception included).</summary>
    public Task Start(Action body)
    {
        ArgumentNullException.ThrowIfNull(body);
        // Continuations never run on this thread (an await would take it over); a thread blocked on the task is still
        // released directly as the item ends.
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

    /// <summary>Runs the items already submitted, then stops the thread (from any thread but its own).</summary>
    public void Dispose()
    {
        lock (_queue)
        {
            if (_disposed) return;
            _disposed = true;
        }
        if (Interlocked.Exchange(ref _sleeping, 0) == 1) _signal.Release();
        if (Thread.CurrentThread == _thread) return; // an item stopping its own thread: the loop ends after it
        _thread.Join();
        _signal.Dispose();
    }
}
