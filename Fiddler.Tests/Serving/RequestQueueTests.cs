using Fiddler.Host.Serving;
using Xunit;

namespace Fiddler.Tests.Serving;

public sealed class RequestQueueTests
{
    private static readonly TimeSpan Soon = TimeSpan.FromSeconds(5);

    private static RequestQueue.Ticket Enter(RequestQueue queue)
    {
        Assert.Equal(RequestQueue.Admission.Admitted, queue.TryEnter(out var ticket));
        return ticket!;
    }

    [Fact]
    public void TryEnter_EmptyQueue_RunsAtOnce()
    {
        var queue = new RequestQueue(2);
        var ticket = Enter(queue);
        Assert.True(ticket.WaitTurnAsync(default).IsCompletedSuccessfully);
        Assert.True(ticket.IsRunning);
        Assert.Equal(1, queue.Count);
    }

    [Fact]
    public void TryEnter_AtCapacity_AnswersFullWithoutWaiting()
    {
        var queue = new RequestQueue(2);
        Enter(queue);
        Enter(queue);
        Assert.Equal(RequestQueue.Admission.Full, queue.TryEnter(out var none));
        Assert.Null(none);
        Assert.Equal(2, queue.Count);
    }

    [Fact]
    public async Task Dispose_RunningTicket_GivesTurnsInFifoOrder()
    {
        var queue = new RequestQueue(4);
        var first = Enter(queue);
        var second = Enter(queue);
        var third = Enter(queue);
        var secondTurn = second.WaitTurnAsync(default);
        var thirdTurn = third.WaitTurnAsync(default);
        Assert.False(secondTurn.IsCompleted);

        first.Dispose();
        await secondTurn.WaitAsync(Soon);
        Assert.False(thirdTurn.IsCompleted);
        second.Dispose();
        await thirdTurn.WaitAsync(Soon);
        Assert.Equal(1, queue.Count);
    }

    [Fact]
    public async Task Dispose_WaitingTicket_LeavesQueueAndIsSkipped()
    {
        var queue = new RequestQueue(3);
        var running = Enter(queue);
        var leaving = Enter(queue);
        var last = Enter(queue);
        var leavingTurn = leaving.WaitTurnAsync(default);

        leaving.Dispose();
        Assert.Equal(2, queue.Count);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => leavingTurn.WaitAsync(Soon));
        running.Dispose();
        await last.WaitTurnAsync(default).WaitAsync(Soon);
        Assert.Equal(RequestQueue.Admission.Admitted, queue.TryEnter(out _)); // the place was given back
    }

    [Fact]
    public void Dispose_Twice_GivesBackOnePlace()
    {
        var queue = new RequestQueue(3);
        var a = Enter(queue);
        Enter(queue);
        Enter(queue);
        a.Dispose();
        a.Dispose();
        Assert.Equal(2, queue.Count);
    }

    [Fact]
    public async Task WaitTurnAsync_Cancelled_ThrowsAndKeepsPlaceUntilDisposed()
    {
        var queue = new RequestQueue(2);
        Enter(queue);
        var waiting = Enter(queue);
        using var cts = new CancellationTokenSource();
        var turn = waiting.WaitTurnAsync(cts.Token);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => turn);
        Assert.Equal(2, queue.Count);
        waiting.Dispose();
        Assert.Equal(1, queue.Count);
    }

    [Fact]
    public async Task BeginShutdown_KeepWaiting_RefusesNewAndServesAdmitted()
    {
        var queue = new RequestQueue(3);
        var running = Enter(queue);
        var waiting = Enter(queue);
        queue.BeginShutdown(failWaiting: false);

        Assert.Equal(RequestQueue.Admission.Stopping, queue.TryEnter(out _));
        running.Dispose();
        await waiting.WaitTurnAsync(default).WaitAsync(Soon);
    }

    [Fact]
    public async Task BeginShutdown_FailWaiting_WaitersThrowServiceStoppingAndQueueEmpties()
    {
        var queue = new RequestQueue(3);
        var running = Enter(queue);
        var waiting = Enter(queue);
        var turn = waiting.WaitTurnAsync(default);
        var empty = queue.WhenEmptyAsync();

        queue.BeginShutdown(failWaiting: true);
        await Assert.ThrowsAsync<ServiceStoppingException>(() => turn.WaitAsync(Soon));
        Assert.Equal(1, queue.Count);
        Assert.False(empty.IsCompleted);
        running.Dispose();
        await empty.WaitAsync(Soon);
        waiting.Dispose(); // already gone: harmless
        Assert.Equal(0, queue.Count);
    }

    [Fact]
    public void WhenEmptyAsync_NothingHeld_CompletesAtOnce() =>
        Assert.True(new RequestQueue(1).WhenEmptyAsync().IsCompletedSuccessfully);

    [Fact]
    public async Task TryEnter_ManyThreads_NeverAdmitsMoreThanCapacityAndRunsOneAtATime()
    {
        var queue = new RequestQueue(8);
        int running = 0, maxRunning = 0, admitted = 0, refused = 0;
        await Task.WhenAll(Enumerable.Range(0, 64).Select(_ => Task.Run(async () =>
        {
            if (queue.TryEnter(out var ticket) != RequestQueue.Admission.Admitted)
            {
                Interlocked.Increment(ref refused);
                return;
            }
            Interlocked.Increment(ref admitted);
            using (ticket)
            {
                await ticket!.WaitTurnAsync(default);
                int now = Interlocked.Increment(ref running);
                InterlockedMax(ref maxRunning, now);
                await Task.Yield();
                Interlocked.Decrement(ref running);
            }
        })));
        Assert.Equal(1, maxRunning);
        Assert.Equal(64, admitted + refused);
        Assert.Equal(0, queue.Count);
    }

    private static void InterlockedMax(ref int target, int value)
    {
        int seen;
        while ((seen = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, seen) != seen) { }
    }
}
