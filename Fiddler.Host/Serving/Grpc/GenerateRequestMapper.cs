using Fiddler.Host.Serving.Grpc.V1;
using Fiddler.Kernels.Generation;
using Fiddler.Kernels.Sampling;
using Grpc.Core;
using ChatMessage = Fiddler.Host.Serving.ChatMessage;

namespace Fiddler.Host.Serving.Grpc;

/// <summary>Checks a <see cref="GenerateRequest"/> field by field and turns it into a <see cref="CompletionJob"/>.</summary>
internal static class GenerateRequestMapper
{
    // Defaults follow the OpenAI API (temperature 1, nucleus off) so both frontends sample alike by default;
    // max_tokens keeps the engine's own default rather than running to the end of the context window.
    private const float DefaultTemperature = 1;
    private static readonly int DefaultMaxTokens = new GenerationOptions().MaxNewTokens;
    private const int MaxStopStrings = 16;

    public static CompletionJob ToJob(GenerateRequest request, IInferenceService service)
    {
        var options = new GenerationOptions
        {
            MaxNewTokens = request.HasMaxTokens ? Positive(request.MaxTokens, "max_tokens") : DefaultMaxTokens,
            Sampling = Sampling(request),
            StopStrings = Stops(request),
            TopLogprobs = request.TopLogprobs <= 20 ? (int)request.TopLogprobs
                : throw Invalid("top_logprobs", $"must be in 0..20, got {request.TopLogprobs}"),
        };
        string requestId = request.RequestId.Length > 0 ? request.RequestId : $"gen-{Guid.NewGuid():N}";
        return new CompletionJob(PromptIds(request, service), options, requestId);
    }

    private static int[] PromptIds(GenerateRequest request, IInferenceService service)
    {
        switch (request.PromptCase)
        {
            case GenerateRequest.PromptOneofCase.Text:
                if (request.Text.Length == 0) throw Invalid("text", "must not be empty");
                return service.Tokenize(request.Text);
            case GenerateRequest.PromptOneofCase.TokenIds:
                var ids = request.TokenIds.Ids;
                if (ids.Count == 0) throw Invalid("token_ids", "must hold at least one id");
                int vocab = service.Model.VocabSize;
                foreach (int id in ids)
                {
                    if (id < 0 || id >= vocab) throw Invalid("token_ids", $"ids must be in 0..{vocab - 1}, got {id}");
                }
                return [.. ids];
            case GenerateRequest.PromptOneofCase.Chat:
                var messages = request.Chat.Messages;
                if (messages.Count == 0) throw Invalid("chat.messages", "must hold at least one message");
                for (int i = 0; i < messages.Count; i++)
                {
                    if (messages[i].Role.Length == 0) throw Invalid($"chat.messages[{i}].role", "must not be empty");
                }
                string prompt = service.ApplyChatTemplate([.. messages.Select(m => new ChatMessage(m.Role, m.Content))]);
                // The template writes the BOS itself (as HF apply_chat_template(tokenize=True) does).
                return service.Tokenize(prompt, addSpecialTokens: false);
            default:
                throw Invalid("prompt", "set one of text, token_ids or chat");
        }
    }

    private static SamplingOptions Sampling(GenerateRequest request)
    {
        float temperature = request.HasTemperature ? request.Temperature : DefaultTemperature;
        if (!float.IsFinite(temperature) || temperature < 0) throw Invalid("temperature", $"must be a finite number >= 0 (0 = greedy), got {temperature}");
        float topP = request.HasTopP ? request.TopP : 1;
        if (!(topP > 0 && topP <= 1)) throw Invalid("top_p", $"must be in (0, 1], got {topP}");
        if (request.TopK > int.MaxValue) throw Invalid("top_k", $"must be at most {int.MaxValue}, got {request.TopK}");
        return new SamplingOptions(temperature, (int)request.TopK, topP, request.HasSeed ? request.Seed : null);
    }

    private static string[] Stops(GenerateRequest request)
    {
        if (request.Stop.Count > MaxStopStrings) throw Invalid("stop", $"at most {MaxStopStrings} stop strings, got {request.Stop.Count}");
        int empty = request.Stop.IndexOf("");
        if (empty >= 0) throw Invalid($"stop[{empty}]", "must not be empty");
        return [.. request.Stop];
    }

    private static int Positive(uint value, string field) =>
        value is >= 1 and <= int.MaxValue ? (int)value : throw Invalid(field, $"must be >= 1, got {value}");

    public static RpcException Invalid(string field, string message) =>
        new(new Status(StatusCode.InvalidArgument, $"{field}: {message}"));
}
