using Ecmt.Protos.Inference;
using Google.Protobuf;
using Grpc.Core;

namespace Ecmt.Server.Oip;

/// <summary>
/// inference.GRPCInferenceService: the Open Inference Protocol over gRPC, plus Triton's ModelStreamInfer with one
/// response per time step. A thin transport over <see cref="OipInference"/> and <see cref="Classifications"/>.
/// </summary>
sealed class OipGrpcService(OipInference oip, ServerMetrics metrics) : GRPCInferenceService.GRPCInferenceServiceBase
{
    const string StreamMethod = "/inference.GRPCInferenceService/ModelStreamInfer";

    public override Task<ServerLiveResponse> ServerLive(ServerLiveRequest request, ServerCallContext context) =>
        Task.FromResult(new ServerLiveResponse { Live = true });

    public override Task<ServerReadyResponse> ServerReady(ServerReadyRequest request, ServerCallContext context) =>
        Task.FromResult(new ServerReadyResponse { Ready = oip.Classifications.ServerReady });

    public override Task<ModelReadyResponse> ModelReady(ModelReadyRequest request, ServerCallContext context) =>
        Task.FromResult(new ModelReadyResponse { Ready = oip.Classifications.ModelReady(oip.RequireModel(request.Name, request.Version, "name")) });

    public override Task<ServerMetadataResponse> ServerMetadata(ServerMetadataRequest request, ServerCallContext context) =>
        Task.FromResult(OipInference.ServerMetadata());

    public override Task<ModelMetadataResponse> ModelMetadata(ModelMetadataRequest request, ServerCallContext context) =>
        Task.FromResult(OipInference.Metadata(oip.RequireModel(request.Name, request.Version, "name")));

    /// <summary>The answer after the last step (the stop policy's, or max_steps').</summary>
    public override async Task<ModelInferResponse> ModelInfer(ModelInferRequest request, ServerCallContext context)
    {
        var job = oip.Prepare(request);
        var last = await oip.Classifications.RunAsync(job.Job, _ => ValueTask.CompletedTask, context.Deadline, context.CancellationToken);
        return OipInference.Response(job, last, final: null);
    }

    /// <summary>
    /// Every request of the stream runs as soon as it arrives (concurrently with the others, each admitted like any
    /// classification) and is answered by one response per step, in step order, the last one marked final; responses
    /// of different requests interleave (tell them apart by id). A failed request gets one error response and the
    /// stream goes on. The call ends once the client has closed its side and every request is answered; cancelling
    /// it stops every run within one step.
    /// </summary>
    public override async Task ModelStreamInfer(IAsyncStreamReader<ModelInferRequest> requestStream, IServerStreamWriter<ModelStreamInferResponse> responseStream,
        ServerCallContext context)
    {
        var writing = new SemaphoreSlim(1, 1);
        var running = new List<Task>();
        async Task Write(ModelStreamInferResponse response)
        {
            await writing.WaitAsync(context.CancellationToken);
            try
            {
                await responseStream.WriteAsync(response, context.CancellationToken);
            }
            finally
            {
                writing.Release();
            }
        }

        async Task Run(ModelInferRequest request)
        {
            try
            {
                var job = oip.Prepare(request);
                await oip.Classifications.RunAsync(job.Job,
                    step => new ValueTask(Write(new ModelStreamInferResponse { InferResponse = OipInference.Response(job, step, OipInference.IsFinal(job, step)) })),
                    context.Deadline, context.CancellationToken);
                if (job.EmptyFinal) await Write(new ModelStreamInferResponse { InferResponse = OipInference.EmptyFinal(job) });
            }
            catch (RpcException e) when (!context.CancellationToken.IsCancellationRequested)
            {
                metrics.Error(StreamMethod, e.StatusCode);
                await Write(OipInference.StreamError(request, e.Status));
            }
        }

        Exception? malformed = null;
        try
        {
            await foreach (var request in requestStream.ReadAllAsync(context.CancellationToken))
            {
                running.RemoveAll(t => t.IsCompleted);
                running.Add(Run(request));
            }
        }
        catch (Exception e) when (e is InvalidProtocolBufferException or InvalidDataException && !context.CancellationToken.IsCancellationRequested)
        {
            // Bytes that are no ModelInferRequest (or no gRPC message frame) end the stream, after the requests before them are answered.
            malformed = e;
        }
        finally
        {
            // Answer what was asked before ending the call (or, when it was cancelled, let every run stop first).
            await Task.WhenAll(running).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            writing.Dispose();
        }
        await Task.WhenAll(running);
        if (malformed is not null)
            throw Classifications.Fail(StatusCode.InvalidArgument, $"a message of the stream is not a gRPC-framed ModelInferRequest: {malformed.Message}");
    }
}
