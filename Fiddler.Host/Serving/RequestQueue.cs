namespace Fiddler.Host.Serving;

/// <summary>
/// The bounded FIFO in front of the engine: at most <see cref="Capacity"/> requests admitted (running + waiting),
/// one running at a time (the GPU device actor runs one generation at a time anyway; holding the rest here keeps
/// them cancellable and countable, which the actor's mailbox is not). <see cref="TryEnter"/> answers at once;
/// a waiting request awaits a task (no polling). Thread-safe.
/// </summary>
public sealed class RequestQueue
{
    private readonly object _gate = new();
    private readonly LinkedList<Ticket> _waiting = new();
    private Ticket? _running;
    private bool _stopping;
    private TaskCompletionSource? _empty;

    public RequestQueue(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        Capacity = capacity;
    }

    public int Capacity { get; }

    /// <summary>Admitted and not yet given back (running + waiting).</summary>
    public int Count
    {
        get { lock (_gate) return CountLocked; }
    }

    public bool IsStopping
    {
        get { lock (_gate) return _stopping; }
    }

    private int CountLocked => _waiting.Count + (_running is null ? 0 : 1);

    /// <summary>Takes a place at the back of the queue, or says why not; never waits.</summary>
    public Admission TryEnter(out Ticket? ticket)
    {
        lock (_gate)
        {
            ticket = null;
            if (_stopping) return Admission.Stopping;
            if (CountLocked >= Capacity) return Admission.Full;
            ticket = new Ticket(this);
            if (_running is null) Grant(ticket);
            else ticket.Node = _waiting.AddLast(ticket);
            return Admission.Admitted;
        }
    }

    /// <summary>
    /// New requests are refused from now on (<see cref="Admission.Stopping"/>). With <paramref name="failWaiting"/>
    /// every waiting ticket leaves the queue and its <see cref="Ticket.WaitTurnAsync"/> throws
    /// <see cref="ServiceStoppingException"/>; the running one is left alone (its owner cancels it).
    /// </summary>
    public void BeginShutdown(bool failWaiting)
    {
        List<Ticket> failed = [];
        lock (_gate)
        {
            _stopping = true;
            if (failWaiting)
            {
                failed.AddRange(_waiting);
                _waiting.Clear();
                foreach (var t in failed) t.Node = null;
                SignalIfEmptyLocked();
            }
        }
        // Outside the lock: continuations run asynchronously anyway, but nothing user-visible happens under it.
        foreach (var t in failed) t.Turn.TrySetException(new ServiceStoppingException());
    }

    /// <summary>Completes when no ticket is held (at once if none is).</summary>
    public Task WhenEmptyAsync()
    {
        lock (_gate)
        {
            if (CountLocked == 0) return Task.CompletedTask;
            _empty ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _empty.Task;
        }
    }

    private void Release(Ticket ticket)
    {
        lock (_gate)
        {
            if (ReferenceEquals(_running, ticket))
            {
                _running = null;
                if (_waiting.First is { } first)
                {
                    _waiting.RemoveFirst();
                    first.Value.Node = null;
                    Grant(first.Value);
                }
            }
            else if (ticket.Node is { } node)
            {
                _waiting.Remove(node);
                ticket.Node = null;
                // A ticket that leaves while waiting never gets its turn: its awaiter (if any) sees cancellation.
                ticket.Turn.TrySetCanceled();
            }
            SignalIfEmptyLocked();
        }
    }

    private void Grant(Ticket ticket)
    {
        _running = ticket;
        ticket.Turn.TrySetResult();
    }

    private void SignalIfEmptyLocked()
    {
        if (CountLocked > 0 || _empty is null) return;
        _empty.TrySetResult();
        _empty = null;
    }

    public enum Admission { Admitted, Full, Stopping }

    /// <summary>A place in the queue. Disposing it (at any time, any number of times) gives the place back.</summary>
    public sealed class Ticket : QueueTicket
    {
        private readonly RequestQueue _queue;
        private int _disposed;

        internal Ticket(RequestQueue queue) => _queue = queue;

        // Continuations run asynchronously so that granting a turn under the queue's lock never runs a request's code there.
        internal TaskCompletionSource Turn { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        internal LinkedListNode<Ticket>? Node { get; set; }

        /// <summary>Whether this ticket holds the running place now.</summary>
        public bool IsRunning => Turn.Task.IsCompletedSuccessfully && _disposed == 0;

        /// <summary>
        /// Completes when this ticket is at the front. Throws <see cref="OperationCanceledException"/> when
        /// <paramref name="cancel"/> fires (the ticket keeps its place until disposed) or the ticket was disposed,
        /// and <see cref="ServiceStoppingException"/> when shutdown removed it.
        /// </summary>
        public Task WaitTurnAsync(CancellationToken cancel) => Turn.Task.WaitAsync(cancel);

        public override void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0) _queue.Release(this);
        }
    }
}
