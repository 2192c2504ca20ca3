using Fiddler.Host.Serving.Grpc.V1;
using Fiddler.Host.Serving.Telemetry;
using Google.Protobuf.WellKnownTypes;
using Grpc.Core;
using FinishReason = Fiddler.Kernels.Generation.FinishReason;

namespace Fiddler.Host.Serving.Grpc;

/// <summary>
/// fiddler.v1.Inference over <see cref="IInferenceService"/>: validates, admits at once (RESOURCE_EXHAUSTED when the
/// queue is full), then streams the job. The call's cancellation token (client gone, deadline passed) goes into the
/// engine, which stops within one decode step.
/// </summary>
public sealed class InferenceGrpcService(IInferenceService engine) : Inference.InferenceBase
{
    public const string FrontendName = "grpc";

    public override async Task Generate(GenerateRequest request, IServerStreamWriter<GenerateResponse> responses, ServerCallContext context)
    {
        ServingTelemetry.CurrentFrontend = FrontendName;
        CancellationToken cancel = context.CancellationToken;
        CompletionJob job;
        QueueTicket ticket;
        try
        {
            job = GenerateRequestMapper.ToJob(request, engine);
            ticket = engine.Admit();
        }
        catch (RequestException e) { throw GrpcErrors.From(e); }
        catch (QueueFullException e) { throw GrpcErrors.QueueFull(e); }
        catch (ServiceStoppingException e) { throw GrpcErrors.Stopping(e); }

        // Disposed however the call ends, including when the job never ran (see IInferenceService.Admit).
        using var _ = ticket;
        try
        {
            await foreach (var e in engine.RunAsync(ticket, job, cancel))
            {
                switch (e)
                {
                    case TokenEvent t:
                        await responses.WriteAsync(new GenerateResponse { Token = Chunk(t) }, cancel);
                        break;
                    case CompletedEvent { Finish: FinishReason.Cancelled } when cancel.IsCancellationRequested:
                        throw GrpcErrors.Cancelled(context);
                    case CompletedEvent { Finish: FinishReason.Cancelled }:
                        // Not the client: shutdown cut the generation short (HTTP answers 503 for the same case).
                        throw GrpcErrors.ShutdownCancelled();
                    case CompletedEvent c:
                        await responses.WriteAsync(new GenerateResponse { Summary = Summary(c, job.RequestId) }, cancel);
                        break;
                }
            }
        }
        catch (RpcException) { throw; } // a status chosen above
        catch (RequestException e) { throw GrpcErrors.From(e); }
        catch (ServiceStoppingException e) { throw GrpcErrors.Stopping(e); }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested) { throw GrpcErrors.Cancelled(context); }
        catch (Exception e) when (e is not OperationCanceledException) { throw GrpcErrors.EngineFailed(e); }
    }

    public override Task<ModelInfoResponse> ModelInfo(ModelInfoRequest request, ServerCallContext context)
    {
        var m = engine.Model;
        return Task.FromResult(new ModelInfoResponse
        {
            Id = m.Id,
            ContextLength = (uint)m.ContextLength,
            VocabSize = (uint)m.VocabSize,
            ChatTemplate = m.ChatTemplate ?? "",
            Created = Timestamp.FromDateTimeOffset(m.Created),
        });
    }

    public override Task<HealthResponse> Health(HealthRequest request, ServerCallContext context)
    {
        var h = engine.Health;
        return Task.FromResult(new HealthResponse
        {
            Ready = h.Ready,
            Status = h.Status,
            Detail = h.Detail ?? "",
            QueueDepth = (uint)Math.Max(0, engine.QueueDepth),
        });
    }

    private static TokenChunk Chunk(TokenEvent e)
    {
        var chunk = new TokenChunk { Id = e.Token.Id, Text = e.Token.Text, Logprob = e.Token.Logprob };
        foreach (var (id, logprob) in e.Token.Top) chunk.TopLogprobs.Add(new TokenLogprob { Id = id, Logprob = logprob });
        return chunk;
    }

    private static GenerateSummary Summary(CompletedEvent c, string requestId) => new()
    {
        FinishReason = c.Finish switch
        {
            FinishReason.Length => V1.FinishReason.Length,
            FinishReason.Eos => V1.FinishReason.Eos,
            FinishReason.Stop => V1.FinishReason.Stop,
            FinishReason.Cancelled => V1.FinishReason.Cancelled,
            _ => V1.FinishReason.Unspecified,
        },
        Usage = new Usage { PromptTokens = (uint)c.PromptTokens, CompletionTokens = (uint)c.CompletionTokens },
        Timings = new Timings
        {
            Queued = Duration.FromTimeSpan(c.Queued),
            Prefill = Duration.FromTimeSpan(c.Prefill),
            Decode = Duration.FromTimeSpan(c.Decode),
            // Tokens after the first over the decode time, as GenerationResult.DecodeTokensPerSecond.
            DecodeTokensPerSecond = c.CompletionTokens > 1 && c.Decode > TimeSpan.Zero ? (c.CompletionTokens - 1) / c.Decode.TotalSeconds : 0,
        },
        Text = c.Text,
        RequestId = requestId,
    };
}
