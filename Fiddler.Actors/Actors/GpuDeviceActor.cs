using Akka.Actor;
using Fiddler.Actors.Protocols;
using Fiddler.Kernels.Generation;

namespace Fiddler.Actors.Actors;

/// <summary>
/// The one actor that submits GPU work: it runs prefill and decode (Kernels' <see cref="Generator"/>) for one request
/// at a time on its pinned thread, so every torch op, weight copy and stream event comes from one thread in order.
/// Requests queue in its mailbox. The weight stager is driven from here too: its copies must be ordered against
/// this thread's kernels on the default stream.
/// </summary>
public sealed class GpuDeviceActor : ReceiveActor
{
    public GpuDeviceActor(Generator generator)
    {
        Receive<Generate>(m =>
        {
            try
            {
                var result = generator.Run(m.Prompt, m.Options, t => m.Tokens.TryWrite(t), m.Cancel);
                m.Tokens.TryComplete();
                Sender.Tell(new GenerationCompleted(result));
            }
            catch (Exception e)
            {
                m.Tokens.TryComplete(e);
                Sender.Tell(new GenerationFailed(e));
            }
        });
    }

    /// <summary>Runs on the pinned dispatcher declared in akka.hocon.</summary>
    public static Props Props(Generator generator) =>
        Akka.Actor.Props.Create(() => new GpuDeviceActor(generator)).WithDispatcher("fiddler.gpu-dispatcher");
}
