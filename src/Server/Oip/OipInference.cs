using System.Buffers.Binary;
using System.Globalization;
using System.Reflection;
using Ecmt.Engine.Serving;
using Ecmt.Protos.Inference;
using Google.Protobuf;
using Google.Protobuf.Collections;
using Grpc.Core;
using static Ecmt.Protos.Inference.ModelInferResponse.Types;
using StopPolicy = Ecmt.Protos.StopPolicy;

namespace Ecmt.Server.Oip;

/// <summary>An Open Inference Protocol request checked and ready to run, with the outputs it asked for.</summary>
/// <param name="EmptyFinal">Triton's <c>triton_enable_empty_final_response</c>: end a stream with an empty response that carries the final flag.</param>
sealed record OipJob(ClassifyJob Job, string Id, IReadOnlyList<OipOutput> Outputs, bool EmptyFinal);

/// <summary>One output a request asked for; <paramref name="Classification"/>: Triton's classification extension (top k as "value:index:label").</summary>
sealed record OipOutput(string Name, int? Classification, MapField<string, InferParameter> Parameters);

/// <summary>
/// The classifier as the Open Inference Protocol (KServe v2) sees it, shared by the gRPC service and REST: metadata,
/// the request's parameters, inputs and outputs mapped onto a <see cref="ClassifyJob"/>, and every step as a
/// <see cref="ModelInferResponse"/> (REST writes the same message as JSON). Checks that are not the protocol's own
/// are <see cref="Classifications"/>', so the statuses and limits are those of ecmt.v1.
/// </summary>
sealed class OipInference(Classifications classifications)
{
    /// <summary>Every model has one version.</summary>
    public const string ModelVersion = "1";
    public const string Platform = "ecmt_spiking_vit";
    public const string PixelsInput = "pixels", ImageInput = "image";
    public const string Probabilities = "probabilities", Step = "step", StopReasonOutput = "stop_reason",
        SynapticOperations = "synaptic_operations", EnergyRatio = "energy_ratio";
    /// <summary>The outputs in the order ModelMetadata lists them (and a request without outputs gets them).</summary>
    public static readonly string[] OutputNames = [Probabilities, Step, StopReasonOutput, SynapticOperations, EnergyRatio];
    /// <summary>Triton's extensions this server speaks (ServerMetadata).</summary>
    public static readonly string[] Extensions = ["classification", "parameters", "binary_tensor_data"];

    /// <summary>Request parameters read (anything else is ignored, as the protocol's custom parameters are).</summary>
    public const string MaxStepsParameter = "max_steps", MinConfidenceParameter = "min_confidence", StableStepsParameter = "stable_steps";
    public const string MinStepsParameter = "min_steps", MinMarginParameter = "min_margin", MinGateParameter = "min_gate", RecommendedParameter = "recommended";
    /// <summary>Triton's reserved parameters for decoupled streams.</summary>
    public const string EmptyFinalParameter = "triton_enable_empty_final_response", FinalParameter = "triton_final_response";
    /// <summary>The status class of an error response in a stream (the gRPC code name, e.g. NOT_FOUND): Ecmt's own parameter.</summary>
    public const string StatusParameter = "status";

    public static string ServerVersion { get; } =
        typeof(OipInference).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "0";

    public Classifications Classifications => classifications;

    public static ServerMetadataResponse ServerMetadata()
    {
        var response = new ServerMetadataResponse { Name = "ecmt", Version = ServerVersion };
        response.Extensions.AddRange(Extensions);
        return response;
    }

    /// <summary>A hosted model by name; a version other than "" or "1" is NOT_FOUND.</summary>
    public HostedModel RequireModel(string? name, string? version, string field)
    {
        var model = classifications.RequireModel(name, field);
        if (!string.IsNullOrEmpty(version) && version != ModelVersion)
            throw Classifications.Fail(StatusCode.NotFound, $"model '{model.Name}' has no version '{version}'; its one version is {ModelVersion}");
        return model;
    }

