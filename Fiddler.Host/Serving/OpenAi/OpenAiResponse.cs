using System.Text;
using System.Text.Json;
using Fiddler.Kernels.Generation;

namespace Fiddler.Host.Serving.OpenAi;

/// <summary>
/// The JSON of one request's answer, plain (<see cref="Final"/>) or as stream chunks: chat.completion(.chunk) and
/// text_completion objects as OpenAI writes them. Collects the log-probabilities as tokens arrive.
/// </summary>
public sealed class OpenAiResponse(OpenAiRequest request, string id, DateTimeOffset created, IInferenceService service)
{
    private readonly bool _chat = request.Endpoint == OpenAiEndpoint.Chat;
    private readonly long _created = created.ToUnixTimeSeconds();
    private readonly StringBuilder _text = new();
    private readonly List<(GeneratedToken Token, int Offset)> _logprobs = [];

    public string Id { get; } = id;

    public OpenAiRequest Request => request;

    /// <summary>Records a token for <see cref="Final"/>; text-only events (id -1, the decoder's tail) carry no log-probability.</summary>
    public void Add(GeneratedToken token)
    {
        if (request.Logprobs && token.Id >= 0) _logprobs.Add((token, _text.Length));
        _text.Append(token.Text);
    }

    public byte[] Final(CompletedEvent done) => Json(w =>
    {
        Header(w, _chat ? "chat.completion" : "text_completion");
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", 0);
        if (_chat)
        {
            w.WriteStartObject("message");
            w.WriteString("role", "assistant");
            w.WriteString("content", _text.ToString());
            w.WriteEndObject();
        }
        else w.WriteString("text", _text.ToString());
        Logprobs(w, _logprobs);
        w.WriteString("finish_reason", FinishReasonName(done.Finish));
        w.WriteEndObject();
        w.WriteEndArray();
        Usage(w, done);
    });

    /// <summary>Chat streams open with the assistant's role and empty content, as OpenAI's do; completions have no such chunk.</summary>
    public byte[]? FirstChunk() => !_chat ? null : Chunk(w =>
    {
        w.WriteStartObject("delta");
        w.WriteString("role", "assistant");
        w.WriteString("content", "");
        w.WriteEndObject();
        w.WriteNull("logprobs");
        w.WriteNull("finish_reason");
    });

    /// <summary>The chunk for one token, or null when it has neither text nor a log-probability to report.</summary>
    public byte[]? TokenChunk(GeneratedToken token)
    {
        bool logprob = request.Logprobs && token.Id >= 0;
        if (token.Text.Length == 0 && !logprob) return null;
        int offset = _text.Length;
        _text.Append(token.Text);
        return Chunk(w =>
        {
            if (_chat)
            {
                w.WriteStartObject("delta");
                w.WriteString("content", token.Text);
                w.WriteEndObject();
            }
            else w.WriteString("text", token.Text);
            Logprobs(w, logprob ? [(token, offset)] : []);
            w.WriteNull("finish_reason");
        });
    }

    public byte[] FinishChunk(CompletedEvent done) => Chunk(w =>
    {
        if (_chat)
        {
            w.WriteStartObject("delta");
            w.WriteEndObject();
        }
        else w.WriteString("text", "");
        w.WriteNull("logprobs");
        w.WriteString("finish_reason", FinishReasonName(done.Finish));
    });

    /// <summary>stream_options.include_usage: a last chunk with no choices and the usage.</summary>
    public byte[] UsageChunk(CompletedEvent done) => Json(w =>
    {
        Header(w, _chat ? "chat.completion.chunk" : "text_completion");
        w.WriteStartArray("choices");
        w.WriteEndArray();
        Usage(w, done);
    });

    public static string FinishReasonName(FinishReason finish) => finish switch
    {
        FinishReason.Length => "length",
        FinishReason.Eos or FinishReason.Stop => "stop",
        _ => "cancelled", // never sent: a cancelled job ends in an error or a closed connection
    };

    private byte[] Chunk(Action<Utf8JsonWriter> choice) => Json(w =>
    {
        Header(w, _chat ? "chat.completion.chunk" : "text_completion");
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", 0);
        choice(w);
        w.WriteEndObject();
        w.WriteEndArray();
        // With include_usage every chunk carries "usage": null, the last one the totals (OpenAI's stream format).
        if (request.IncludeUsage) w.WriteNull("usage");
    });

    private void Header(Utf8JsonWriter w, string @object)
    {
        w.WriteString("id", Id);
        w.WriteString("object", @object);
        w.WriteNumber("created", _created);
        w.WriteString("model", service.Model.Id);
        if (_chat) w.WriteNull("system_fingerprint");
    }

    private static void Usage(Utf8JsonWriter w, CompletedEvent done)
    {
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", done.PromptTokens);
        w.WriteNumber("completion_tokens", done.CompletionTokens);
        w.WriteNumber("total_tokens", done.PromptTokens + done.CompletionTokens);
        w.WriteEndObject();
    }

    private void Logprobs(Utf8JsonWriter w, IReadOnlyList<(GeneratedToken Token, int Offset)> tokens)
    {
        if (!request.Logprobs)
        {
            w.WriteNull("logprobs");
            return;
        }
        w.WriteStartObject("logprobs");
        if (_chat)
        {
            w.WriteStartArray("content");
            foreach (var (t, _) in tokens)
            {
                w.WriteStartObject();
                TokenEntry(w, t.Id, t.Logprob);
                w.WriteStartArray("top_logprobs");
                foreach (var (topId, lp) in t.Top)
                {
                    w.WriteStartObject();
                    TokenEntry(w, topId, lp);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        else
        {
            // The legacy completions shape: parallel arrays.
            w.WriteStartArray("tokens");
            foreach (var (t, _) in tokens) w.WriteStringValue(service.TokenText(t.Id));
            w.WriteEndArray();
            w.WriteStartArray("token_logprobs");
            foreach (var (t, _) in tokens) w.WriteNumberValue(Finite(t.Logprob));
            w.WriteEndArray();
            if (request.TopLogprobs == 0) w.WriteNull("top_logprobs");
            else
            {
                w.WriteStartArray("top_logprobs");
                foreach (var (t, _) in tokens)
                {
                    w.WriteStartObject();
                    foreach (var (topId, lp) in t.Top) w.WriteNumber(service.TokenText(topId), Finite(lp));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            }
            w.WriteStartArray("text_offset");
            foreach (var (_, offset) in tokens) w.WriteNumberValue(offset);
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }

    private void TokenEntry(Utf8JsonWriter w, int id, float logprob)
    {
        string text = service.TokenText(id);
        w.WriteString("token", text);
        w.WriteNumber("logprob", Finite(logprob));
        w.WriteStartArray("bytes");
        foreach (byte b in Encoding.UTF8.GetBytes(text)) w.WriteNumberValue(b);
        w.WriteEndArray();
    }

    /// <summary>JSON has no infinities; OpenAI reports an impossible token as -9999.</summary>
    private static float Finite(float logprob) => float.IsFinite(logprob) ? logprob : -9999f;

    private static byte[] Json(Action<Utf8JsonWriter> body)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer, OpenAiError.WriterOptions))
        {
            w.WriteStartObject();
            body(w);
            w.WriteEndObject();
        }
        return buffer.ToArray();
    }
}
