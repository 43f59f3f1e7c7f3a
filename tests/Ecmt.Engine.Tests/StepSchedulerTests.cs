using Ecmt.Engine.Conversion;
using Ecmt.Engine.Serving;
using Ecmt.Kernels;
using StopPolicy = Ecmt.Protos.StopPolicy;

namespace Ecmt.Engine.Tests;

/// <summary>
/// Streams through a model's step scheduler get the answers they get alone: streams join at different steps (some
/// wait in the queue for a slot), one is cancelled midway, and each one's updates match the same image run through a
/// scheduler of batch limit 1: same step numbers and top-1 at every step, probabilities within 1e-5.
/// </summary>
public sealed class StepSchedulerTests : IDisposable
{
    const int Images = 5, MaxSteps = 6;
    readonly string _dir = TestModels.TempDirectory();
    readonly float[][] _images;

    public StepSchedulerTests()
    {
        var converted = TestModels.TinyConverted(ConversionSettings.Calibrated(ThresholdGranularity.PerChannel));
        converted.Save(_dir);
        var set = TestModels.RandomImages(converted.Config, Images, 21);
        _images = Enumerable.Range(0, Images).Select(i => set.Image(i).ToArray().Select(p => p / 255f).ToArray()).ToArray();
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    HostedModel Load(BackendKind kind, int maxBatch)
    {
        var model = new HostedModel(new ModelLocation("tiny", _dir), Model.VitConfig.Load(Path.Combine(_dir, Model.ModelDirectory.ConfigFile)),
            kind, new EngineMetrics(), new BatchingOptions { MaxBatch = maxBatch, QueueLength = 16, Threads = 2 });
        model.Load();
        if (model.State == ModelState.Failed && model.Error is { } error && (error.Contains("no CUDA", StringComparison.OrdinalIgnoreCase)
            || !BackendAvailable(kind)))
        {
            model.Dispose();
            Assert.Skip($"{kind} is not available here: {error}");
        }
        Assert.Equal(ModelState.Ready, model.State);
        return model;
    }

    static bool BackendAvailable(BackendKind kind)
    {
        try
        {
            Backends.Create(kind).Dispose();
            return true;
        }
        catch (BackendUnavailableException)
        {
            return false;
        }
    }

    [Theory]
    [InlineData(BackendKind.Reference)]
    [InlineData(BackendKind.FastCpu)]
    [InlineData(BackendKind.Cpu)]
    [InlineData(BackendKind.Cuda)]
    [InlineData(BackendKind.OpenCL)]
    public async Task Staggered_and_cancelled_streams_get_the_answers_they_get_alone(BackendKind kind)
    {
        var ct = TestContext.Current.CancellationToken;
        var alone = new List<StepResult>[Images];
        using (var single = Load(kind, maxBatch: 1))
            for (int i = 0; i < Images; i++)
            {
                alone[i] = [];
                await foreach (var r in single.ClassifyAsync(_images[i], MaxSteps, StopPolicy.None, ct)) alone[i].Add(r);
            }

        using var batched = Load(kind, maxBatch: 3);
        var results = Enumerable.Range(0, Images).Select(_ => new List<StepResult>()).ToArray();
        var progress = Enumerable.Range(0, Images).Select(_ => new SemaphoreSlim(0)).ToArray();
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
        async Task Run(int i, CancellationToken token)
        {
            try
            {
                await foreach (var r in batched.ClassifyAsync(_images[i], MaxSteps, StopPolicy.None, token))
                {
                    results[i].Add(r);
                    progress[i].Release();
                    if (i == 1 && results[i].Count == 2) cancel.Cancel();
                }
            }
            catch (OperationCanceledException) when (i == 1)
            {
            }
        }
        // Stream 0 alone first; 1 and 2 join after its second step; 3 and 4 after 2's first (they wait for a slot).
        var runs = new List<Task> { Task.Run(() => Run(0, ct), ct) };
        await progress[0].WaitAsync(TimeSpan.FromSeconds(60), ct);
        await progress[0].WaitAsync(TimeSpan.FromSeconds(60), ct);
        runs.Add(Task.Run(() => Run(1, cancel.Token), ct));
        runs.Add(Task.Run(() => Run(2, ct), ct));
        await progress[2].WaitAsync(TimeSpan.FromSeconds(60), ct);
        runs.Add(Task.Run(() => Run(3, ct), ct));
        runs.Add(Task.Run(() => Run(4, ct), ct));
        await Task.WhenAll(runs).WaitAsync(TimeSpan.FromMinutes(5), ct);

        for (int i = 0; i < Images; i++)
        {
            Assert.Equal(i == 1 ? 2 : MaxSteps, results[i].Count);
            for (int s = 0; s < results[i].Count; s++)
            {
                StepResult a = alone[i][s], b = results[i][s];
                Assert.Equal(s + 1, b.Step);
                Assert.Equal(a.Prediction, b.Prediction);
                for (int k = 0; k < a.Probabilities.Length; k++)
                    Assert.True(Math.Abs(a.Probabilities[k] - b.Probabilities[k]) <= 1e-5,
                        $"stream {i} step {s + 1} class {k}: {b.Probabilities[k]} batched, {a.Probabilities[k]} alone");
            }
        }
        Assert.Equal(StopReason.MaxSteps, results[0][^1].StopReason);
        for (var until = DateTime.UtcNow.AddSeconds(10); batched.ActiveSessions > 0 && DateTime.UtcNow < until;) await Task.Delay(10, ct);
        Assert.Equal(0, batched.ActiveSessions);
        Assert.Equal(0, batched.Waiting);
    }
}
