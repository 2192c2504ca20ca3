using System.Diagnostics;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;

namespace Fiddler.Kernels.Experts;

/// <summary>
/// A dedicated set of long-lived threads for the CPU expert kernels (not the .NET ThreadPool, whose injection and
/// queueing latency is too high for 32 parallel regions per token). A call runs on <see cref="Concurrency"/>
/// participants: the calling thread plus <c>Concurrency − 1</c> workers. Work items are handed out dynamically by an
/// atomic counter per phase, so a late or descheduled worker delays a region by at most one item.
/// Idle workers spin for <c>spin</c> (default 500 µs, meant to bridge the GPU work between two MoE layers), then block
/// on their own semaphore; waking a blocked worker costs a semaphore release on the calling thread. One region runs at a time; calls from several threads are serialised.
/// <see cref="ActiveConcurrency"/> can take fewer participants at run time (the others sleep without spinning), so one
/// process can compare worker counts on the same memory and placement.
/// </summary>
public sealed unsafe class CpuWorkerPool : IDisposable
{
    private readonly Worker[] _workers;
    private readonly object _callLock = new();
    private readonly long _spinTicks;
    private Job? _job;
    private long _generation;
    private volatile int _activeWorkers; // workers that take part in regions: _workers[0.._activeWorkers)
    private volatile bool _disposed;
    private void* _scratch;
    private nuint _scratchBytes;

    [ThreadStatic] private static CpuWorkerPool? t_runningBodyOf;

    // Region statistics since the last ResetStats (see Stats).
    private long _statRegions, _statSleepWakes, _statAbsent, _statJoinRegions, _statJoinTicks, _statPhases, _statTailTicks, _statLongTails;

    /// <param name="threads">Participants including the caller; 0 means <see cref="Environment.ProcessorCount"/>.</param>
    /// <param name="spin">How long an idle worker spins before it blocks.</param>
    public CpuWorkerPool(int threads = 0, TimeSpan? spin = null)
    {
        if (threads < 0) throw new ArgumentOutOfRangeException(nameof(threads), threads, "must be ≥ 0");
        Concurrency = threads == 0 ? Environment.ProcessorCount : threads;
        _spinTicks = (long)((spin ?? TimeSpan.FromMicroseconds(500)).TotalSeconds * Stopwatch.Frequency);
        _workers = new Worker[Concurrency - 1];
        _activeWorkers = _workers.Length;
        for (int i = 0; i < _workers.Length; i++)
        {
            var worker = new Worker { Index = i };
            worker.Thread = new Thread(() => WorkerLoop(worker)) { IsBackground = true, Name = $"fiddler-cpu-{i + 1}" };
            _workers[i] = worker;
            worker.Thread.Start();
        }
    }

    /// <summary>The participants the pool was built with (the caller and its workers).</summary>
    public int Concurrency { get; }