    public static ModelMetadataResponse Metadata(HostedModel model)
    {
        var c = model.Config;
        var response = new ModelMetadataResponse { Name = model.Name, Platform = Platform };
        response.Versions.Add(ModelVersion);
        response.Inputs.Add(Tensor(PixelsInput, "FP32", 1, c.InChannels, c.ImageSize, c.ImageSize));
        response.Inputs.Add(Tensor(ImageInput, "BYTES", 1));
        response.Outputs.Add(Tensor(Probabilities, "FP32", 1, c.NumClasses));
        response.Outputs.Add(Tensor(Step, "INT64", 1));
        response.Outputs.Add(Tensor(StopReasonOutput, "BYTES", 1));
        response.Outputs.Add(Tensor(SynapticOperations, "UINT64", 1));
        response.Outputs.Add(Tensor(EnergyRatio, "FP64", 1));
        return response;
    }

    static ModelMetadataResponse.Types.TensorMetadata Tensor(string name, string datatype, params long[] shape)
    {
        var tensor = new ModelMetadataResponse.Types.TensorMetadata { Name = name, Datatype = datatype };
        tensor.Shape.AddRange(shape);
        return tensor;
    }

    /// <summary>Checks a request (in ecmt.v1's order: shutdown, model, steps, stop policy, outputs, input) and maps it onto a job.</summary>
    public OipJob Prepare(ModelInferRequest request)
    {
        classifications.RequireAccepting();
        var model = RequireModel(request.ModelName, request.ModelVersion, "model_name");
        var parameters = new Parameters(request.Parameters, "parameters");
        int maxSteps = classifications.Steps(parameters.Integer(MaxStepsParameter) ?? 0);
        var stop = StopPolicyOf(parameters);
        var outputs = OutputsOf(request, model);
        var input = InputOf(request, model);
        return new OipJob(new ClassifyJob(model, input, maxSteps, stop), request.Id, outputs, parameters.Bool(EmptyFinalParameter) ?? false);
    }

    /// <summary>The stop policy a request's parameters ask for (the names of ecmt.v1's StopPolicy fields): one line per rule.</summary>
    static StopPolicy StopPolicyOf(Parameters p) => Classifications.Validated(new StopPolicy
    {
        MinConfidence = p.Number(MinConfidenceParameter),
        StableSteps = Int(p.Integer(StableStepsParameter)),
        MinSteps = Int(p.Integer(MinStepsParameter)),
        MinMargin = p.Number(MinMarginParameter),
        MinGate = p.Number(MinGateParameter),
        IsRecommended = p.Bool(RecommendedParameter) ?? false,
    });

    static int? Int(long? value) => value is long k ? (int)Math.Clamp(k, int.MinValue, int.MaxValue) : null;

    static List<OipOutput> OutputsOf(ModelInferRequest request, HostedModel model)
    {
        if (request.Outputs.Count == 0) return OutputNames.Select(n => new OipOutput(n, null, [])).ToList();
        var outputs = new List<OipOutput>();
        foreach (var o in request.Outputs)
        {
            if (!OutputNames.Contains(o.Name))
                throw Classifications.Fail(StatusCode.InvalidArgument, $"output '{o.Name}' is unknown: the model's outputs are {string.Join(", ", OutputNames)}");
            if (outputs.Any(x => x.Name == o.Name))
                throw Classifications.Fail(StatusCode.InvalidArgument, $"output '{o.Name}' is asked for twice");
            var parameters = new Parameters(o.Parameters, $"output '{o.Name}' parameters");
            int? classification = null;
            if (parameters.Integer("classification") is long k)
            {
                if (o.Name != Probabilities)
                    throw Classifications.Fail(StatusCode.InvalidArgument, $"output '{o.Name}': classification applies to '{Probabilities}' only");
                if (k < 1) throw Classifications.Fail(StatusCode.InvalidArgument, $"output '{o.Name}': classification is {k}; ask for at least 1 class");
                classification = (int)Math.Min(k, model.Config.NumClasses);
            }
            outputs.Add(new OipOutput(o.Name, classification, o.Parameters));
        }
        return outputs;
    }

