using Ecmt.Protos;
using Grpc.Core;

namespace Ecmt.Client.Tests;

/// <summary>The client's stream against the real server: one update per step, inputs, top-k, server-side rules, models, errors.</summary>
public sealed class ClassifyTests(ServerFixture fixture) : IClassFixture<ServerFixture>, IDisposable
{
    readonly EcmtClient _client = new(fixture.Host.Address.ToString());

    public void Dispose() => _client.Dispose();

    static ClassifyInput Tensor(int seed) => ClassifyInput.FromTensor(TestModels.Intensities(seed), 1, TestModels.Size, TestModels.Size);

    [Fact]
    public async Task Streams_one_update_per_step()
    {
        var updates = await _client.ClassifyAsync(TestModels.Tiny, Tensor(3), new ClassifyOptions { MaxSteps = 6, TopK = 3 }).ToListAsync();

        Assert.Equal([1, 2, 3, 4, 5, 6], updates.Select(u => u.Step));
        Assert.All(updates[..^1], u => Assert.False(u.IsLast));
        Assert.Equal(StopReason.MaxSteps, updates[^1].StopReason);
        Assert.False(updates[^1].StoppedByClient);
        foreach (var u in updates)
        {
            Assert.Equal(3, u.Top.Count);
            Assert.True(u.Top[0].Probability >= u.Top[1].Probability && u.Top[1].Probability >= u.Top[2].Probability);
            Assert.Equal(u.Top[0].Probability, u.Confidence);
            Assert.Equal(u.Top[0].Probability - u.Top[1].Probability, u.Margin);
            Assert.Equal(u.Prediction, u.Top[0]);
            Assert.Equal(Engine.Data.FashionMnist.ClassNames[u.Prediction.Index], u.Prediction.Name);
            Assert.Equal(1, u.Attempts);
            Assert.Equal((int)u.Raw.Step, u.Step);
            Assert.True(u.EnergyRatio > 0 && u.FiringRate > 0 && u.StepMilliseconds > 0);
        }
        for (int i = 1; i < updates.Count; i++)
        {
            Assert.True(updates[i].SynapticOperations > updates[i - 1].SynapticOperations, "SOPs are cumulative");
            Assert.True(updates[i].Elapsed >= updates[i - 1].Elapsed);
            Assert.True(updates[i].ServerElapsedMilliseconds >= updates[i - 1].ServerElapsedMilliseconds);
        }
    }

    [Fact]
    public async Task A_file_its_bytes_and_its_pixels_give_the_same_stream()
    {
        var png = TestModels.Png(4);
        var file = Path.Combine(TestModels.PngFolder(0), "image.png");
        await File.WriteAllBytesAsync(file, png);
        var options = new ClassifyOptions { MaxSteps = 4, TopK = 10 };

        var fromFile = await _client.ClassifyToEndAsync(TestModels.Tiny, ClassifyInput.FromFile(file), options);
        var fromBytes = await _client.ClassifyAsync(TestModels.Tiny, png, options).ToListAsync();
        var fromTensor = await _client.ClassifyAsync(TestModels.Tiny, Tensor(4), options).ToListAsync();

        Assert.Equal(4, fromFile.Steps);
        Assert.Equal(fromTensor.Select(u => u.Raw.Top.ToString()), fromFile.Updates.Select(u => u.Raw.Top.ToString()));
        Assert.Equal(fromTensor.Select(u => u.SynapticOperations), fromBytes.Select(u => u.SynapticOperations));
        Assert.Equal(fromTensor.Select(u => u.Raw.Top.ToString()), fromBytes.Select(u => u.Raw.Top.ToString()));
        Assert.True(fromFile.FirstUpdate <= fromFile.Elapsed);
    }

    [Fact]
    public async Task The_margin_comes_from_the_server_whatever_top_k_asks()
    {
        var two = await _client.ClassifyAsync(TestModels.Tiny, Tensor(5), new ClassifyOptions { MaxSteps = 3, TopK = 2 }).ToListAsync();
        var one = await _client.ClassifyAsync(TestModels.Tiny, Tensor(5), new ClassifyOptions { MaxSteps = 3, TopK = 1 }).ToListAsync();
        Assert.All(one, u => Assert.Single(u.Top));
        Assert.Equal(two.Select(u => u.Top[0].Probability - u.Top[1].Probability), one.Select(u => u.Margin));
        Assert.All(two, u => Assert.True(u.Margin > 0));
    }

