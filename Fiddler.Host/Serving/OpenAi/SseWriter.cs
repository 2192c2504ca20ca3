using System.Buffers;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;

namespace Fiddler.Host.Serving.OpenAi;

/// <summary>Server-sent events as OpenAI streams them: <c>data: {json}\n\n</c> per chunk, flushed at once, ending with <c>data: [DONE]</c>.</summary>
public sealed class SseWriter(HttpResponse response)
{
    private static readonly byte[] Prefix = "data: "u8.ToArray();
    private static readonly byte[] Separator = "\n\n"u8.ToArray();
    private static readonly byte[] Done = "data: [DONE]\n\n"u8.ToArray();

    public async Task StartAsync(CancellationToken cancel)
    {
        response.StatusCode = 200;
        response.ContentType = "text/event-stream; charset=utf-8";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no"; // proxies (nginx) would otherwise hold the tokens back
        response.HttpContext.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        await response.StartAsync(cancel);
    }

    public async Task WriteAsync(byte[] json, CancellationToken cancel)
    {
        var body = response.BodyWriter;
        body.Write(Prefix);
        body.Write(json);
        body.Write(Separator);
        await body.FlushAsync(cancel);
    }

    public async Task DoneAsync(CancellationToken cancel)
    {
        response.BodyWriter.Write(Done);
        await response.BodyWriter.FlushAsync(cancel);
    }
}
