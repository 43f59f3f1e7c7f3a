using System.Buffers.Binary;
using System.Text.Json;
using System.Text.Json.Serialization;
using Ecmt.Protos.Inference;
using Google.Protobuf;
using Grpc.Core;

namespace Ecmt.Server.Oip;

// The Open Inference Protocol's REST objects (KServe v2, "HTTP/REST": $inference_request, $inference_response, the
// metadata and error objects), as the server reads and writes them. Property names are snake_case through
// RestJson.Options, which is also the options the OpenAPI description is generated with.

/// <summary>$inference_request.</summary>
public sealed record InferenceRequestJson(string? Id, Dictionary<string, JsonElement>? Parameters, List<RequestInputJson>? Inputs, List<RequestOutputJson>? Outputs);

/// <summary>$request_input: data is a JSON array, flat or nested (row-major); BYTES elements are base64 strings.</summary>
public sealed record RequestInputJson(string? Name, long[]? Shape, string? Datatype, Dictionary<string, JsonElement>? Parameters, JsonElement Data);

/// <summary>$request_output.</summary>
public sealed record RequestOutputJson(string? Name, Dictionary<string, JsonElement>? Parameters);

/// <summary>$inference_response (also each line of the streaming endpoint).</summary>
public sealed record InferenceResponseJson(string ModelName, string ModelVersion, string? Id, Dictionary<string, object>? Parameters, List<ResponseOutputJson> Outputs);

/// <summary>$response_output: data is a flat array (numbers, or strings for BYTES); absent when sent as binary data.</summary>
public sealed record ResponseOutputJson(string Name, long[] Shape, string Datatype, Dictionary<string, object>? Parameters, object? Data);

/// <summary>$metadata_server_response.</summary>
public sealed record ServerMetadataJson(string Name, string Version, string[] Extensions);

/// <summary>$metadata_model_response.</summary>
public sealed record ModelMetadataJson(string Name, string[] Versions, string Platform, TensorMetadataJson[] Inputs, TensorMetadataJson[] Outputs);

/// <summary>$metadata_tensor.</summary>
public sealed record TensorMetadataJson(string Name, string Datatype, long[] Shape);

/// <summary>$live_server_response.</summary>
public sealed record LiveJson(bool Live);

/// <summary>$ready_server_response (and, with the name, $ready_model_response).</summary>
public sealed record ReadyJson(bool Ready, string? Name = null);

/// <summary>The error object of every endpoint; <see cref="Status"/> (Ecmt's, the gRPC code name) only on a line of the streaming endpoint, whose HTTP status is already 200.</summary>
public sealed record ErrorJson(string Error, string? Status = null);

/// <summary>Conversions between the REST objects and the protocol's messages, which the gRPC service uses too.</summary>
static class RestJson
{
    /// <summary>Triton's binary tensor data extension: the JSON's length when binary data follows it in the body.</summary>
    public const string HeaderLength = "Inference-Header-Content-Length";

    public static readonly JsonSerializerOptions Options = Configure(new JsonSerializerOptions(JsonSerializerDefaults.Web));

    public static JsonSerializerOptions Configure(JsonSerializerOptions options)
    {
        options.PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower;
        options.DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull;
        // Messages quote names ('nope'); this is JSON for API clients, not text embedded in HTML.
        options.Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping;
        return options;
    }