    static ModelInput InputOf(ModelInferRequest request, HostedModel model)
    {
        var c = model.Config;
        string expected = $"send one input: '{PixelsInput}' (FP32, shape [1, {c.InChannels}, {c.ImageSize}, {c.ImageSize}], intensities in [0, 1]) "
            + $"or '{ImageInput}' (BYTES, shape [1], a PNG or JPEG file)";
        if (request.Inputs.Count != 1)
            throw Classifications.Fail(StatusCode.InvalidArgument, request.Inputs.Count == 0
                ? $"inputs is empty: {expected}"
                : $"{request.Inputs.Count} inputs ({string.Join(", ", request.Inputs.Select(i => $"'{i.Name}'"))}): {expected}");
        if (request.RawInputContents.Count != 0 && request.RawInputContents.Count != request.Inputs.Count)
            throw Classifications.Fail(StatusCode.InvalidArgument, $"raw_input_contents has {request.RawInputContents.Count} entries for {request.Inputs.Count} input");
        var input = request.Inputs[0];
        ByteString? raw = request.RawInputContents.Count == 1 ? request.RawInputContents[0] : null;
        string where = $"input '{input.Name}'";
        if (raw is not null && input.Contents is { } contents && contents.CalculateSize() > 0)
            throw Classifications.Fail(StatusCode.InvalidArgument, $"{where} has both contents and raw_input_contents: send one");

        switch (input.Name)
        {
            case PixelsInput:
            {
                RequireDatatype(input, "FP32", where);
                long[] shape = [1, c.InChannels, c.ImageSize, c.ImageSize];
                if (!input.Shape.SequenceEqual(shape))
                    throw Classifications.Fail(StatusCode.InvalidArgument,
                        $"{where} has shape [{string.Join(", ", input.Shape)}]; the model takes [{string.Join(", ", shape)}] (one image: batch, C, H, W)");
                float[] data = raw is null ? [.. input.Contents?.Fp32Contents ?? []] : Floats(raw.Span, where);
                if (data.Length != c.PixelsPerImage)
                    throw Classifications.Fail(StatusCode.InvalidArgument, $"{where} holds {data.Length} values; shape [{string.Join(", ", shape)}] needs {c.PixelsPerImage}");
                return new ModelInput.Intensities([c.InChannels, c.ImageSize, c.ImageSize], data) { Where = where };
            }
            case ImageInput:
            {
                RequireDatatype(input, "BYTES", where);
                if (!input.Shape.SequenceEqual([1L]))
                    throw Classifications.Fail(StatusCode.InvalidArgument, $"{where} has shape [{string.Join(", ", input.Shape)}]; it takes [1] (one encoded image)");
                var elements = raw is null ? input.Contents?.BytesContents.Select(b => b.Memory).ToList() ?? [] : BytesElements(raw.Memory, where);
                if (elements.Count != 1)
                    throw Classifications.Fail(StatusCode.InvalidArgument, $"{where} holds {elements.Count} elements; shape [1] needs one PNG or JPEG file");
                return new ModelInput.Encoded(elements[0]) { Where = where };
            }
            default:
                throw Classifications.Fail(StatusCode.InvalidArgument, $"{where} is unknown: {expected}");
        }
    }

    static void RequireDatatype(ModelInferRequest.Types.InferInputTensor input, string datatype, string where)
    {
        if (input.Datatype != datatype)
            throw Classifications.Fail(StatusCode.InvalidArgument, $"{where} has datatype '{input.Datatype}'; it must be {datatype}");
    }