    [Fact]
    public async Task A_server_side_rule_ends_the_stream_on_the_server()
    {
        var full = await _client.ClassifyAsync(TestModels.Deep, Tensor(4), new ClassifyOptions { MaxSteps = 8 }).ToListAsync();
        var stopped = await _client.ClassifyAsync(TestModels.Deep, Tensor(4),
            new ClassifyOptions { MaxSteps = 8, ServerStop = new StopPolicy { StableSteps = 2 } }).ToListAsync();

        int expected = StopPolicyTests.FirstStableStep(full.Select(u => u.Prediction.Index).ToArray(), 2);
        Assert.Equal(expected, stopped.Count);
        Assert.Equal(StopReason.Stable, stopped[^1].StopReason);
        Assert.False(stopped[^1].StoppedByClient);
    }

    [Fact]
    public async Task Lists_and_describes_the_models()
    {
        var models = await _client.ListModelsAsync();
        Assert.Equal([TestModels.Deep, TestModels.Tiny], models.Select(m => m.Name));
        Assert.All(models, m => Assert.True(m.Ready));

        var tiny = await _client.GetModelAsync(TestModels.Tiny);
        Assert.Equal(1u, tiny.Channels);
        Assert.Equal((uint)TestModels.Size, tiny.ImageSize);
        Assert.Equal(Engine.Data.FashionMnist.ClassNames, tiny.ClassNames);
        Assert.Equal("reference", tiny.Backend);
        Assert.Equal(8u, tiny.DefaultSteps);
    }

    [Fact]
    public async Task Failures_are_EcmtRpcExceptions_that_carry_the_status()
    {
        var missing = await Assert.ThrowsAsync<EcmtRpcException>(() => _client.GetModelAsync("nope"));
        Assert.Equal(StatusCode.NotFound, missing.StatusCode);
        Assert.Equal("NOT_FOUND", missing.Code);
        Assert.Equal("ecmt.v1.Classifier/GetModel", missing.Method);
        Assert.Contains("tiny", missing.Detail, StringComparison.Ordinal);
        Assert.StartsWith("ecmt.v1.Classifier/GetModel: NOT_FOUND: model 'nope' is not hosted", missing.Message, StringComparison.Ordinal);
        Assert.IsType<RpcException>(missing.InnerException);

        var notHosted = await Assert.ThrowsAsync<EcmtRpcException>(() => _client.ClassifyAsync("nope", Tensor(1)).ToListAsync());
        Assert.Equal(StatusCode.NotFound, notHosted.StatusCode);

        var corrupt = await Assert.ThrowsAsync<EcmtRpcException>(() => _client.ClassifyAsync(TestModels.Tiny, "not an image"u8.ToArray()).ToListAsync());
        Assert.Equal("INVALID_ARGUMENT", corrupt.Code);
        Assert.Contains("image", corrupt.Detail, StringComparison.Ordinal);

        var tooMany = await Assert.ThrowsAsync<EcmtRpcException>(() => _client.ClassifyAsync(TestModels.Tiny, Tensor(1), new ClassifyOptions { MaxSteps = 2_000_000 }).ToListAsync());
        Assert.Equal(StatusCode.OutOfRange, tooMany.StatusCode);
    }

    [Fact]
    public async Task Bad_arguments_fail_here_before_any_call()
    {
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _client.ClassifyAsync(TestModels.Tiny, Tensor(1), new ClassifyOptions { Stop = new StopPolicy { MinConfidence = 1.5 } }).ToListAsync());
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _client.ClassifyAsync(TestModels.Tiny, Tensor(1), new ClassifyOptions { ServerStop = new StopPolicy { StableSteps = 0 } }).ToListAsync());
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _client.ClassifyAsync(TestModels.Tiny, Tensor(1), new ClassifyOptions { MaxSteps = -1 }).ToListAsync());
        Assert.Throws<ArgumentException>(() => ClassifyInput.FromTensor(new float[10], 1, 28, 28));
        var absent = Path.Combine(Path.GetTempPath(), $"ecmt-absent-{Guid.NewGuid():N}.png");
        await Assert.ThrowsAsync<FileNotFoundException>(() => _client.ClassifyFileAsync(TestModels.Tiny, absent).ToListAsync());
        Assert.Throws<ArgumentException>(() => EcmtClient.ParseAddress("ftp://host:1"));
        Assert.Equal(new Uri("http://localhost:50051/"), EcmtClient.ParseAddress("localhost:50051"));
    }
}