    /// <summary>
    /// A REST request as the protocol's message. <paramref name="binary"/>: what followed the JSON in the body (binary
    /// tensor data extension), consumed in input order by inputs with the parameter binary_data_size.
    /// </summary>
    public static ModelInferRequest ToMessage(string model, string? version, InferenceRequestJson json, ReadOnlyMemory<byte> binary)
    {
        var request = new ModelInferRequest { ModelName = model, ModelVersion = version ?? "", Id = json.Id ?? "" };
        AddParameters(request.Parameters, json.Parameters, "parameters");
        var inputs = json.Inputs ?? [];
        int binaryInputs = inputs.Count(i => i.Parameters?.ContainsKey("binary_data_size") == true);
        if (binaryInputs > 0 && binaryInputs != inputs.Count)
            throw Invalid("send every input as binary data or none (raw contents are all or nothing)");
        int at = 0;
        foreach (var (input, n) in inputs.Select((x, n) => (x, n)))
        {
            string where = $"inputs[{n}]";
            var tensor = new ModelInferRequest.Types.InferInputTensor { Name = input.Name ?? "", Datatype = input.Datatype ?? "" };
            tensor.Shape.AddRange(input.Shape ?? []);
            AddParameters(tensor.Parameters, input.Parameters, $"{where}.parameters");
            if (tensor.Parameters.Remove("binary_data_size", out var size))
            {
                long length = size.ParameterChoiceCase == InferParameter.ParameterChoiceOneofCase.Int64Param ? size.Int64Param : -1;
                if (length < 0 || length > binary.Length - at)
                    throw Invalid($"{where}: binary_data_size {length} does not fit the {binary.Length - at} binary bytes left after the JSON");
                request.RawInputContents.Add(ByteString.CopyFrom(binary.Span.Slice(at, (int)length)));
                at += (int)length;
            }
            else
                tensor.Contents = Contents(tensor.Datatype, input.Data, where);
            request.Inputs.Add(tensor);
        }
        if (at != binary.Length) throw Invalid($"{binary.Length - at} bytes of binary data after the JSON belong to no input");
        foreach (var output in json.Outputs ?? [])
        {
            var requested = new ModelInferRequest.Types.InferRequestedOutputTensor { Name = output.Name ?? "" };
            AddParameters(requested.Parameters, output.Parameters, $"output '{output.Name}' parameters");
            request.Outputs.Add(requested);
        }
        return request;
    }

    static void AddParameters(Google.Protobuf.Collections.MapField<string, InferParameter> target, Dictionary<string, JsonElement>? source, string where)
    {
        foreach (var (name, value) in source ?? [])
            target[name] = value.ValueKind switch
            {
                JsonValueKind.True or JsonValueKind.False => new InferParameter { BoolParam = value.GetBoolean() },
                JsonValueKind.Number when value.TryGetInt64(out long i) => new InferParameter { Int64Param = i },
                JsonValueKind.Number => new InferParameter { DoubleParam = value.GetDouble() },
                JsonValueKind.String => new InferParameter { StringParam = value.GetString() },
                _ => throw Invalid($"{where}: '{name}' is a JSON {value.ValueKind.ToString().ToLowerInvariant()}; a parameter is a string, a number or a boolean"),
            };
    }

    /// <summary>$tensor_data as the protocol's typed contents: FP32 numbers, or BYTES as base64 strings (the file's bytes).</summary>
    static InferTensorContents Contents(string datatype, JsonElement data, string where)
    {
        var contents = new InferTensorContents();
        if (data.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null) return contents;
        if (data.ValueKind != JsonValueKind.Array) throw Invalid($"{where}.data is a JSON {data.ValueKind.ToString().ToLowerInvariant()}; it must be an array");
        int index = 0;
        foreach (var element in Flatten(data))
        {
            switch (datatype)
            {
                case "FP32" when element.ValueKind == JsonValueKind.Number:
                    contents.Fp32Contents.Add(element.GetSingle());
                    break;
                case "FP32":
                    throw Invalid($"{where}.data[{index}] is a JSON {element.ValueKind.ToString().ToLowerInvariant()}; FP32 data are numbers");
                case "BYTES" when element.ValueKind == JsonValueKind.String:
                    if (!element.TryGetBytesFromBase64(out var bytes))
                        throw Invalid($"{where}.data[{index}] is not base64: in JSON a BYTES element holding a PNG or JPEG file is the file's base64 "
                            + "(or send the file as binary data: parameter binary_data_size and header Inference-Header-Content-Length)");
                    contents.BytesContents.Add(ByteString.CopyFrom(bytes));
                    break;
                case "BYTES":
                    throw Invalid($"{where}.data[{index}] is a JSON {element.ValueKind.ToString().ToLowerInvariant()}; BYTES data are strings");
                default:
                    // Other data types are refused by the model's input checks, which name what it takes.
                    return contents;
            }
            index++;
        }
        return contents;
    }

    static IEnumerable<JsonElement> Flatten(JsonElement element)
    {
        if (element.ValueKind != JsonValueKind.Array)
        {
            yield return element;
            yield break;
        }
        foreach (var item in element.EnumerateArray())
            foreach (var leaf in Flatten(item))
                yield return leaf;
    }