    /// <summary>
    /// The participants regions run on now, 1..<see cref="Concurrency"/> (initially all): the caller and the first
    /// <c>ActiveConcurrency − 1</c> workers; the rest sleep on their semaphores until it grows again. Takes effect from
    /// the next region; must not be set from inside a region's body (a worker would wait for its own region). Work items are still sized
    /// for <see cref="Concurrency"/> by kernels that size them per participant (small experts only), and libtorch's CPU
    /// backend keeps its own thread count.
    /// </summary>
    public int ActiveConcurrency
    {
        get => _activeWorkers + 1;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, Concurrency);
            ThrowIfInsideRegion("setting ActiveConcurrency");
            lock (_callLock) _activeWorkers = value - 1;
        }
    }

    /// <summary>
    /// Since the last <see cref="ResetStats"/>, over regions that had workers (<see cref="PoolStats"/>): a worker that had
    /// gone to sleep (spun past its spin time) needs a semaphore release to join; a worker descheduled while it holds an
    /// item shows as a long phase tail.
    /// </summary>
    public PoolStats Stats
    {
        get
        {
            double us = 1e6 / Stopwatch.Frequency;
            long joinRegions = Interlocked.Read(ref _statJoinRegions), phases = Interlocked.Read(ref _statPhases);
            return new PoolStats(Interlocked.Read(ref _statRegions), Interlocked.Read(ref _statSleepWakes), Interlocked.Read(ref _statAbsent),
                joinRegions == 0 ? 0 : Interlocked.Read(ref _statJoinTicks) * us / joinRegions,
                phases, phases == 0 ? 0 : Interlocked.Read(ref _statTailTicks) * us / phases, Interlocked.Read(ref _statLongTails));
        }
    }

    /// <summary>Phase tails longer than this count in <see cref="PoolStats.LongTails"/>.</summary>
    public static readonly TimeSpan LongTail = TimeSpan.FromMicroseconds(200);

    public void ResetStats()
    {
        Interlocked.Exchange(ref _statRegions, 0);
        Interlocked.Exchange(ref _statSleepWakes, 0);
        Interlocked.Exchange(ref _statAbsent, 0);
        Interlocked.Exchange(ref _statJoinRegions, 0);
        Interlocked.Exchange(ref _statJoinTicks, 0);
        Interlocked.Exchange(ref _statPhases, 0);
        Interlocked.Exchange(ref _statTailTicks, 0);
        Interlocked.Exchange(ref _statLongTails, 0);
    }

    /// <summary>Calls <paramref name="body"/>(i) for i in [0, count), in parallel; returns when all are done.</summary>
    /// <param name="grain">Indices claimed at a time; 0 picks about 8 claims per participant.</param>
    public void ParallelFor(int count, Action<int> body, int grain = 0) => ParallelFor(count, body, 0, null, grain);

    /// <summary>
    /// Two phases in one parallel region: every <paramref name="body1"/> call completes before any
    /// <paramref name="body2"/> call starts (a barrier on completed items, not on arrived threads). The first exception
    /// thrown by a body skips the remaining items and is rethrown here.
    /// </summary>
    public void ParallelFor(int count1, Action<int> body1, int count2, Action<int>? body2, int grain = 0)
    {
        ArgumentNullException.ThrowIfNull(body1);
        ArgumentOutOfRangeException.ThrowIfNegative(count1);
        ArgumentOutOfRangeException.ThrowIfNegative(count2);
        if (count2 > 0) ArgumentNullException.ThrowIfNull(body2);
        if (t_runningBodyOf == this) throw new InvalidOperationException("nested ParallelFor on the same CpuWorkerPool");
        lock (_callLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (count1 + count2 == 0) return;
            int active = _activeWorkers + 1;
            var job = new Job(count1, body1, count2, body2,
                grain > 0 ? grain : Math.Max(1, count1 / (8 * active)), grain > 0 ? grain : Math.Max(1, count2 / (8 * active)), active - 1);
            if (active > 1) Publish(job);
            Participate(job);
            WaitFinished(job);
            if (active > 1) Account(job);
            if (job.Error is not null) ExceptionDispatchInfo.Throw(job.Error);
        }
    }

    /// <summary>A 64-byte aligned buffer owned by the pool, reused across calls; valid while the caller holds <see cref="CallLock"/>.</summary>
    internal void* Scratch(nuint bytes)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (bytes > _scratchBytes)
        {
            NativeMemory.AlignedFree(_scratch);
            _scratch = null;
            _scratchBytes = 0;
            _scratch = NativeMemory.AlignedAlloc(bytes, 64);
            _scratchBytes = bytes;
        }
        return _scratch;
    }

    /// <summary>Held (re-entrantly) by every region; kernels hold it across their setup and region to own <see cref="Scratch"/>.</summary>
    internal object CallLock => _callLock;

    /// <summary>Throws when called from inside one of this pool's work items: taking <see cref="CallLock"/> there would
    /// wait for the region that runs the caller, forever.</summary>
    internal void ThrowIfInsideRegion(string what)
    {
        if (t_runningBodyOf == this) throw new InvalidOperationException($"{what} from inside a work item of the same CpuWorkerPool");
    }

    public void Dispose()
    {
        ThrowIfInsideRegion("Dispose");
        lock (_callLock)
        {
            if (_disposed) return;
            _disposed = true;
            Interlocked.Increment(ref _generation);
            foreach (var w in _workers) Wake(w);
            foreach (var w in _workers) w.Thread.Join();
            NativeMemory.AlignedFree(_scratch);
            _scratch = null;
            _scratchBytes = 0;
        }
    }

    private void Publish(Job job)
    {
        job.Stamps.PublishedAt = Stopwatch.GetTimestamp();
        Volatile.Write(ref _job, job);
        Interlocked.Increment(ref _generation);
        int woken = 0;
        for (int i = 0; i < job.Workers; i++) woken += Wake(_workers[i]) ? 1 : 0;
        job.Stamps.SleepWakes = woken;
    }

    private void Account(Job job)
    {
        ref var t = ref job.Stamps;
        int joined = Volatile.Read(ref t.Joined);
        Interlocked.Increment(ref _statRegions);
        Interlocked.Add(ref _statSleepWakes, t.SleepWakes);
        Interlocked.Add(ref _statAbsent, job.Workers - joined); // woken too late to find an item: not in the join mean
        if (joined > 0)
        {
            Interlocked.Increment(ref _statJoinRegions);
            Interlocked.Add(ref _statJoinTicks, Math.Max(0, Volatile.Read(ref t.LastJoinAt) - t.PublishedAt));
        }
        AccountPhase(Volatile.Read(ref t.Claimed1), Volatile.Read(ref t.Done1At));
        AccountPhase(Volatile.Read(ref t.Claimed2), Volatile.Read(ref t.Done2At));
    }

    /// <summary>A phase's tail, where both ends were stamped (a phase-1 end stamped after the region was accounted is left out).</summary>
    private void AccountPhase(long claimed, long done)
    {
        if (claimed == 0 || done < claimed) return;
        Interlocked.Increment(ref _statPhases);
        Interlocked.Add(ref _statTailTicks, done - claimed);
        if (done - claimed > LongTail.TotalSeconds * Stopwatch.Frequency) Interlocked.Increment(ref _statLongTails);
    }

    /// <summary>Wakes a worker; true when it was asleep on its semaphore.</summary>
    private static bool Wake(Worker w)
    {
        // Dekker pairing with WorkerLoop: the generation was bumped (full fence) before this read.
        if (Volatile.Read(ref w.Sleeping) == 1 && Interlocked.Exchange(ref w.Sleeping, 0) == 1) { w.Signal.Release(); return true; }
        return false;
    }

    private void WorkerLoop(Worker self)
    {
        t_runningBodyOf = this;
        long seen = 0;
        while (true)
        {
            long g = Volatile.Read(ref _generation);
            if (g == seen)
            {
                // A worker left out of regions (ActiveConcurrency) does not spin: it would take a core from those in it.
                long deadline = self.Index < _activeWorkers ? Stopwatch.GetTimestamp() + _spinTicks : 0;
                while ((g = Volatile.Read(ref _generation)) == seen && Stopwatch.GetTimestamp() < deadline) Thread.SpinWait(8);
                while (g == seen)
                {
                    Interlocked.Exchange(ref self.Sleeping, 1);
                    if ((g = Volatile.Read(ref _generation)) != seen)
                    {
                        // A publisher that already cleared our flag has released (or will release) the semaphore.
                        if (Interlocked.Exchange(ref self.Sleeping, 0) == 0) self.Signal.Wait();
                        break;
                    }
                    self.Signal.Wait();
                    g = Volatile.Read(ref _generation);
                }
            }
            seen = g;
            if (_disposed) return;
            // Only the workers the region was published for join it (a left-out one may have been spinning, or paused
            // here since an earlier region); a region completes on item counts, not on who took part.
            if (Volatile.Read(ref _job) is { } job && self.Index < job.Workers)
            {
                long joined = Stopwatch.GetTimestamp();
                ref long lastJoin = ref job.Stamps.LastJoinAt;
                long last = Volatile.Read(ref lastJoin);
                while (joined > last && Interlocked.CompareExchange(ref lastJoin, joined, last) != last) last = Volatile.Read(ref lastJoin);
                Interlocked.Increment(ref job.Stamps.Joined);
                Participate(job);
            }
        }
    }

    private void Participate(Job job)
    {
        var previous = t_runningBodyOf;
        t_runningBodyOf = this;
        try
        {
            RunPhase(job, ref job.Next1.Value, ref job.Done1.Value, job.Count1, job.Grain1, job.Body1, last: job.Count2 == 0, ref job.Stamps.Claimed1, ref job.Stamps.Done1At);
            if (job.Count2 == 0) return;
            // Barrier: the last phase-1 items are in flight on other threads. Pure spinning (no sched_yield syscalls, which
            // cost microseconds in a VM) unless it lasts long enough to suggest the straggler needs our core.
            for (int i = 0; Volatile.Read(ref job.Done1.Value) < job.Count1; i++)
            {
                if (i < 4096) Thread.SpinWait(1);
                else Thread.Yield();
            }
            RunPhase(job, ref job.Next2.Value, ref job.Done2.Value, job.Count2, job.Grain2, job.Body2!, last: true, ref job.Stamps.Claimed2, ref job.Stamps.Done2At);
        }
        finally { t_runningBodyOf = previous; }
    }

    private static void RunPhase(Job job, ref int next, ref int done, int count, int grain, Action<int> body, bool last,
        ref long claimedAt, ref long doneAt)
    {
        if (count == 0) return;
        while (true)
        {
            int start = Interlocked.Add(ref next, grain) - grain;
            if (start >= count) return;
            int end = Math.Min(start + grain, count);
            if (end == count) Volatile.Write(ref claimedAt, Stopwatch.GetTimestamp()); // the phase's last item handed out
            if (Volatile.Read(ref job.Error) is null)
            {
                try { for (int i = start; i < end; i++) body(i); }
                catch (Exception e) { Interlocked.CompareExchange(ref job.Error, e, null); }
            }
            long finishedAt = Stopwatch.GetTimestamp(); // before the count: the region may be accounted right after it
            if (Interlocked.Add(ref done, end - start) == count)
            {
                Volatile.Write(ref doneAt, finishedAt);
                if (last) Finish(job);
            }
        }
    }

    private static void Finish(Job job)
    {
        Interlocked.Exchange(ref job.Finished, 1);
        if (Volatile.Read(ref job.Waiting) == 1) lock (job) Monitor.PulseAll(job);
    }

    private void WaitFinished(Job job)
    {
        long deadline = Stopwatch.GetTimestamp() + _spinTicks;
        while (Volatile.Read(ref job.Finished) == 0)
        {
            if (Stopwatch.GetTimestamp() > deadline)
            {
                Interlocked.Exchange(ref job.Waiting, 1);
                lock (job) while (Volatile.Read(ref job.Finished) == 0) Monitor.Wait(job);
                return;
            }
            Thread.SpinWait(4);
        }
    }

    private sealed class Worker
    {
        public Thread Thread = null!;
        public readonly SemaphoreSlim Signal = new(0);
        public int Sleeping;
        public int Index;
    }

    private sealed class Job(int count1, Action<int> body1, int count2, Action<int>? body2, int grain1, int grain2, int workers)
    {
        public readonly int Count1 = count1, Count2 = count2, Grain1 = grain1, Grain2 = grain2;
        /// <summary>The workers (<c>_workers[0..Workers)</c>) that take part besides the caller.</summary>
        public readonly int Workers = workers;
        public readonly Action<int> Body1 = body1;
        public readonly Action<int>? Body2 = body2;
        // Each counter on its own cache lines: with all four on one line, an empty two-phase region took 12-14 µs on the
        // 16-core Xeon host; apart (and with the barrier spinning instead of yielding), 9 µs.
        public PaddedInt Next1, Done1, Next2, Done2;
        public int Finished, Waiting;
        public Exception? Error;
        public JobStamps Stamps;
    }

    /// <summary>
    /// A region's statistics (<see cref="Stats"/>), on cache lines of their own (the caller spins on <c>Finished</c>):
    /// when the caller published it, the latest worker's join and how many joined, each phase's last hand-out and end,
    /// and the workers the publication woke from their semaphores.
    /// </summary>
    [StructLayout(LayoutKind.Explicit, Size = 192)]
    private struct JobStamps
    {
        [FieldOffset(64)] public long PublishedAt;
        [FieldOffset(72)] public long LastJoinAt;
        [FieldOffset(80)] public long Claimed1;
        [FieldOffset(88)] public long Done1At;
        [FieldOffset(96)] public long Claimed2;
        [FieldOffset(104)] public long Done2At;
        [FieldOffset(112)] public int Joined;
        [FieldOffset(116)] public int SleepWakes;
    }

    [StructLayout(LayoutKind.Explicit, Size = 128)]
    private struct PaddedInt
    {
        [FieldOffset(64)] public int Value;
    }
}

/// <summary>
/// A <see cref="CpuWorkerPool"/>'s regions with workers since its stats were reset: how many; workers woken from their
/// semaphore; workers that joined no region before it ended (woken too late); the mean delay from publication to the
/// last joining worker (µs, over regions where one joined); phases measured and their mean tail, from the last item
/// handed out to the last item done (µs); and phases whose tail passed <see cref="CpuWorkerPool.LongTail"/>.
/// </summary>
public readonly record struct PoolStats(long Regions, long SleepWakes, long AbsentWorkers, double MeanLastJoinUs, long Phases,
    double MeanPhaseTailUs, long LongTails);
