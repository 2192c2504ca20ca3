using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using Grpc.Core.Interceptors;

namespace Fiddler.Host.Serving.Grpc;

/// <summary>
/// <c>--api-key</c> on the gRPC port: calls must carry <c>authorization: Bearer KEY</c> metadata (as the OpenAI routes
/// need the header), else UNAUTHENTICATED. grpc.health.v1 stays open, as HTTP /health does, for probes.
/// </summary>
public sealed class ApiKeyInterceptor(string key) : Interceptor
{
    private readonly byte[] _expected = Encoding.UTF8.GetBytes(key);

    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context,
        UnaryServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(request, context);
    }

    public override Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        Check(context);
        return continuation(request, responseStream, context);
    }

    private void Check(ServerCallContext context)
    {
        if (context.Method.StartsWith("/grpc.health.v1.", StringComparison.Ordinal)) return;
        string header = context.RequestHeaders.GetValue("authorization") ?? "";
        if (header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)
            && CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header[7..].Trim()), _expected))
            return;
        throw new RpcException(new Status(StatusCode.Unauthenticated,
            header.Length == 0 ? "no API key: send 'authorization: Bearer KEY' metadata" : "incorrect API key provided"));
    }
}
