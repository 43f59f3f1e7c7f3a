using Ecmt.Protos.Inference;
using Ecmt.Protos.V1;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;

namespace Ecmt.Server.Tests;

/// <summary>
/// inference.GRPCInferenceService (the Open Inference Protocol over gRPC, and Triton's ModelStreamInfer) on the
/// in-process server: metadata, answers equal to ecmt.v1's for the same image, one stream response per step, and
/// every bad request getting the status ecmt.v1 gives the same mistake.
/// </summary>
public sealed class OipGrpcTests : IAsyncLifetime
{
    ServerHost _host = null!;

    public async ValueTask InitializeAsync() =>
        _host = await ServerHost.InProcessAsync(("Ecmt:Limits:MaxMessageBytes", "65536"), ("Ecmt:Limits:MaxConcurrentStreams", "2"), ("Ecmt:Limits:MaxSteps", "100000"));

    public async ValueTask DisposeAsync() => await _host.DisposeAsync();

    GRPCInferenceService.GRPCInferenceServiceClient Oip => _host.Inference;

    [Fact]
    public async Task Health_and_metadata_describe_the_server_and_its_models()
    {
        Assert.True((await Oip.ServerLiveAsync(new ServerLiveRequest())).Live);
        Assert.True((await Oip.ServerReadyAsync(new ServerReadyRequest())).Ready);
        Assert.True((await Oip.ModelReadyAsync(new ModelReadyRequest { Name = TestModels.Tiny })).Ready);
        Assert.True((await Oip.ModelReadyAsync(new ModelReadyRequest { Name = TestModels.Tiny, Version = "1" })).Ready);
        Assert.False((await Oip.ModelReadyAsync(new ModelReadyRequest { Name = TestModels.Broken })).Ready);
        var unknown = await Requests.StatusOf(() => Oip.ModelReadyAsync(new ModelReadyRequest { Name = "nope" }).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        var version = await Requests.StatusOf(() => Oip.ModelReadyAsync(new ModelReadyRequest { Name = TestModels.Tiny, Version = "2" }).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, version.StatusCode);
        Assert.Contains("no version '2'", version.Detail, StringComparison.Ordinal);

        var server = await Oip.ServerMetadataAsync(new ServerMetadataRequest());
        Assert.Equal("ecmt", server.Name);
        Assert.Contains("classification", server.Extensions);

        var model = await Oip.ModelMetadataAsync(new ModelMetadataRequest { Name = TestModels.Tiny });
        Assert.Equal(TestModels.Tiny, model.Name);
        Assert.Equal(["1"], model.Versions);
        Assert.Equal(["pixels", "image"], model.Inputs.Select(i => i.Name));
        Assert.Equal("FP32", model.Inputs[0].Datatype);
        Assert.Equal([1L, 1, 28, 28], model.Inputs[0].Shape);
        Assert.Equal("BYTES", model.Inputs[1].Datatype);
        Assert.Equal([1L], model.Inputs[1].Shape);
        Assert.Equal(["probabilities", "step", "stop_reason", "synaptic_operations", "energy_ratio"], model.Outputs.Select(o => o.Name));
        Assert.Equal([1L, TestModels.Classes], model.Outputs[0].Shape);
    }

    [Fact]
    public async Task ModelInfer_answers_with_the_last_step_of_the_run_ecmt_v1_streams()
    {
        var updates = await _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, seed: 11, maxSteps: 5, topK: 10));
        var response = await Oip.ModelInferAsync(OipRequests.Pixels(TestModels.Tiny, seed: 11, maxSteps: 5));
        AssertSameStep(updates[^1], response);
        Assert.Equal("max_steps", response.StopReason());
        Assert.Equal(TestModels.Tiny, response.ModelName);
        Assert.Equal("1", response.ModelVersion);
        Assert.Null(response.Final());

        // The same PNG as typed contents and as raw_input_contents (4-byte length prefix) gives the same answer.
        var png = TestModels.Png(4);
        var fromImage = await _host.Client.RunAsync(Requests.Image(TestModels.Tiny, png, maxSteps: 3));
        foreach (bool raw in new[] { false, true })
            AssertSameStep(fromImage[^1], await Oip.ModelInferAsync(OipRequests.Image(TestModels.Tiny, png, maxSteps: 3, raw: raw)));

