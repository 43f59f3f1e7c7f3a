using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using Ecmt.Protos.Inference;
using Ecmt.Protos.V1;
using Google.Protobuf;
using Grpc.Core;
using SkiaSharp;
using static Ecmt.Protos.Inference.ModelInferRequest.Types;

namespace Ecmt.Server.Tests;

/// <summary>
/// Hostile input on the request path of a real Kestrel server: mutated PNG and JPEG files, headers that declare huge
/// sizes, random bytes sent raw as gRPC messages over HTTP/2, and tensors of every wrong shape, over ecmt.v1 and the
/// Open Inference Protocol. A bounded, seeded number of cases (ECMT_FUZZ_CASES, default 1000; ECMT_FUZZ_SEED). Every
/// case must end with a status of its class (OK or a client error; never INTERNAL or UNKNOWN) within the per-request
/// bound, the process's memory must stay bounded, and the server must still classify afterwards.
/// </summary>
public sealed class FuzzTests
{
    /// <summary>Per-request bound: the call's deadline, and the most a case may take.</summary>
    static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);
    /// <summary>Working-set growth allowed over the run (a decode within the pixel limit may take 160 MB at once).</summary>
    const long MemoryBound = 1L << 30;

    static readonly StatusCode[] Allowed = [StatusCode.OK, StatusCode.InvalidArgument, StatusCode.OutOfRange, StatusCode.ResourceExhausted];

    [Fact]
    public async Task Hostile_requests_get_a_status_within_the_bound_and_the_server_keeps_serving()
    {
        int cases = int.TryParse(Environment.GetEnvironmentVariable("ECMT_FUZZ_CASES"), out int n) ? n : 1000;
        int seed = int.TryParse(Environment.GetEnvironmentVariable("ECMT_FUZZ_SEED"), out int s) ? s : 16;
        var random = new Random(seed);
        await using var host = await ServerHost.KestrelAsync(("Ecmt:Limits:MaxConcurrentStreams", "64"));
        using var raw = new HttpClient(new SocketsHttpHandler()) { BaseAddress = host.Address };

        byte[] png = TestModels.Png(3);
        byte[] jpeg = Jpeg();
        var outcomes = new Dictionary<string, int>();
        var slowest = TimeSpan.Zero;
        using var process = Process.GetCurrentProcess();
        long baseline = process.WorkingSet64, peak = baseline;

        for (int i = 0; i < cases; i++)
        {
            int kind = i % 5;
            var clock = Stopwatch.StartNew();
            string outcome = kind switch
            {
                0 => await Image(host, Mutate(random, random.Next(2) == 0 ? png : jpeg), random, i),
                1 => await Image(host, Huge(random, png, jpeg), random, i),
                2 => await RawGrpc(raw, random),
                3 => await WrongTensor(host, random),
                _ => await WrongOipTensor(host, random),
            };
            clock.Stop();
            Assert.True(clock.Elapsed < Bound, $"case {i} (kind {kind}) took {clock.Elapsed}");
            if (clock.Elapsed > slowest) slowest = clock.Elapsed;
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
            process.Refresh();
            peak = Math.Max(peak, process.WorkingSet64);
        }

        string summary = $"fuzz: {cases} cases (seed {seed}): " + string.Join(", ", outcomes.OrderByDescending(o => o.Value).Select(o => $"{o.Key} {o.Value}"))
            + $"; slowest {slowest.TotalMilliseconds:F0} ms; working set {baseline >> 20} MB -> peak {peak >> 20} MB";
        TestContext.Current.SendDiagnosticMessage(summary);
        await File.WriteAllTextAsync(Path.Combine(AppContext.BaseDirectory, "fuzz-summary.txt"), summary + "\n");
        Assert.True(peak - baseline < MemoryBound, summary);
        // Still serving.
        var updates = await host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 2));
        Assert.Equal(2, updates.Count);
    }

    static byte[] Jpeg()
    {
        using var bitmap = new SKBitmap(new SKImageInfo(TestModels.Size, TestModels.Size, SKColorType.Gray8, SKAlphaType.Opaque));
        new Random(5).NextBytes(bitmap.GetPixelSpan());
        using var data = bitmap.Encode(SKEncodedImageFormat.Jpeg, 80);
        return data.ToArray();
    }

    /// <summary>Bit flips, overwritten runs, truncation, inserted or repeated bytes.</summary>
    static byte[] Mutate(Random random, byte[] original)
    {
        var bytes = original.ToList();
        for (int m = random.Next(1, 6); m > 0 && bytes.Count > 0; m--)
        {
            int at = random.Next(bytes.Count);
            switch (random.Next(5))
            {
                case 0: bytes[at] ^= (byte)(1 << random.Next(8)); break;
                case 1: for (int k = at; k < Math.Min(bytes.Count, at + random.Next(1, 16)); k++) bytes[k] = (byte)random.Next(256); break;
                case 2: bytes.RemoveRange(at, bytes.Count - at); break;
                case 3: bytes.InsertRange(at, Enumerable.Range(0, random.Next(1, 64)).Select(_ => (byte)random.Next(256))); break;
                default: bytes.InsertRange(at, bytes.GetRange(at, Math.Min(bytes.Count - at, random.Next(1, 256)))); break;
            }
        }
        return [.. bytes];
    }

    /// <summary>A PNG (IHDR, CRC fixed) or JPEG (SOF0) that declares a size from just over the limits to 2^31 - 1 a side.</summary>
    static byte[] Huge(Random random, byte[] png, byte[] jpeg)
    {
        if (random.Next(2) == 0)
        {
            var bytes = (byte[])png.Clone();
            int width = random.Next(3) switch { 0 => int.MaxValue, 1 => Engine.Imaging.ImageInput.MaxDimension + 1, _ => random.Next(6400, 8193) };
            int height = random.Next(3) switch { 0 => int.MaxValue, 1 => Engine.Imaging.ImageInput.MaxDimension + 1, _ => random.Next(6400, 8193) };
            BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(16), width);
            BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(20), height);
            BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(29), ImageInputTests.Crc32(bytes.AsSpan(12, 17)));
            return bytes;
        }
        var j = (byte[])jpeg.Clone();
        for (int at = 2; at + 9 < j.Length; at++)
            if (j[at] == 0xFF && j[at + 1] == 0xC0)
            {
                BinaryPrimitives.WriteUInt16BigEndian(j.AsSpan(at + 5), (ushort)random.Next(8193, 65536));
                BinaryPrimitives.WriteUInt16BigEndian(j.AsSpan(at + 7), (ushort)random.Next(8193, 65536));
                return j;
            }
        throw new InvalidOperationException("the JPEG has no SOF0 segment");
    }

    /// <summary>An image through ecmt.v1 or the Open Inference Protocol; the status it ends with.</summary>
    static async Task<string> Image(ServerHost host, byte[] bytes, Random random, int i)
    {
        var deadline = DateTime.UtcNow + Bound;
        Status status = i % 2 == 0
            ? await Requests.StatusOf(async () =>
            {
                using var call = host.Client.Classify(Requests.Image(TestModels.Tiny, bytes, maxSteps: 1), deadline: deadline);
                await call.ReadAll();
            })
            : await Requests.StatusOf(() => host.Inference.ModelInferAsync(OipRequests.Image(TestModels.Tiny, bytes, maxSteps: 1, raw: random.Next(2) == 0),
                deadline: deadline).ResponseAsync);
        Assert.True(Allowed.Contains(status.StatusCode), $"image of {bytes.Length} bytes: {status}");
        return $"image {status.StatusCode}";
    }

    /// <summary>Random bytes as the message of a gRPC call, framed (sometimes with a lying length) or not, on HTTP/2.</summary>
    static async Task<string> RawGrpc(HttpClient http, Random random)
    {
        var payload = new byte[random.Next(0, 2048)];
        random.NextBytes(payload);
        byte[] body = random.Next(4) switch
        {
            0 => payload,
            1 => [0, .. BigEndian((uint)random.Next()), .. payload],
            _ => [0, .. BigEndian((uint)payload.Length), .. payload],
        };
        string path = random.Next(3) switch
        {
            0 => "/ecmt.v1.Classifier/Classify",
            1 => "/inference.GRPCInferenceService/ModelInfer",
            _ => "/inference.GRPCInferenceService/ModelStreamInfer",
        };
        using var request = new HttpRequestMessage(HttpMethod.Post, path)
        {
            Content = new ByteArrayContent(body), Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionExact,
        };
        request.Content.Headers.ContentType = new("application/grpc");
        request.Headers.TryAddWithoutValidation("te", "trailers");
        using var cancel = new CancellationTokenSource(Bound);
        using var response = await http.SendAsync(request, cancel.Token);
        await response.Content.ReadAsByteArrayAsync(cancel.Token);
        string? code = response.TrailingHeaders.TryGetValues("grpc-status", out var t) ? t.First()
            : response.Headers.TryGetValues("grpc-status", out var h) ? h.First() : null;
        Assert.True(response.StatusCode == HttpStatusCode.OK && code is not null,
            $"{path}, {body.Length} bytes: HTTP {(int)response.StatusCode}, grpc-status {code ?? "none"} {GrpcMessage(response)}");
        var status = (StatusCode)int.Parse(code!, System.Globalization.CultureInfo.InvariantCulture);
        // A framing error is grpc-dotnet's INTERNAL ("Incomplete message", a length over the limit: RESOURCE_EXHAUSTED);
        // bytes that are no protobuf message of the method are grpc-dotnet's UNKNOWN for unary and server-streaming
        // calls (it parses the request before any server code runs) and INVALID_ARGUMENT for ModelStreamInfer (whose
        // messages the service reads). Never the engine: such a request reaches no model.
        string message = GrpcMessage(response);
        Assert.True(Allowed.Contains(status)
            || status == StatusCode.Internal && message.Length > 0 && !message.Contains("engine", StringComparison.Ordinal)
            || status == StatusCode.Unknown && !path.EndsWith("ModelStreamInfer", StringComparison.Ordinal),
            $"{path}: {status} {message}");
        return $"raw-grpc {status}";
    }

    static string GrpcMessage(HttpResponseMessage response) =>
        Uri.UnescapeDataString(response.TrailingHeaders.TryGetValues("grpc-message", out var t) ? t.First()
            : response.Headers.TryGetValues("grpc-message", out var h) ? h.First() : "");

    static byte[] BigEndian(uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }

    static readonly uint[] Dimensions = [0, 1, 2, 3, 27, 28, 29, 784, 65_536, uint.MaxValue];

    /// <summary>ecmt.v1 tensors of a wrong rank, wrong dimensions, data that does not match, values outside [0, 1].</summary>
    static async Task<string> WrongTensor(ServerHost host, Random random)
    {
        var tensor = new Protos.V1.Tensor();
        int rank = random.Next(0, 6);
        for (int d = 0; d < rank; d++) tensor.Shape.Add(Dimensions[random.Next(Dimensions.Length)]);
        int length = random.Next(4) switch { 0 => 784, 1 => 0, 2 => random.Next(0, 4096), _ => 783 };
        for (int k = 0; k < length; k++) tensor.Data.Add(random.Next(10) == 0 ? float.NaN : (float)(random.NextDouble() * 3 - 1));
        var request = new ClassifyRequest { Model = TestModels.Tiny, Tensor = tensor, MaxSteps = 1 };
        var status = await Requests.StatusOf(async () =>
        {
            using var call = host.Client.Classify(request, deadline: DateTime.UtcNow + Bound);
            await call.ReadAll();
        });
        bool right = rank == 3 && tensor.Shape.SequenceEqual([1u, 28u, 28u]) && length == 784 && tensor.Data.All(v => v is >= 0 and <= 1);
        Assert.Equal(right ? StatusCode.OK : StatusCode.InvalidArgument, status.StatusCode);
        return $"tensor {status.StatusCode}";
    }

    static readonly long[] OipDimensions = [-1, 0, 1, 2, 28, 784, long.MaxValue, long.MinValue];

    /// <summary>OIP pixels of a wrong shape or length (in contents or raw bytes), or a wrong datatype.</summary>
    static async Task<string> WrongOipTensor(ServerHost host, Random random)
    {
        var request = new ModelInferRequest { ModelName = TestModels.Tiny };
        var input = new InferInputTensor { Name = "pixels", Datatype = random.Next(6) == 0 ? "FP16" : "FP32" };
        int rank = random.Next(0, 6);
        for (int d = 0; d < rank; d++) input.Shape.Add(random.Next(3) == 0 ? OipDimensions[random.Next(OipDimensions.Length)] : new[] { 1L, 1, 28, 28, 3 }[random.Next(5)]);
        int length = random.Next(3) switch { 0 => 784, 1 => random.Next(0, 2000), _ => 785 };
        if (random.Next(2) == 0)
        {
            var bytes = new byte[length * 4 + random.Next(0, 4)];
            for (int k = 0; k + 4 <= bytes.Length; k += 4) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(k), (float)random.NextDouble());
            request.RawInputContents.Add(ByteString.CopyFrom(bytes));
        }
        else
        {
            input.Contents = new InferTensorContents();
            input.Contents.Fp32Contents.AddRange(Enumerable.Range(0, length).Select(_ => (float)random.NextDouble()));
        }
        request.Inputs.Add(input);
        var status = await Requests.StatusOf(() => host.Inference.ModelInferAsync(request, deadline: DateTime.UtcNow + Bound).ResponseAsync);
        Assert.True(status.StatusCode is StatusCode.OK or StatusCode.InvalidArgument, $"pixels {input.Datatype} [{string.Join(", ", input.Shape)}]: {status}");
        return $"oip-tensor {status.StatusCode}";
    }
}
