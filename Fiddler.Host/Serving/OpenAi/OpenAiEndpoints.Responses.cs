using Fiddler.Kernels.Generation;
using Microsoft.AspNetCore.Http;

namespace Fiddler.Host.Serving.OpenAi;

// Running an admitted job and writing its result: one JSON body, or an SSE stream whose status the first event decides.
public static partial class OpenAiEndpoints
{
    private static async Task PlainAsync(HttpContext ctx, IInferenceService service, QueueTicket ticket, CompletionJob job, OpenAiResponse response)
    {
        var aborted = ctx.RequestAborted;
        CompletedEvent? done = null;
        try
        {
            await foreach (var e in service.RunAsync(ticket, job, aborted))
            {
                if (e is TokenEvent t) response.Add(t.Token);
                else if (e is CompletedEvent c) done = c;
            }
        }
        catch (Exception) when (aborted.IsCancellationRequested)
        {
            return;
        }
        catch (Exception e)
        {
            await OpenAiError.From(e).WriteAsync(ctx.Response);
            return;
        }
        if (aborted.IsCancellationRequested) return;
        if (done is null or { Finish: FinishReason.Cancelled })
        {
            // Not the client: shutdown cut the generation short.
            await new OpenAiError(503, "the generation was cancelled: the server is shutting down", OpenAiError.ServerError, null,
                "service_unavailable").WriteAsync(ctx.Response);
            return;
        }
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.Body.WriteAsync(response.Final(done), aborted);
    }

    private static async Task StreamAsync(HttpContext ctx, IInferenceService service, QueueTicket ticket, CompletionJob job, OpenAiResponse response)
    {
        var aborted = ctx.RequestAborted;
        await using var events = service.RunAsync(ticket, job, aborted).GetAsyncEnumerator(aborted);
        // The first event decides the status: a job the model refuses or a shutdown while queued is a plain error response.
        bool more;
        try { more = await events.MoveNextAsync(); }
        catch (Exception) when (aborted.IsCancellationRequested) { return; }
        catch (Exception e)
        {
            await OpenAiError.From(e).WriteAsync(ctx.Response);
            return;
        }
        if (aborted.IsCancellationRequested) return;
        if (more && events.Current is CompletedEvent { Finish: FinishReason.Cancelled })
        {
            await OpenAiError.Stopping().WriteAsync(ctx.Response);
            return;
        }

        var sse = new SseWriter(ctx.Response);
        try
        {
            await sse.StartAsync(aborted);
            if (response.FirstChunk() is { } first) await sse.WriteAsync(first, aborted);
            while (more)
            {
                switch (events.Current)
                {
                    case TokenEvent t when response.TokenChunk(t.Token) is { } chunk:
                        await sse.WriteAsync(chunk, aborted);
                        break;
                    case CompletedEvent { Finish: FinishReason.Cancelled }:
                        if (!aborted.IsCancellationRequested)
                            await sse.WriteAsync(new OpenAiError(503, "the generation was cancelled: the server is shutting down",
                                OpenAiError.ServerError, null, "service_unavailable").ToJson(), aborted);
                        break;
                    case CompletedEvent done:
                        await sse.WriteAsync(response.FinishChunk(done), aborted);
                        if (response.Request.IncludeUsage) await sse.WriteAsync(response.UsageChunk(done), aborted);
                        break;
                }
                more = await events.MoveNextAsync();
            }
            await sse.DoneAsync(aborted);
        }
        catch (Exception) when (aborted.IsCancellationRequested)
        {
            // The client left: disposing the enumerator stops the generation within a step.
        }
        catch (Exception e)
        {
            // Headers are out: the error goes in the stream, as vLLM does.
            try
            {
                await sse.WriteAsync(OpenAiError.From(e).ToJson(), aborted);
                await sse.DoneAsync(aborted);
            }
            catch (Exception) when (aborted.IsCancellationRequested) { }
        }
    }
}