    /// <summary>Raw FP32 data: little-endian, 4 bytes per element.</summary>
    static float[] Floats(ReadOnlySpan<byte> raw, string where)
    {
        if (raw.Length % 4 != 0) throw Classifications.Fail(StatusCode.InvalidArgument, $"{where}: {raw.Length} raw bytes are not a whole number of FP32 values");
        var values = new float[raw.Length / 4];
        for (int i = 0; i < values.Length; i++) values[i] = BinaryPrimitives.ReadSingleLittleEndian(raw[(4 * i)..]);
        return values;
    }

    /// <summary>Raw BYTES data: each element a 4-byte little-endian length and then its bytes.</summary>
    static List<ReadOnlyMemory<byte>> BytesElements(ReadOnlyMemory<byte> raw, string where)
    {
        var elements = new List<ReadOnlyMemory<byte>>();
        for (int at = 0; at < raw.Length;)
        {
            if (raw.Length - at < 4) throw Classifications.Fail(StatusCode.InvalidArgument, $"{where}: raw BYTES data ends inside an element's 4-byte length");
            uint length = BinaryPrimitives.ReadUInt32LittleEndian(raw.Span[at..]);
            at += 4;
            if (length > raw.Length - at)
                throw Classifications.Fail(StatusCode.InvalidArgument, $"{where}: a raw BYTES element claims {length} bytes, {raw.Length - at} are left");
            elements.Add(raw.Slice(at, (int)length));
            at += (int)length;
        }
        return elements;
    }

    /// <summary>One step as a response with the outputs the request asked for.</summary>
    /// <param name="final">In a stream: the value of <c>triton_final_response</c>; null outside streams.</param>
    public static ModelInferResponse Response(OipJob job, StepResult step, bool? final)
    {
        var response = Header(job, final);
        foreach (var output in job.Outputs)
        {
            var tensor = new InferOutputTensor { Name = output.Name, Contents = new InferTensorContents() };
            var contents = tensor.Contents;
            switch (output.Name)
            {
                case Probabilities when output.Classification is int k:
                    tensor.Datatype = "BYTES";
                    tensor.Shape.Add([1, k]);
                    // Triton's classification extension: "<value>:<index>:<label>", best first.
                    foreach (var s in step.Top(k))
                        contents.BytesContents.Add(ByteString.CopyFromUtf8(FormattableString.Invariant($"{s.Probability:R}:{s.Index}:{s.Name}")));
                    break;
                case Probabilities:
                    tensor.Datatype = "FP32";
                    tensor.Shape.Add([1, step.Probabilities.Length]);
                    contents.Fp32Contents.Add(step.Probabilities);
                    break;
                case Step:
                    tensor.Datatype = "INT64";
                    tensor.Shape.Add(1);
                    contents.Int64Contents.Add(step.Step);
                    break;
                case StopReasonOutput:
                    tensor.Datatype = "BYTES";
                    tensor.Shape.Add(1);
                    contents.BytesContents.Add(ByteString.CopyFromUtf8(ReasonName(step.StopReason)));
                    break;
                case SynapticOperations:
                    tensor.Datatype = "UINT64";
                    tensor.Shape.Add(1);
                    contents.Uint64Contents.Add((ulong)step.SynapticOperations);
                    break;
                case EnergyRatio:
                    tensor.Datatype = "FP64";
                    tensor.Shape.Add(1);
                    contents.Fp64Contents.Add(step.EnergyRatio);
                    break;
            }
            response.Outputs.Add(tensor);
        }
        return response;
    }

    /// <summary>The response that ends a stream for a client that asked for an empty final response.</summary>
    public static ModelInferResponse EmptyFinal(OipJob job) => Header(job, final: true);

    static ModelInferResponse Header(OipJob job, bool? final)
    {
        var response = new ModelInferResponse { ModelName = job.Job.Model.Name, ModelVersion = ModelVersion, Id = job.Id };
        if (final is bool f) response.Parameters[FinalParameter] = new InferParameter { BoolParam = f };
        return response;
    }

