using System.Net;
using Fiddler.Host.Serving.Telemetry;

namespace Fiddler.Host.Serving;

/// <summary>How the HTTP frontend listens (the engine side is <see cref="InferenceServiceOptions"/>).</summary>
public sealed record ServeOptions
{
    public const long DefaultMaxBodyBytes = 4 * 1024 * 1024;

    /// <summary>Address to bind: an IP, "localhost" (IPv4 loopback), or "*" / "0.0.0.0" for all interfaces.</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>The OpenAI HTTP port (Http1AndHttp2: without TLS that is HTTP/1.1 in practice); 0 picks a free one.</summary>
    public int Port { get; init; } = 8080;

    /// <summary>The HTTP/2-only (h2c) endpoint for gRPC: null means <see cref="Port"/> + 1 (a picked port when Port is 0),
    /// 0 picks one, -1 opens none.</summary>
    public int? GrpcPort { get; init; }

    /// <summary>When set, /v1/* requires <c>Authorization: Bearer {ApiKey}</c>.</summary>
    public string? ApiKey { get; init; }

    /// <summary>Request bodies above this are refused with 413.</summary>
    public long MaxBodyBytes { get; init; } = DefaultMaxBodyBytes;

    /// <summary>Where traces and metrics go besides /metrics (<c>--otel</c>, <c>--otlp-endpoint</c>).</summary>
    public TelemetryOptions Telemetry { get; init; } = new();

    /// <summary>Warnings and errors of ASP.NET Core on stderr (the CLI); tests keep it off.</summary>
    public bool LogToConsole { get; init; }

    public IPAddress Address => Host switch
    {
        "localhost" => IPAddress.Loopback, // one address: Kestrel cannot pick a port for "localhost" (both families)
        "*" or "0.0.0.0" => IPAddress.Any,
        "::" or "[::]" => IPAddress.IPv6Any,
        _ => IPAddress.TryParse(Host.Trim('[', ']'), out var ip) ? ip
            : throw new ArgumentException($"--host: '{Host}' is not an IP address, 'localhost' or '*'"),
    };

    /// <summary>The gRPC port to bind, or null for none.</summary>
    public int? ResolvedGrpcPort => GrpcPort switch
    {
        -1 => null,
        null => Port == 0 ? 0 : Port + 1,
        int p => p,
    };

    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new ArgumentException($"--port must be in 0..65535, got {Port}");
        if (ResolvedGrpcPort is < 0 or > 65535)
            throw new ArgumentException($"--grpc-port must be in 0..65535 or -1 (none), got {ResolvedGrpcPort}");
        if (ResolvedGrpcPort is int g && g != 0 && g == Port) throw new ArgumentException($"--grpc-port {g} is the HTTP port too");
        if (MaxBodyBytes < 1024) throw new ArgumentException($"the body size limit must be at least 1 KiB, got {MaxBodyBytes}");
        if (ApiKey is { } key && string.IsNullOrWhiteSpace(key)) throw new ArgumentException("--api-key must not be empty");
        _ = Address;
    }
}
