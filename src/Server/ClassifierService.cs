using System.Diagnostics;
using Ecmt.Engine.Serving;
using Ecmt.Protos.V1;
using Grpc.Core;
using ProtoStopReason = Ecmt.Protos.V1.StopReason;

namespace Ecmt.Server;

/// <summary>
/// The ecmt.v1.Classifier service: turns a request into a <see cref="ClassifyJob"/> and streams the engine's steps
/// back. Checks, admission and the status of every failure (the list is in classifier.proto) are
/// <see cref="Classifications"/>, shared with the Open Inference Protocol.
/// </summary>
sealed class ClassifierService(Classifications classifications) : Classifier.ClassifierBase
{
    const int DefaultTopK = 5;

    public override async Task Classify(ClassifyRequest request, IServerStreamWriter<ClassifyUpdate> responseStream, ServerCallContext context)
    {
        long received = Stopwatch.GetTimestamp();
        classifications.RequireAccepting();
        var model = classifications.RequireModel(request.Model, "model");
        int maxSteps = classifications.Steps(request.MaxSteps);
        var stop = StopPolicyOf(request);
        int topK = request.TopK == 0 ? DefaultTopK : (int)Math.Min(request.TopK, (uint)model.Config.NumClasses);
        ModelInput input = request.InputCase switch
        {
            ClassifyRequest.InputOneofCase.Image => new ModelInput.Encoded(request.Image.Memory) { Where = "image" },
            ClassifyRequest.InputOneofCase.Tensor => new ModelInput.Intensities(
                request.Tensor.Shape.Select(d => (int)Math.Min(d, int.MaxValue)).ToArray(), request.Tensor.Data.ToArray()),
            _ => throw Classifications.Fail(StatusCode.InvalidArgument,
                "input is missing: set image (PNG or JPEG bytes) or tensor (intensities in [0, 1], shape (C, H, W))"),
        };

        await classifications.RunAsync(new ClassifyJob(model, input, maxSteps, stop), async step =>
        {
            var update = new ClassifyUpdate
            {
                Step = (uint)step.Step,
                Confidence = step.Confidence,
                SynapticOperations = (ulong)step.SynapticOperations,
                EnergyRatio = step.EnergyRatio,
                FiringRate = step.FiringRate,
                StepMs = step.StepMilliseconds,
                ElapsedMs = Stopwatch.GetElapsedTime(received, step.CompletedTimestamp).TotalMilliseconds,
                StopReason = ReasonOf(step.StopReason),
                Margin = step.Margin,
            };
            if (step.Gate is float gate) update.Gate = gate;
            foreach (var score in step.Top(topK))
                update.Top.Add(new Protos.V1.ClassScore { Index = (uint)score.Index, Name = score.Name, Probability = score.Probability });
            await responseStream.WriteAsync(update, context.CancellationToken);
        }, context.Deadline, context.CancellationToken);
    }

    public override Task<ListModelsResponse> ListModels(ListModelsRequest request, ServerCallContext context)
    {
        var response = new ListModelsResponse();
        response.Models.AddRange(classifications.Models.Select(m => Describe(classifications, m)));
        return Task.FromResult(response);
    }

    public override Task<ModelInfo> GetModel(GetModelRequest request, ServerCallContext context) =>
        Task.FromResult(Describe(classifications, classifications.RequireModel(request.Name, "name")));

    /// <summary>The request's stop policy (absent: none), with an out-of-range value refused as INVALID_ARGUMENT.</summary>
    static Protos.StopPolicy StopPolicyOf(ClassifyRequest request) => Classifications.Validated(Protos.StopPolicy.FromProto(request.Stop));

    /// <summary>The model as ListModels and GetModel describe it (also served as JSON at /ecmt/v1/models for the page).</summary>
    internal static ModelInfo Describe(Classifications classifications, HostedModel model)
    {
        var c = model.Config;
        var info = new ModelInfo
        {
            Name = model.Name,
            Channels = (uint)c.InChannels,
            ImageSize = (uint)c.ImageSize,
            PatchSize = (uint)c.PatchSize,
            EmbedDim = (uint)c.EmbedDim,
            Depth = (uint)c.Depth,
            NumHeads = (uint)c.NumHeads,
            Layout = c.LayoutText,
            MlpDim = (uint)c.MlpDim,
            DefaultSteps = (uint)classifications.DefaultSteps,
            MaxSteps = (uint)classifications.MaxSteps,
            Backend = model.BackendName ?? Kernels.Backends.NameOf(classifications.Host.Backend),
            Ready = classifications.ModelReady(model),
            HealthService = HealthNames.Model(model.Name),
        };
        info.ClassNames.AddRange(c.ClassNames);
        if (model.Settings is { } s)
        {
            info.Preset = s.Preset ?? "custom";
            info.Thresholds = s.Granularity == Engine.Conversion.ThresholdGranularity.PerTensor ? "per-tensor" : "per-channel";
            foreach (var place in Engine.Conversion.Places.All) info.Levels[Engine.Conversion.Places.Key(place)] = (uint)s.LevelsAt(place);
        }
        if (model.Confidence is { } confidence)
        {
            info.TemperaturesCalibrated = confidence.IsCalibrated;
            info.Gate = confidence.Gate is not null;
        }
        if (model.RecommendedStop is { } recommended)
        {
            info.RecommendedStop = recommended.ToProto();
            if (model.RecommendedStopValidation is { } v)
                info.RecommendedStopStats = new RecommendedStopStats
                {
                    Images = (uint)v.Images, AnnTop1 = v.AnnTop1, Top1 = v.Top1, MeanSteps = v.MeanSteps, MaxSteps = (uint)v.MaxSteps,
                };
        }
        return info;
    }

    static ProtoStopReason ReasonOf(Engine.Serving.StopReason reason) => reason switch
    {
        Engine.Serving.StopReason.MaxSteps => ProtoStopReason.MaxSteps,
        Engine.Serving.StopReason.Confident => ProtoStopReason.Confident,
        Engine.Serving.StopReason.Stable => ProtoStopReason.Stable,
        Engine.Serving.StopReason.Policy => ProtoStopReason.Policy,
        _ => ProtoStopReason.Unspecified,
    };
}