    /// <summary>A failed request in a stream (Triton's shape): the message, and a response naming the request, marked final.</summary>
    public static ModelStreamInferResponse StreamError(ModelInferRequest request, Status status)
    {
        var response = new ModelStreamInferResponse
        {
            ErrorMessage = status.Detail,
            InferResponse = new ModelInferResponse { ModelName = request.ModelName, ModelVersion = request.ModelVersion, Id = request.Id },
        };
        response.InferResponse.Parameters[FinalParameter] = new InferParameter { BoolParam = true };
        response.InferResponse.Parameters[StatusParameter] = new InferParameter { StringParam = ServerMetrics.CodeName(status.StatusCode) };
        return response;
    }

    /// <summary>Whether a step's response is the last one of its stream.</summary>
    public static bool IsFinal(OipJob job, StepResult step) => step.StopReason != StopReason.None && !job.EmptyFinal;

    /// <summary>"max_steps", "confident", "stable", "policy" (a combined or recommended policy); "" on every step but the last.</summary>
    public static string ReasonName(StopReason reason) => reason switch
    {
        StopReason.MaxSteps => "max_steps",
        StopReason.Confident => "confident",
        StopReason.Stable => "stable",
        StopReason.Policy => "policy",
        _ => "",
    };

    /// <summary>Typed access to a parameter map; a value of the wrong type is INVALID_ARGUMENT naming it.</summary>
    readonly struct Parameters(MapField<string, InferParameter> map, string where)
    {
        /// <summary>An integer: int64_param, uint64_param, or a double_param holding a whole number.</summary>
        public long? Integer(string name) => Get(name) switch
        {
            null => null,
            { ParameterChoiceCase: InferParameter.ParameterChoiceOneofCase.Int64Param } p => p.Int64Param,
            { ParameterChoiceCase: InferParameter.ParameterChoiceOneofCase.Uint64Param } p => (long)Math.Min(p.Uint64Param, long.MaxValue),
            { ParameterChoiceCase: InferParameter.ParameterChoiceOneofCase.DoubleParam } p when p.DoubleParam == Math.Floor(p.DoubleParam)
                && Math.Abs(p.DoubleParam) < 9e18 => (long)p.DoubleParam,
            var p => throw Wrong(name, p, "an integer (int64_param or uint64_param)"),
        };

        /// <summary>A number: double_param, int64_param or uint64_param.</summary>
        public double? Number(string name) => Get(name) switch
        {
            null => null,
            { ParameterChoiceCase: InferParameter.ParameterChoiceOneofCase.DoubleParam } p => p.DoubleParam,
            { ParameterChoiceCase: InferParameter.ParameterChoiceOneofCase.Int64Param } p => p.Int64Param,
            { ParameterChoiceCase: InferParameter.ParameterChoiceOneofCase.Uint64Param } p => p.Uint64Param,
            var p => throw Wrong(name, p, "a number (double_param)"),
        };

        public bool? Bool(string name) => Get(name) switch
        {
            null => null,
            { ParameterChoiceCase: InferParameter.ParameterChoiceOneofCase.BoolParam } p => p.BoolParam,
            var p => throw Wrong(name, p, "a boolean (bool_param)"),
        };

        InferParameter? Get(string name) =>
            map.TryGetValue(name, out var p) && p.ParameterChoiceCase != InferParameter.ParameterChoiceOneofCase.None ? p : null;

        RpcException Wrong(string name, InferParameter p, string wanted) =>
            Classifications.Fail(StatusCode.InvalidArgument, $"{where}: '{name}' is {Describe(p)}; it must be {wanted}");

        static string Describe(InferParameter p) => p.ParameterChoiceCase switch
        {
            InferParameter.ParameterChoiceOneofCase.StringParam => $"the string \"{p.StringParam}\"",
            InferParameter.ParameterChoiceOneofCase.BoolParam => $"the boolean {(p.BoolParam ? "true" : "false")}",
            InferParameter.ParameterChoiceOneofCase.DoubleParam => $"the number {p.DoubleParam.ToString("R", CultureInfo.InvariantCulture)}",
            _ => p.ToString(),
        };
    }
}
