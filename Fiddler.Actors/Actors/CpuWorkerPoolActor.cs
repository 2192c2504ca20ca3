using System.Diagnostics;
using Akka.Actor;
using Fiddler.Actors.Protocols;
using Fiddler.Kernels.Offload;

namespace Fiddler.Actors.Actors;

/// <summary>
/// Owns the CPU expert backend (the SIMD kernel's dedicated worker pool, and libtorch's CPU path for large batches):
/// runs one layer's CPU experts per message. Runs on the spinning thread it shares with the router actor (akka.hocon's
/// lane-dispatcher), so a layer's CPU work never waits for a dispatcher thread; that thread joins the pool's parallel
/// region as its caller, and the actor path then takes no more cores than the direct one.
/// </summary>
public sealed class CpuWorkerPoolActor : ReceiveActor
{
    public CpuWorkerPoolActor(ICpuExpertBackend backend)
    {
        Receive<RunCpuExperts>(m =>
        {
            long start = Stopwatch.GetTimestamp();
            object reply;
            try
            {
                // Queued behind a layer that ran long, the caller may have given up on these: skip the stale work.
                m.Abandoned.ThrowIfCancellationRequested();
                backend.Run(m.Jobs);
                reply = new CpuExpertsDone(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
            catch (Exception e)
            {
                reply = new CpuExpertsFailed(e);
            }
            try { m.Finished?.Invoke(); }
            catch (Exception e) { reply = new CpuExpertsFailed(e); }
            if (m.Reply is { } slot) slot.TrySetResult(reply);
            else Sender.Tell(reply);
        });
    }

    public static Props Props(ICpuExpertBackend backend) =>
        Akka.Actor.Props.Create(() => new CpuWorkerPoolActor(backend)).WithDispatcher(RouterActor.LaneDispatcher);
}
