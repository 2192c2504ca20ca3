using Grpc.Core;

namespace Fiddler.Host.Serving.Grpc;

/// <summary>The contract's exceptions as gRPC statuses (the same table as the HTTP frontend's 400/404/429/503).</summary>
internal static class GrpcErrors
{
    public static RpcException From(RequestException e) => new(new Status(
        e.Kind switch
        {
            RequestErrorKind.NotFound => StatusCode.NotFound,
            RequestErrorKind.ContextLength => StatusCode.OutOfRange,
            _ => StatusCode.InvalidArgument,
        },
        e.Param is null ? e.Message : $"{e.Param}: {e.Message}"));

    /// <summary>An engine failure (not the request's fault): INTERNAL with its message (the server logged it whole).</summary>
    public static RpcException EngineFailed(Exception e) =>
        new(new Status(StatusCode.Internal, $"engine failure ({e.GetType().Name}): {OpenAi.OpenAiError.FirstLine(e.Message)}"));

    public static RpcException QueueFull(QueueFullException e) => new(new Status(StatusCode.ResourceExhausted, e.Message));

    public static RpcException Stopping(ServiceStoppingException e) => new(new Status(StatusCode.Unavailable, e.Message));

    /// <summary>A generation the server cancelled because it is shutting down (the client did not ask).</summary>
    public static RpcException ShutdownCancelled() =>
        new(new Status(StatusCode.Unavailable, "the generation was cancelled: the server is shutting down"));

    /// <summary>The call was cancelled by the client or ran past its deadline; the status says which.</summary>
    public static RpcException Cancelled(ServerCallContext context) => context.Deadline <= DateTime.UtcNow
        ? new(new Status(StatusCode.DeadlineExceeded, "the deadline passed before the generation finished"))
        : new(new Status(StatusCode.Cancelled, "the call was cancelled"));
}