    /// <summary>
    /// A response message as the REST object. Outputs named in <paramref name="binaryOutputs"/> leave their data out of
    /// the JSON (parameter binary_data_size instead) and append it to <paramref name="binary"/>.
    /// </summary>
    public static InferenceResponseJson FromMessage(ModelInferResponse response, ISet<string>? binaryOutputs = null, Stream? binary = null)
    {
        var outputs = new List<ResponseOutputJson>();
        foreach (var o in response.Outputs)
        {
            var parameters = o.Parameters.Count == 0 ? null : o.Parameters.ToDictionary(p => p.Key, p => Value(p.Value));
            object data = Data(o);
            if (binaryOutputs?.Contains(o.Name) == true && binary is not null)
            {
                var raw = Raw(o);
                binary.Write(raw);
                (parameters ??= [])["binary_data_size"] = (long)raw.Length;
                outputs.Add(new ResponseOutputJson(o.Name, [.. o.Shape], o.Datatype, parameters, null));
            }
            else
                outputs.Add(new ResponseOutputJson(o.Name, [.. o.Shape], o.Datatype, parameters, data));
        }
        var responseParameters = response.Parameters.Count == 0 ? null : response.Parameters.ToDictionary(p => p.Key, p => Value(p.Value));
        return new InferenceResponseJson(response.ModelName, response.ModelVersion, string.IsNullOrEmpty(response.Id) ? null : response.Id, responseParameters, outputs);
    }

    static object Value(InferParameter p) => p.ParameterChoiceCase switch
    {
        InferParameter.ParameterChoiceOneofCase.BoolParam => p.BoolParam,
        InferParameter.ParameterChoiceOneofCase.Int64Param => p.Int64Param,
        InferParameter.ParameterChoiceOneofCase.Uint64Param => p.Uint64Param,
        InferParameter.ParameterChoiceOneofCase.DoubleParam => p.DoubleParam,
        _ => p.StringParam,
    };

    /// <summary>The typed contents as a flat JSON array; BYTES as UTF-8 text (every BYTES output of the model is text).</summary>
    static object Data(ModelInferResponse.Types.InferOutputTensor o)
    {
        var c = o.Contents ?? new InferTensorContents();
        return o.Datatype switch
        {
            "FP32" => c.Fp32Contents.ToArray(),
            "FP64" => c.Fp64Contents.ToArray(),
            "INT64" => c.Int64Contents.ToArray(),
            "UINT64" => c.Uint64Contents.ToArray(),
            "BYTES" => c.BytesContents.Select(b => b.ToStringUtf8()).ToArray(),
            _ => throw new InvalidOperationException($"output '{o.Name}' has datatype {o.Datatype}, which RestJson does not write"),
        };
    }

    /// <summary>The binary tensor data extension's layout: little-endian elements; a BYTES element is a 4-byte length and its bytes.</summary>
    static byte[] Raw(ModelInferResponse.Types.InferOutputTensor o)
    {
        var c = o.Contents ?? new InferTensorContents();
        var buffer = new List<byte>();
        Span<byte> word = stackalloc byte[8];
        switch (o.Datatype)
        {
            case "FP32":
                foreach (var v in c.Fp32Contents) { BinaryPrimitives.WriteSingleLittleEndian(word, v); buffer.AddRange(word[..4]); }
                break;
            case "FP64":
                foreach (var v in c.Fp64Contents) { BinaryPrimitives.WriteDoubleLittleEndian(word, v); buffer.AddRange(word); }
                break;
            case "INT64":
                foreach (var v in c.Int64Contents) { BinaryPrimitives.WriteInt64LittleEndian(word, v); buffer.AddRange(word); }
                break;
            case "UINT64":
                foreach (var v in c.Uint64Contents) { BinaryPrimitives.WriteUInt64LittleEndian(word, v); buffer.AddRange(word); }
                break;
            case "BYTES":
                foreach (var v in c.BytesContents)
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(word, (uint)v.Length);
                    buffer.AddRange(word[..4]);
                    buffer.AddRange(v.Span);
                }
                break;
            default:
                throw new InvalidOperationException($"output '{o.Name}' has datatype {o.Datatype}, which RestJson does not write");
        }
        return [.. buffer];
    }

    public static ServerMetadataJson FromMessage(ServerMetadataResponse m) => new(m.Name, m.Version, [.. m.Extensions]);

    public static ModelMetadataJson FromMessage(ModelMetadataResponse m) => new(m.Name, [.. m.Versions], m.Platform,
        [.. m.Inputs.Select(Tensor)], [.. m.Outputs.Select(Tensor)]);

    static TensorMetadataJson Tensor(ModelMetadataResponse.Types.TensorMetadata t) => new(t.Name, t.Datatype, [.. t.Shape]);

    static RpcException Invalid(string message) => Classifications.Fail(StatusCode.InvalidArgument, message);
}
