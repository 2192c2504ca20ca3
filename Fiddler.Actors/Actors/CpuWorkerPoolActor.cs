using System.Diagnostics;
using Akka.Actor;
using Fiddler.Actors.Protocols;
using Fiddler.Kernels.Offload;

namespace Fiddler.Actors.Actors;

/// <summary>
/// Owns the CPU expert backend (the SIMD kernel's dedicated worker pool, and libtorch's CPU path for large batches):
/// runs one layer's CPU experts per message. Runs on its own pinned thread so a layer's CPU work never waits for a
/// dispatcher thread.
/// </summary>
public sealed class CpuWorkerPoolActor : ReceiveActor
{
    public CpuWorkerPoolActor(ICpuExpertBackend backend)
    {
        Receive<RunCpuExperts>(m =>
        {
            try
            {
                long start = Stopwatch.GetTimestamp();
                backend.Run(m.Jobs);
                Sender.Tell(new CpuExpertsDone(Stopwatch.GetElapsedTime(start).TotalMilliseconds));
            }
            catch (Exception e)
            {
                Sender.Tell(new CpuExpertsFailed(e));
            }
        });
    }

    public static Props Props(ICpuExpertBackend backend) =>
        Akka.Actor.Props.Create(() => new CpuWorkerPoolActor(backend)).WithDispatcher("fiddler.cpu-dispatcher");
}
