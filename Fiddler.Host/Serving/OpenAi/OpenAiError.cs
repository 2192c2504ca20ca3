using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Fiddler.Host.Serving.OpenAi;

/// <summary>An error in OpenAI's schema, <c>{"error":{"message","type","param","code"}}</c>, with its HTTP status.</summary>
public sealed record OpenAiError(int Status, string Message, string Type, string? Param = null, string? Code = null)
{
    public const string InvalidRequest = "invalid_request_error";
    public const string ServerError = "server_error";

    /// <summary>Text as is (no \u0027 for an apostrophe): the bodies are JSON for API clients, never embedded in HTML.</summary>
    public static readonly JsonWriterOptions WriterOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static OpenAiError NotFound(string message, string? code = "not_found") => new(404, message, InvalidRequest, null, code);

    public static OpenAiError ModelNotFound(string model) =>
        new(404, $"The model '{model}' does not exist or you do not have access to it.", InvalidRequest, "model", "model_not_found");

    public static OpenAiError Stopping() => new(503, new ServiceStoppingException().Message, ServerError, null, "service_unavailable");

    /// <summary>The error a client sees for an exception; anything unexpected is a 500 (a bug when the client caused it).</summary>
    public static OpenAiError From(Exception e) => e switch
    {
        RequestException { Kind: RequestErrorKind.NotFound } r => new(404, r.Message, InvalidRequest, r.Param, r.Code ?? "not_found"),
        RequestException r => new(400, r.Message, InvalidRequest, r.Param, r.Code),
        QueueFullException q => new(429, q.Message, "requests", null, "rate_limit_exceeded"),
        ServiceStoppingException => Stopping(),
        // Kestrel's own request errors (body over the size limit: 413, a body cut short: 400).
        BadHttpRequestException b => new(b.StatusCode, b.StatusCode == 413 ? "the request body is too large" : b.Message,
            InvalidRequest, null, b.StatusCode == 413 ? "request_too_large" : null),
        JsonException j => new(400, $"We could not parse the JSON body of your request: {j.Message}", InvalidRequest, null, "invalid_json"),
        _ => new(500, $"The server had an error while processing your request ({e.GetType().Name}: {FirstLine(e.Message)})", ServerError),
    };

    /// <summary>A server error's first line: native errors (libtorch's) go on with a stack of frames and local paths,
    /// which belong in the server's log, not in a client's response.</summary>
    public static string FirstLine(string message) =>
        message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? "";

    public byte[] ToJson()
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, OpenAiError.WriterOptions))
        {
            w.WriteStartObject();
            w.WriteStartObject("error");
            w.WriteString("message", Message);
            w.WriteString("type", Type);
            w.WriteString("param", Param);
            w.WriteString("code", Code);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        return buffer.ToArray();
    }

    /// <summary>Writes the error as the whole response; nothing when the response has already started (the caller ends it).</summary>
    public async Task WriteAsync(HttpResponse response)
    {
        if (response.HasStarted) return;
        response.StatusCode = Status;
        response.ContentType = "application/json";
        if (Status == 401) response.Headers.WWWAuthenticate = "Bearer";
        await response.Body.WriteAsync(ToJson(), response.HttpContext.RequestAborted);
    }
}
