using System.Text.Json;
using Fiddler.Host.Serving.Telemetry;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Sampling;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Fiddler.Host.Serving.OpenAi;

/// <summary>
/// The OpenAI-compatible routes over <see cref="IInferenceService"/>: /v1/chat/completions, /v1/completions (plain and
/// SSE), /v1/models, and /health. Request delegates only (no MVC, no reflection binding): each handler parses its body
/// with <see cref="OpenAiRequestParser"/> and maps every failure through <see cref="OpenAiError.From"/>.
/// </summary>
public static partial class OpenAiEndpoints
{
    /// <summary>Completions' default max_tokens when none is given (OpenAI's); chat defaults to the rest of the context.</summary>
    public const int DefaultCompletionTokens = 16;

    /// <summary>The fiddler.frontend tag of this frontend's requests.</summary>
    public const string FrontendName = "openai";

    private static readonly JsonDocumentOptions JsonLimits = new() { MaxDepth = 64 };

    public static void MapOpenAi(this IEndpointRouteBuilder app, IInferenceService service)
    {
        app.MapPost("/v1/chat/completions", ctx => CompleteAsync(ctx, service, OpenAiEndpoint.Chat));
        app.MapPost("/v1/completions", ctx => CompleteAsync(ctx, service, OpenAiEndpoint.Completion));
        app.MapGet("/v1/models", ctx => WriteJsonAsync(ctx, 200, w =>
        {
            w.WriteString("object", "list");
            w.WriteStartArray("data");
            w.WriteStartObject();
            ModelFields(w, service.Model);
            w.WriteEndObject();
            w.WriteEndArray();
        }));
        // Model ids may contain slashes ("mistralai/Mixtral-8x7B-Instruct-v0.1"): a catch-all segment.
        app.MapGet("/v1/models/{**id}", ctx =>
        {
            string? id = ctx.Request.RouteValues["id"] as string;
            return id == service.Model.Id ? WriteJsonAsync(ctx, 200, w => ModelFields(w, service.Model))
                : OpenAiError.ModelNotFound(id ?? "").WriteAsync(ctx.Response);
        });
        app.MapGet("/health", ctx =>
        {
            var health = service.Health;
            return WriteJsonAsync(ctx, health.Ready ? 200 : 503, w =>
            {
                w.WriteString("status", health.Status);
                if (health.Detail is not null) w.WriteString("detail", health.Detail);
                w.WriteNumber("queue_depth", service.QueueDepth);
            });
        });
    }

    private static async Task CompleteAsync(HttpContext ctx, IInferenceService service, OpenAiEndpoint endpoint)
    {
        // Before Admit: the telemetry decorator tags the request (and a refused one) with the frontend of this async flow.
        ServingTelemetry.CurrentFrontend = FrontendName;
        var aborted = ctx.RequestAborted;
        OpenAiResponse response;
        CompletionJob job;
        QueueTicket ticket;
        try
        {
            OpenAiRequest request;
            using (var body = await JsonDocument.ParseAsync(ctx.Request.Body, JsonLimits, aborted))
                request = OpenAiRequestParser.Parse(body.RootElement, endpoint);
            if (request.Model != service.Model.Id)
            {
                await OpenAiError.ModelNotFound(request.Model).WriteAsync(ctx.Response);
                return;
            }
            string id = (endpoint == OpenAiEndpoint.Chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
            job = ToJob(service, request, id);
            response = new OpenAiResponse(request, id, DateTimeOffset.UtcNow, service);
            ticket = service.Admit();
        }
        catch (Exception) when (aborted.IsCancellationRequested)
        {
            return; // the client left while we read its request
        }
        catch (Exception e)
        {
            await OpenAiError.From(e).WriteAsync(ctx.Response);
            return;
        }

        using (ticket)
        {
            if (response.Request.Stream) await StreamAsync(ctx, service, ticket, job, response);
            else await PlainAsync(ctx, service, ticket, job, response);
        }
    }

    internal static CompletionJob ToJob(IInferenceService service, OpenAiRequest request, string id)
    {
        int[] prompt = request.PromptIds
            ?? (request.Messages is { } messages
                // The rendered template already holds the BOS text: tokenize without adding special tokens (as HF's apply_chat_template).
                ? service.Tokenize(service.ApplyChatTemplate(messages), addSpecialTokens: false)
                : service.Tokenize(request.PromptText!, addSpecialTokens: true));
        int room = service.Model.ContextLength - prompt.Length;
        int maxTokens = request.MaxTokens
            ?? (request.Endpoint == OpenAiEndpoint.Chat ? Math.Max(1, room) : Math.Clamp(room, 1, DefaultCompletionTokens));
        return new CompletionJob(prompt, new GenerationOptions
        {
            MaxNewTokens = maxTokens,
            Sampling = new SamplingOptions(request.Temperature, request.TopK, request.TopP, request.Seed is long s ? unchecked((ulong)s) : null),
            StopStrings = request.Stop,
            StopOnEos = !request.IgnoreEos,
            TopLogprobs = request.Logprobs ? request.TopLogprobs : 0,
        }, id);
    }

    private static void ModelFields(Utf8JsonWriter w, ServedModel model)
    {
        w.WriteString("id", model.Id);
        w.WriteString("object", "model");
        w.WriteNumber("created", model.Created.ToUnixTimeSeconds());
        w.WriteString("owned_by", "fiddler");
        w.WriteNumber("max_model_len", model.ContextLength);
    }

    internal static async Task WriteJsonAsync(HttpContext ctx, int status, Action<Utf8JsonWriter> body)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, OpenAiError.WriterOptions))
        {
            w.WriteStartObject();
            body(w);
            w.WriteEndObject();
        }
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.Body.WriteAsync(buffer.ToArray(), ctx.RequestAborted);
    }
}