        // max_steps absent or 0: the server's default (8).
        Assert.Equal(8, (await Oip.ModelInferAsync(OipRequests.Pixels(TestModels.Tiny).With("max_steps", 0L))).Step());
        var noParameters = OipRequests.Pixels(TestModels.Tiny);
        noParameters.Parameters.Clear();
        Assert.Equal(8, (await Oip.ModelInferAsync(noParameters)).Step());
    }

    static void AssertSameStep(ClassifyUpdate update, ModelInferResponse response)
    {
        Assert.Equal(update.Step, (uint)response.Step());
        var p = response.Probabilities();
        Assert.Equal(TestModels.Classes, p.Length);
        foreach (var score in update.Top) Assert.Equal(score.Probability, p[score.Index]);
        Assert.Equal(update.SynapticOperations, response.Sops());
        Assert.Equal(update.EnergyRatio, response.Energy());
    }

    [Fact]
    public async Task Stop_policy_parameters_stop_where_ecmt_v1_stops()
    {
        // A threshold this random model reaches by step 10 (its probabilities stay near 1/10).
        var every = await _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, seed: 3, maxSteps: 30));
        double threshold = every.Take(10).Max(u => u.Confidence);
        var confident = Requests.Tensor(TestModels.Tiny, seed: 3, maxSteps: 30);
        confident.Stop = new Protos.V1.StopPolicy { MinConfidence = threshold };
        var byV1 = await _host.Client.RunAsync(confident);
        var byOip = await Oip.ModelInferAsync(OipRequests.Pixels(TestModels.Tiny, seed: 3, maxSteps: 30).With("min_confidence", threshold));
        Assert.InRange(byV1.Count, 1, 10);
        Assert.Equal(byV1.Count, byOip.Step());
        Assert.Equal("confident", byOip.StopReason());

        var stable = Requests.Tensor(TestModels.Tiny, seed: 3, maxSteps: 30);
        stable.Stop = new Protos.V1.StopPolicy { StableSteps = 2 };
        byV1 = await _host.Client.RunAsync(stable);
        byOip = await Oip.ModelInferAsync(OipRequests.Pixels(TestModels.Tiny, seed: 3, maxSteps: 30).With("stable_steps", 2L));
        Assert.Equal(byV1.Count, byOip.Step());
        Assert.Equal(byV1[^1].StopReason == Protos.V1.StopReason.Stable ? "stable" : "max_steps", byOip.StopReason());
        Assert.True(byOip.Step() < 30, "the stable rule stopped before max_steps");
    }

    [Fact]
    public async Task The_recommended_policy_and_combined_rules_stop_where_ecmt_v1_stops()
    {
        var recommended = Requests.Tensor(TestModels.Tiny, seed: 5, maxSteps: 30);
        recommended.Stop = new Protos.V1.StopPolicy { Recommended = true };
        var byV1 = await _host.Client.RunAsync(recommended);
        var byOip = await Oip.ModelInferAsync(OipRequests.Pixels(TestModels.Tiny, seed: 5, maxSteps: 30).With("recommended", true));
        Assert.Equal(byV1.Count, byOip.Step());
        Assert.Equal(byV1[^1].StopReason == Protos.V1.StopReason.Policy ? "policy" : "max_steps", byOip.StopReason());

        // Every rule given must hold: min_steps holds the stable rule back until step 5.
        var combined = Requests.Tensor(TestModels.Tiny, seed: 5, maxSteps: 30);
        combined.Stop = new Protos.V1.StopPolicy { StableSteps = 1, MinSteps = 5 };
        byV1 = await _host.Client.RunAsync(combined);
        byOip = await Oip.ModelInferAsync(OipRequests.Pixels(TestModels.Tiny, seed: 5, maxSteps: 30).With("stable_steps", 1L).With("min_steps", 5L));
        Assert.InRange(byV1.Count, 5, 30);
        Assert.Equal(byV1.Count, byOip.Step());
    }

    [Fact]
    public async Task Outputs_can_be_chosen_and_the_classification_extension_names_the_top_classes()
    {
        var request = OipRequests.Pixels(TestModels.Tiny, seed: 5, maxSteps: 2).Output("step").Output("probabilities", classification: 3);
        var response = await Oip.ModelInferAsync(request);
        Assert.Equal(["step", "probabilities"], response.Outputs.Select(o => o.Name));
        var classes = response.Output("probabilities");
        Assert.Equal("BYTES", classes.Datatype);
        Assert.Equal([1L, 3], classes.Shape);

        var all = await Oip.ModelInferAsync(OipRequests.Pixels(TestModels.Tiny, seed: 5, maxSteps: 2));
        var p = all.Probabilities();
        var best = Enumerable.Range(0, p.Length).OrderByDescending(i => p[i]).Take(3).ToArray();
        var entries = classes.Contents.BytesContents.Select(b => b.ToStringUtf8().Split(':')).ToArray();
        Assert.Equal(best, entries.Select(e => int.Parse(e[1])));
        Assert.Equal(best.Select(i => p[i]), entries.Select(e => float.Parse(e[0], System.Globalization.CultureInfo.InvariantCulture)));
        Assert.Equal(best.Select(i => Engine.Data.FashionMnist.ClassNames[i]), entries.Select(e => e[2]));
    }

    [Fact]
    public async Task ModelStreamInfer_sends_one_response_per_step_the_last_one_final()
    {
        var updates = await _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, seed: 9, maxSteps: 4, topK: 10));
        var responses = await Oip.StreamAsync(OipRequests.Pixels(TestModels.Tiny, seed: 9, maxSteps: 4, id: "r1"));

        Assert.Equal(4, responses.Count);
        Assert.All(responses, r => Assert.Equal("", r.ErrorMessage));
        Assert.All(responses, r => Assert.Equal("r1", r.InferResponse.Id));
        Assert.Equal([false, false, false, true], responses.Select(r => r.InferResponse.Final()));
        Assert.Equal(["", "", "", "max_steps"], responses.Select(r => r.InferResponse.StopReason()));
        for (int i = 0; i < 4; i++) AssertSameStep(updates[i], responses[i].InferResponse);
    }

    [Fact]
    public async Task Requests_on_one_stream_run_side_by_side_and_a_bad_one_gets_an_error_response_while_the_others_go_on()
    {
        var responses = await Oip.StreamAsync(
            OipRequests.Pixels(TestModels.Tiny, maxSteps: 3, id: "a"),
            OipRequests.Pixels("nope", id: "bad"),
            OipRequests.Pixels(TestModels.Deep, maxSteps: 2, id: "b"));

        var byId = responses.GroupBy(r => r.InferResponse.Id).ToDictionary(g => g.Key, g => g.ToList());
        Assert.Equal([1L, 2, 3], byId["a"].Select(r => r.InferResponse.Step()));
        Assert.Equal([1L, 2], byId["b"].Select(r => r.InferResponse.Step()));
        Assert.True(byId["a"][^1].InferResponse.Final());
        Assert.True(byId["b"][^1].InferResponse.Final());

        var error = Assert.Single(byId["bad"]);
        Assert.Contains("'nope' is not hosted", error.ErrorMessage, StringComparison.Ordinal);
        Assert.Equal("NOT_FOUND", error.InferResponse.Parameters["status"].StringParam);
        Assert.True(error.InferResponse.Final());
        Assert.Equal("nope", error.InferResponse.ModelName);
        Assert.Empty(error.InferResponse.Outputs);
    }

    [Fact]
    public async Task An_empty_final_response_ends_the_stream_when_the_client_asks_for_one()
    {
        var responses = await Oip.StreamAsync(OipRequests.Pixels(TestModels.Tiny, maxSteps: 3, id: "e").With("triton_enable_empty_final_response", true));
        Assert.Equal(4, responses.Count);
        Assert.Equal([false, false, false, true], responses.Select(r => r.InferResponse.Final()));
        Assert.Equal(3, responses[2].InferResponse.Step());
        Assert.Equal("max_steps", responses[2].InferResponse.StopReason());
        Assert.Empty(responses[3].InferResponse.Outputs);
        Assert.Equal("e", responses[3].InferResponse.Id);
    }

    [Fact]
    public async Task Cancelling_ModelStreamInfer_stops_the_engine_within_one_step()
    {
        var model = _host.Model(TestModels.Deep);
        var run = model.NextRun();
        using var cts = new CancellationTokenSource();
        using var call = Oip.ModelStreamInfer(cancellationToken: cts.Token);
        await call.RequestStream.WriteAsync(OipRequests.Pixels(TestModels.Deep, maxSteps: 100_000));
        int received = 0;
        while (await call.ResponseStream.MoveNext(CancellationToken.None))
            if (++received == 3) break;
        cts.Cancel();

        var summary = await run.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(summary.Cancelled);
        Assert.InRange(summary.StepsAfterCancellation!.Value, 0, 1);
        Assert.InRange(summary.StepsRun, 3, 10_000);
        Assert.Equal(0, model.ActiveSessions);
    }

    /// <summary>Each mistake, sent once through ecmt.v1 Classify and once through ModelInfer (and once in a stream).</summary>
    public static TheoryData<string> Mistakes => [.. Cases.Keys];

    /// <summary>Each mistake as an ecmt.v1 request and an OIP request, and a fragment both messages share.</summary>
    static readonly Dictionary<string, (Func<ClassifyRequest> V1, Func<ModelInferRequest> Oip, string Says)> Cases = new()
    {
        ["unknown model"] = (() => Requests.Tensor("nope"), () => OipRequests.Pixels("nope"), "'nope' is not hosted here; hosted: broken, deep, tiny"),
        ["no model"] = (() => Requests.Tensor(""), () => OipRequests.Pixels(""), "is missing: name a hosted model"),
        ["too many steps"] = (() => Requests.Tensor(TestModels.Tiny, maxSteps: 100_001), () => OipRequests.Pixels(TestModels.Tiny, maxSteps: 100_001),
            "max_steps is 100001; this server runs at most 100000"),
        ["confidence above 1"] = (() => WithStop(new Protos.V1.StopPolicy { MinConfidence = 1.5 }), () => OipRequests.Pixels(TestModels.Tiny).With("min_confidence", 1.5),
            "min_confidence is 1.5"),
        ["stable steps 0"] = (() => WithStop(new Protos.V1.StopPolicy { StableSteps = 0 }), () => OipRequests.Pixels(TestModels.Tiny).With("stable_steps", 0L),
            "stable_steps is 0"),
        ["min steps 0"] = (() => WithStop(new Protos.V1.StopPolicy { MinSteps = 0 }), () => OipRequests.Pixels(TestModels.Tiny).With("min_steps", 0L),
            "min_steps is 0"),
        ["no recommended policy"] = (() => WithStop(new Protos.V1.StopPolicy { Recommended = true }, TestModels.Deep),
            () => OipRequests.Pixels(TestModels.Deep).With("recommended", true), "no recommended stop policy"),
        ["corrupt image"] = (() => Requests.Image(TestModels.Tiny, "not an image"u8.ToArray()), () => OipRequests.Image(TestModels.Tiny, "not an image"u8.ToArray()),
            "is not a decodable PNG or JPEG"),
        ["truncated image"] = (() => Requests.Image(TestModels.Tiny, TestModels.Png(1)[..100]), () => OipRequests.Image(TestModels.Tiny, TestModels.Png(1)[..100]),
            "corrupt or truncated"),
        ["value outside [0, 1]"] = (() => Bright(Requests.Tensor(TestModels.Tiny)), () => Bright(OipRequests.Pixels(TestModels.Tiny)), "[5] is 255: intensities must lie in [0, 1]"),
        ["model failed to load"] = (() => Requests.Tensor(TestModels.Broken), () => OipRequests.Pixels(TestModels.Broken), "'broken' failed to load"),
        ["oversized message"] = (() => Requests.Image(TestModels.Tiny, new byte[100_000]), () => OipRequests.Image(TestModels.Tiny, new byte[100_000]), ""),
    };

    static ClassifyRequest WithStop(Protos.V1.StopPolicy stop, string model = TestModels.Tiny)
    {
        var request = Requests.Tensor(model);
        request.Stop = stop;
        return request;
    }

    static ClassifyRequest Bright(ClassifyRequest request)
    {
        request.Tensor.Data[5] = 255f;
        return request;
    }

    static ModelInferRequest Bright(ModelInferRequest request)
    {
        request.Inputs[0].Contents.Fp32Contents[5] = 255f;
        return request;
    }

    [Theory]
    [MemberData(nameof(Mistakes))]
    public async Task Each_mistake_gets_the_status_ecmt_v1_gives_it(string mistake)
    {
        var (v1, oip, says) = Cases[mistake];
        var expected = await Requests.StatusOf(() => _host.Client.RunAsync(v1()));
        Assert.NotEqual(StatusCode.OK, expected.StatusCode);
        var status = await Requests.StatusOf(() => Oip.ModelInferAsync(oip()).ResponseAsync);
        Assert.Equal(expected.StatusCode, status.StatusCode);
        Assert.Contains(says, expected.Detail, StringComparison.Ordinal);
        Assert.Contains(says, status.Detail, StringComparison.Ordinal);

        if (expected.StatusCode != StatusCode.ResourceExhausted)
        {
            // In a stream the same mistake is one error response (Triton's shape) carrying the same class.
            var responses = await Oip.StreamAsync(oip(), OipRequests.Pixels(TestModels.Tiny, maxSteps: 1, id: "after"));
            var error = Assert.Single(responses, r => r.ErrorMessage != "");
            Assert.Equal(ServerMetrics.CodeName(expected.StatusCode), error.InferResponse.Parameters["status"].StringParam);
            Assert.Equal(status.Detail, error.ErrorMessage);
            Assert.Contains(responses, r => r.InferResponse.Id == "after" && r.InferResponse.Final() == true);
        }
        await StillServes();
    }

    [Fact]
    public async Task Mistakes_of_the_protocol_itself_are_invalid_arguments_naming_the_fault()
    {
        async Task Expect(string fragment, ModelInferRequest request)
        {
            var status = await Requests.StatusOf(() => Oip.ModelInferAsync(request).ResponseAsync);
            Assert.Equal(StatusCode.InvalidArgument, status.StatusCode);
            Assert.Contains(fragment, status.Detail, StringComparison.Ordinal);
        }

        var noInput = OipRequests.Pixels(TestModels.Tiny);
        noInput.Inputs.Clear();
        await Expect("inputs is empty", noInput);
        var two = OipRequests.Pixels(TestModels.Tiny);
        two.Inputs.Add(OipRequests.Image(TestModels.Tiny, TestModels.Png(1)).Inputs[0]);
        await Expect("2 inputs ('pixels', 'image')", two);
        var unknownInput = OipRequests.Pixels(TestModels.Tiny);
        unknownInput.Inputs[0].Name = "input0";
        await Expect("input 'input0' is unknown", unknownInput);
        var fp64 = OipRequests.Pixels(TestModels.Tiny);
        fp64.Inputs[0].Datatype = "FP64";
        await Expect("datatype 'FP64'; it must be FP32", fp64);
        var batch = OipRequests.Pixels(TestModels.Tiny);
        batch.Inputs[0].Shape[0] = 2;
        await Expect("shape [2, 1, 28, 28]; the model takes [1, 1, 28, 28]", batch);
        var twoImages = OipRequests.Image(TestModels.Tiny, TestModels.Png(1));
        twoImages.Inputs[0].Contents.BytesContents.Add(ByteString.CopyFrom(TestModels.Png(2)));
        await Expect("holds 2 elements", twoImages);
        var both = OipRequests.Image(TestModels.Tiny, TestModels.Png(1));
        both.RawInputContents.Add(ByteString.CopyFrom([1, 0, 0, 0, 7]));
        await Expect("both contents and raw_input_contents", both);
        var badRaw = OipRequests.Image(TestModels.Tiny, TestModels.Png(1), raw: true);
        badRaw.RawInputContents[0] = ByteString.CopyFrom([200, 0, 0, 0, 1, 2]);
        await Expect("claims 200 bytes", badRaw);
        await Expect("output 'logits' is unknown", OipRequests.Pixels(TestModels.Tiny).Output("logits"));
        await Expect("classification applies to 'probabilities' only", OipRequests.Pixels(TestModels.Tiny).Output("step", classification: 2));
        var textSteps = OipRequests.Pixels(TestModels.Tiny);
        textSteps.Parameters["max_steps"] = new InferParameter { StringParam = "ten" };
        await Expect("'max_steps' is the string \"ten\"; it must be an integer", textSteps);
        await StillServes();
    }

    [Fact]
    public async Task Classifications_beyond_the_limit_are_resource_exhausted_on_every_protocol()
    {
        using var cts = new CancellationTokenSource();
        using var first = _host.Client.Classify(Requests.Tensor(TestModels.Deep, maxSteps: 100_000), cancellationToken: cts.Token);
        using var second = Oip.ModelStreamInfer(cancellationToken: cts.Token);
        await second.RequestStream.WriteAsync(OipRequests.Pixels(TestModels.Deep, maxSteps: 100_000));
        Assert.True(await first.ResponseStream.MoveNext(CancellationToken.None));
        Assert.True(await second.ResponseStream.MoveNext(CancellationToken.None));

        var status = await Requests.StatusOf(() => Oip.ModelInferAsync(OipRequests.Pixels(TestModels.Tiny, maxSteps: 1)).ResponseAsync);
        Assert.Equal(StatusCode.ResourceExhausted, status.StatusCode);
        var v1 = await Requests.StatusOf(() => _host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 1)));
        Assert.Equal(StatusCode.ResourceExhausted, v1.StatusCode);

        cts.Cancel();
        var limiter = _host.App.Services.GetRequiredService<StreamLimiter>();
        for (var until = DateTime.UtcNow.AddSeconds(30); limiter.Active > 0 && DateTime.UtcNow < until;) await Task.Delay(10);
        Assert.Equal(0, limiter.Active);
        await StillServes();
    }

    async Task StillServes()
    {
        var response = await Oip.ModelInferAsync(OipRequests.Pixels(TestModels.Tiny, maxSteps: 2));
        Assert.Equal(2, response.Step());
    }
}
