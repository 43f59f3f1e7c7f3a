using Ecmt.Protos.V1;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;

namespace Ecmt.Server.Tests;

/// <summary>Every kind of bad request gets its precise status and a message naming the problem; the server keeps serving.</summary>
public sealed class BadInputTests : IAsyncLifetime
{
    ServerHost _host = null!;

    public async ValueTask InitializeAsync() =>
        _host = await ServerHost.InProcessAsync(("Ecmt:Limits:MaxMessageBytes", "65536"), ("Ecmt:Limits:MaxConcurrentStreams", "2"), ("Ecmt:Limits:MaxSteps", "100000"));

    public async ValueTask DisposeAsync() => await _host.DisposeAsync();

    async Task<Status> Classify(ClassifyRequest request) => await Requests.StatusOf(() => _host.Client.RunAsync(request));

    static void Expect(StatusCode code, string fragment, Status status)
    {
        Assert.Equal(code, status.StatusCode);
        Assert.Contains(fragment, status.Detail, StringComparison.OrdinalIgnoreCase);
    }

    async Task StillServes()
    {
        var updates = await _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 2));
        Assert.Equal(2, updates.Count);
    }

    [Fact]
    public async Task Unknown_model_is_not_found()
    {
        Expect(StatusCode.NotFound, "'nope' is not hosted", await Classify(Requests.Tensor("nope")));
        Expect(StatusCode.NotFound, "tiny", await Requests.StatusOf(() => _host.Client.GetModelAsync(new GetModelRequest { Name = "nope" }).ResponseAsync));
        await StillServes();
    }

    [Fact]
    public async Task Missing_fields_are_invalid_arguments()
    {
        Expect(StatusCode.InvalidArgument, "model is missing", await Classify(Requests.Tensor("")));
        Expect(StatusCode.InvalidArgument, "input is missing", await Classify(new ClassifyRequest { Model = TestModels.Tiny }));
        Expect(StatusCode.InvalidArgument, "name is missing", await Requests.StatusOf(() => _host.Client.GetModelAsync(new GetModelRequest()).ResponseAsync));
        await StillServes();
    }

    [Fact]
    public async Task Corrupt_truncated_and_unsupported_images_are_invalid_arguments()
    {
        var png = TestModels.Png(1);
        Expect(StatusCode.InvalidArgument, "image is empty", await Classify(Requests.Image(TestModels.Tiny, [])));
        Expect(StatusCode.InvalidArgument, "not a decodable PNG or JPEG", await Classify(Requests.Image(TestModels.Tiny, "not an image at all"u8.ToArray())));
        Expect(StatusCode.InvalidArgument, "corrupt or truncated", await Classify(Requests.Image(TestModels.Tiny, png[..(png.Length * 2 / 3)])));

        using var bitmap = new SkiaSharp.SKBitmap(28, 28);
        using var webp = bitmap.Encode(SkiaSharp.SKEncodedImageFormat.Webp, 90);
        Expect(StatusCode.InvalidArgument, "Webp is not supported", await Classify(Requests.Image(TestModels.Tiny, webp.ToArray())));
        await StillServes();
    }

    [Fact]
    public async Task Wrong_tensors_are_invalid_arguments()
    {
        var wrongShape = Requests.Tensor(TestModels.Tiny);
        wrongShape.Tensor.Shape[0] = 3;
        Expect(StatusCode.InvalidArgument, "shape is [3, 28, 28], the model expects [1, 28, 28]", await Classify(wrongShape));

        var noShape = Requests.Tensor(TestModels.Tiny);
        noShape.Tensor.Shape.Clear();
        Expect(StatusCode.InvalidArgument, "shape is missing", await Classify(noShape));

        var short_ = Requests.Tensor(TestModels.Tiny);
        short_.Tensor.Data.RemoveAt(0);
        Expect(StatusCode.InvalidArgument, "783 values", await Classify(short_));

        var unnormalised = Requests.Tensor(TestModels.Tiny);
        unnormalised.Tensor.Data[5] = 255f;
        Expect(StatusCode.InvalidArgument, "tensor.data[5] is 255", await Classify(unnormalised));

        var nan = Requests.Tensor(TestModels.Tiny);
        nan.Tensor.Data[0] = float.NaN;
        Expect(StatusCode.InvalidArgument, "must lie in [0, 1]", await Classify(nan));
        await StillServes();
    }

    [Fact]
    public async Task Steps_beyond_the_limit_are_out_of_range_and_bad_policies_invalid()
    {
        Expect(StatusCode.OutOfRange, "at most 100000 steps", await Classify(Requests.Tensor(TestModels.Tiny, maxSteps: 100_001)));

        var tooConfident = Requests.Tensor(TestModels.Tiny);
        tooConfident.Stop = new Protos.V1.StopPolicy { MinConfidence = 1.5 };
        Expect(StatusCode.InvalidArgument, "min_confidence is 1.5", await Classify(tooConfident));

        var zero = Requests.Tensor(TestModels.Tiny);
        zero.Stop = new Protos.V1.StopPolicy { StableSteps = 0 };
        Expect(StatusCode.InvalidArgument, "stable_steps is 0", await Classify(zero));

        var recommendedAndMore = Requests.Tensor(TestModels.Tiny);
        recommendedAndMore.Stop = new Protos.V1.StopPolicy { Recommended = true, MinSteps = 2 };
        Expect(StatusCode.InvalidArgument, "recommended", await Classify(recommendedAndMore));

        // Rules the model cannot apply: the deep test model was converted without temperatures, gate or policy.
        var noRecommended = Requests.Tensor(TestModels.Deep);
        noRecommended.Stop = new Protos.V1.StopPolicy { Recommended = true };
        Expect(StatusCode.FailedPrecondition, "no recommended stop policy", await Classify(noRecommended));
        var noGate = Requests.Tensor(TestModels.Deep);
        noGate.Stop = new Protos.V1.StopPolicy { MinGate = 0.9 };
        Expect(StatusCode.FailedPrecondition, "no gate", await Classify(noGate));
        await StillServes();
    }

    [Fact]
    public async Task An_oversized_message_is_resource_exhausted()
    {
        var big = new byte[100_000];
        new Random(1).NextBytes(big);
        var status = await Classify(new ClassifyRequest { Model = TestModels.Tiny, Image = ByteString.CopyFrom(big) });
        Assert.Equal(StatusCode.ResourceExhausted, status.StatusCode);
        await StillServes();
    }

    [Fact]
    public async Task Streams_beyond_the_limit_are_resource_exhausted_until_one_ends()
    {
        using var cts = new CancellationTokenSource();
        var model = _host.Model(TestModels.Deep);
        using var first = _host.Client.Classify(Requests.Tensor(TestModels.Deep, maxSteps: 100_000), cancellationToken: cts.Token);
        using var second = _host.Client.Classify(Requests.Tensor(TestModels.Deep, maxSteps: 100_000), cancellationToken: cts.Token);
        Assert.True(await first.ResponseStream.MoveNext(CancellationToken.None));
        Assert.True(await second.ResponseStream.MoveNext(CancellationToken.None));

        Expect(StatusCode.ResourceExhausted, "too many classifications", await Classify(Requests.Tensor(TestModels.Tiny, maxSteps: 1)));

        cts.Cancel();
        // The slots free once both handlers have returned (just after their sessions went back to the pool).
        var limiter = _host.App.Services.GetRequiredService<StreamLimiter>();
        for (var until = DateTime.UtcNow.AddSeconds(30); limiter.Active > 0 && DateTime.UtcNow < until;) await Task.Delay(10);
        Assert.Equal(0, limiter.Active);
        Assert.Equal(0, model.ActiveSessions);
        await StillServes();
    }

    [Fact]
    public async Task A_model_that_failed_to_load_is_a_failed_precondition()
    {
        Expect(StatusCode.FailedPrecondition, "'broken' failed to load", await Classify(Requests.Tensor(TestModels.Broken)));
        await StillServes();
    }
}
