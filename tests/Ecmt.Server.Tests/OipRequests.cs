using System.Buffers.Binary;
using Ecmt.Protos.Inference;
using Google.Protobuf;
using Grpc.Core;
using static Ecmt.Protos.Inference.ModelInferRequest.Types;

namespace Ecmt.Server.Tests;

/// <summary>Open Inference Protocol requests for the test models, and reading their responses.</summary>
static class OipRequests
{
    public static ModelInferRequest Pixels(string model, int seed = 7, long maxSteps = 6, string id = "")
    {
        var request = new ModelInferRequest { ModelName = model, Id = id };
        var input = new InferInputTensor { Name = "pixels", Datatype = "FP32", Contents = new InferTensorContents() };
        input.Shape.AddRange([1, 1, TestModels.Size, TestModels.Size]);
        input.Contents.Fp32Contents.AddRange(TestModels.Image(seed).Intensities);
        request.Inputs.Add(input);
        return request.With("max_steps", maxSteps);
    }

    public static ModelInferRequest Image(string model, byte[] encoded, long maxSteps = 6, bool raw = false)
    {
        var request = new ModelInferRequest { ModelName = model };
        var input = new InferInputTensor { Name = "image", Datatype = "BYTES" };
        input.Shape.Add(1);
        if (raw)
        {
            // raw_input_contents: a BYTES element is its 4-byte little-endian length, then its bytes.
            var bytes = new byte[4 + encoded.Length];
            BinaryPrimitives.WriteUInt32LittleEndian(bytes, (uint)encoded.Length);
            encoded.CopyTo(bytes, 4);
            request.RawInputContents.Add(ByteString.CopyFrom(bytes));
        }
        else
        {
            input.Contents = new InferTensorContents();
            input.Contents.BytesContents.Add(ByteString.CopyFrom(encoded));
        }
        request.Inputs.Add(input);
        return request.With("max_steps", maxSteps);
    }

    public static ModelInferRequest With(this ModelInferRequest request, string name, long value)
    {
        request.Parameters[name] = new InferParameter { Int64Param = value };
        return request;
    }

    public static ModelInferRequest With(this ModelInferRequest request, string name, double value)
    {
        request.Parameters[name] = new InferParameter { DoubleParam = value };
        return request;
    }

    public static ModelInferRequest With(this ModelInferRequest request, string name, bool value)
    {
        request.Parameters[name] = new InferParameter { BoolParam = value };
        return request;
    }

    public static ModelInferRequest Output(this ModelInferRequest request, string name, int? classification = null)
    {
        var output = new InferRequestedOutputTensor { Name = name };
        if (classification is int k) output.Parameters["classification"] = new InferParameter { Int64Param = k };
        request.Outputs.Add(output);
        return request;
    }

    public static ModelInferResponse.Types.InferOutputTensor Output(this ModelInferResponse response, string name) =>
        Assert.Single(response.Outputs, o => o.Name == name);

    public static float[] Probabilities(this ModelInferResponse response) => [.. response.Output("probabilities").Contents.Fp32Contents];
    public static long Step(this ModelInferResponse response) => Assert.Single(response.Output("step").Contents.Int64Contents);
    public static string StopReason(this ModelInferResponse response) => Assert.Single(response.Output("stop_reason").Contents.BytesContents).ToStringUtf8();
    public static ulong Sops(this ModelInferResponse response) => Assert.Single(response.Output("synaptic_operations").Contents.Uint64Contents);
    public static double Energy(this ModelInferResponse response) => Assert.Single(response.Output("energy_ratio").Contents.Fp64Contents);

    /// <summary>triton_final_response, or null when the response has none.</summary>
    public static bool? Final(this ModelInferResponse response) =>
        response.Parameters.TryGetValue("triton_final_response", out var p) ? p.BoolParam : null;

    /// <summary>Sends the requests on one ModelStreamInfer call, closes the sending side, and reads every response.</summary>
    public static async Task<List<ModelStreamInferResponse>> StreamAsync(this GRPCInferenceService.GRPCInferenceServiceClient client,
        params ModelInferRequest[] requests)
    {
        using var call = client.ModelStreamInfer();
        foreach (var request in requests) await call.RequestStream.WriteAsync(request);
        await call.RequestStream.CompleteAsync();
        var responses = new List<ModelStreamInferResponse>();
        await foreach (var response in call.ResponseStream.ReadAllAsync()) responses.Add(response);
        return responses;
    }
}
