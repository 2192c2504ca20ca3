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
    /// <param name="countInStats">Marks the observations of the layers run from now on as counted or not (the offloading
    /// executor's scheduler bridge, for <see cref="Generate.CountInStats"/>); null without offloading.</param>
    public GpuDeviceActor(Generator generator, Action<bool>? countInStats = null)
    {
        Receive<Generate>(m =>
        {
            if (m.Ticket is { } ticket && !ticket.TryStart())
            {
                // Withdrawn by its caller while queued: the caller already ended the token stream and answered itself.
                Sender.Tell(new GenerationFailed(new OperationCanceledException("the generation was cancelled before it started", m.Cancel)));
                return;
            }
            try
            {
                countInStats?.Invoke(m.CountInStats);
                var result = generator.Run(m.Prompt, m.Options, t => m.Tokens.TryWrite(t), m.Cancel);
                m.Tokens.TryComplete();
                Sender.Tell(new GenerationCompleted(result));
            }
            catch (Exception e)
            {
                m.Tokens.TryComplete(e);
                Sender.Tell(new GenerationFailed(e));
            }
            finally
            {
                countInStats?.Invoke(true);
            }
        });
    }

    /// <summary>Runs on the pinned dispatcher declared in akka.hocon.</summary>
    public static Props Props(Generator generator, Action<bool>? countInStats = null) =>
        Akka.Actor.Props.Create(() => new GpuDeviceActor(generator, countInStats)).WithDispatcher("fiddler.gpu-dispatcher");
}
