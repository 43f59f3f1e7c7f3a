using Ecmt.Engine.Serving;
using Ecmt.Protos.V1;
using Grpc.Core;

namespace Ecmt.Server.Tests;

static class Requests
{
    public static ClassifyRequest Tensor(string model, int seed = 7, uint maxSteps = 6, uint topK = 0)
    {
        var tensor = new Protos.V1.Tensor();
        tensor.Shape.AddRange([1, TestModels.Size, TestModels.Size]);
        tensor.Data.AddRange(TestModels.Image(seed).Intensities);
        return new ClassifyRequest { Model = model, Tensor = tensor, MaxSteps = maxSteps, TopK = topK };
    }

    public static ClassifyRequest Image(string model, byte[] encoded, uint maxSteps = 6) =>
        new() { Model = model, Image = Google.Protobuf.ByteString.CopyFrom(encoded), MaxSteps = maxSteps };

    public static async Task<List<ClassifyUpdate>> ReadAll(this AsyncServerStreamingCall<ClassifyUpdate> call)
    {
        var updates = new List<ClassifyUpdate>();
        await foreach (var update in call.ResponseStream.ReadAllAsync()) updates.Add(update);
        return updates;
    }

    public static async Task<List<ClassifyUpdate>> RunAsync(this Classifier.ClassifierClient client, ClassifyRequest request)
    {
        using var call = client.Classify(request);
        return await call.ReadAll();
    }

    /// <summary>The status a call ends with (OK when it succeeds).</summary>
    public static async Task<Status> StatusOf(Func<Task> call)
    {
        try
        {
            await call();
            return Status.DefaultSuccess;
        }
        catch (RpcException e)
        {
            return e.Status;
        }
    }

    /// <summary>The summary of the next run of <paramref name="model"/> that ends (raised once its session is back in the pool).</summary>
    public static Task<RunSummary> NextRun(this HostedModel model)
    {
        var done = new TaskCompletionSource<RunSummary>(TaskCreationOptions.RunContinuationsAsynchronously);
        Action<RunSummary>? handler = null;
        handler = summary =>
        {
            model.RunCompleted -= handler;
            done.TrySetResult(summary);
        };
        model.RunCompleted += handler;
        return done.Task;
    }
}
