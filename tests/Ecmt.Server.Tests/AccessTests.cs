using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json.Nodes;
using Ecmt.Protos.Inference;
using Ecmt.Protos.V1;
using Ecmt.Server.Access;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Grpc.Reflection.V1Alpha;

namespace Ecmt.Server.Tests;

/// <summary>
/// Access control on a real Kestrel loopback port, every protocol (ecmt.v1, OIP gRPC, REST): no key, a wrong key, a
/// key without the model, a rate limit and a concurrency limit hit, health open to probes, listings showing only the
/// caller's models, the access file reloaded without a restart, reflection turned off.
/// </summary>
public sealed class AccessTests : IAsyncLifetime
{
    const string AliceKey = "alice-secret-key", BobKey = "bob-secret-key", CarolKey = "carol-secret-key", DaveKey = "dave-secret-key";
    readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("ecmt-access-");
    string _file = null!;
    ServerHost _host = null!;
    HttpClient _http = null!;

    internal static string Sha(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    static string AccessJson(params string[] callers) => $$"""{"callers": [{{string.Join(",\n", callers)}}]}""";

    static readonly string[] Callers =
    [
        $$"""{"name": "alice", "key_sha256": "{{Sha(AliceKey)}}", "models": ["tiny"]}""",
        $$"""{"name": "bob", "key_sha256": "{{Sha(BobKey)}}", "models": ["*"], "requests_per_second": 2}""",
        $$"""{"name": "carol", "key_sha256": "{{Sha(CarolKey)}}", "models": ["deep", "tiny"], "concurrent_streams": 1}""",
    ];

    public async ValueTask InitializeAsync()
    {
        _file = Path.Combine(_dir.FullName, "access.json");
        await File.WriteAllTextAsync(_file, AccessJson(Callers));
        _host = await ServerHost.KestrelWithHttpAsync(null, ("Ecmt:Access:File", _file), ("Ecmt:Access:ReloadSeconds", "0.2"),
            ("Ecmt:Limits:MaxSteps", "100000"));
        _http = new HttpClient { BaseAddress = _host.HttpAddress };
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        await _host.DisposeAsync();
        _dir.Delete(recursive: true);
    }

    static Metadata Key(string key) => new() { { "authorization", $"Bearer {key}" } };

    async Task<Status> Classify(string? key, string model, uint steps = 2) => await Requests.StatusOf(async () =>
    {
        using var call = _host.Client.Classify(Requests.Tensor(model, maxSteps: steps), key is null ? null : Key(key));
        await call.ReadAll();
    });

    Task<Status> Infer(string? key, string model) => Requests.StatusOf(() =>
        _host.Inference.ModelInferAsync(OipRequests.Pixels(model, maxSteps: 2), key is null ? null : Key(key)).ResponseAsync);

    async Task<HttpResponseMessage> Rest(string? key, string model)
    {
        var pixels = new JsonArray([.. TestModels.Image(7).Intensities.Select(v => (JsonNode)v)]);
        var body = new JsonObject
        {
            ["parameters"] = new JsonObject { ["max_steps"] = 2 },
            ["inputs"] = new JsonArray(new JsonObject { ["name"] = "pixels", ["datatype"] = "FP32", ["shape"] = new JsonArray(1, 1, 28, 28), ["data"] = pixels }),
        };
        using var request = new HttpRequestMessage(HttpMethod.Post, $"/v2/models/{model}/infer") { Content = JsonContent.Create(body) };
        if (key is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return await _http.SendAsync(request);
    }

    static async Task<string> ErrorOf(HttpResponseMessage response) =>
        (await response.Content.ReadFromJsonAsync<JsonObject>())!["error"]!.GetValue<string>();

    [Fact]
    public async Task No_key_is_unauthenticated_on_every_protocol()
    {
        var classify = await Classify(null, TestModels.Tiny);
        Assert.Equal(StatusCode.Unauthenticated, classify.StatusCode);
        Assert.Contains("no credential", classify.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.Unauthenticated, (await Infer(null, TestModels.Tiny)).StatusCode);
        Assert.Equal(StatusCode.Unauthenticated, (await Requests.StatusOf(() => _host.Client.ListModelsAsync(new ListModelsRequest()).ResponseAsync)).StatusCode);

        using var rest = await Rest(null, TestModels.Tiny);
        Assert.Equal(HttpStatusCode.Unauthorized, rest.StatusCode);
        Assert.Equal("Bearer", rest.Headers.WwwAuthenticate.Single().Scheme);
        Assert.Contains("no credential", await ErrorOf(rest), StringComparison.Ordinal);
        using var models = await _http.GetAsync(new Uri("/ecmt/v1/models", UriKind.Relative));
        Assert.Equal(HttpStatusCode.Unauthorized, models.StatusCode);
        // The page itself is open: it asks for a key when the API answers 401.
        using var page = await _http.GetAsync(new Uri("/", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
    }

    [Fact]
    public async Task A_wrong_key_is_unauthenticated()
    {
        var classify = await Classify("not-a-key", TestModels.Tiny);
        Assert.Equal(StatusCode.Unauthenticated, classify.StatusCode);
        Assert.Contains("API key is not valid", classify.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.Unauthenticated, (await Infer(Sha(AliceKey), TestModels.Tiny)).StatusCode); // the hash is not the key
        using var rest = await Rest("not-a-key", TestModels.Tiny);
        Assert.Equal(HttpStatusCode.Unauthorized, rest.StatusCode);
        Assert.Contains("API key is not valid", await ErrorOf(rest), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_key_reaches_its_models_only()
    {
        Assert.Equal(StatusCode.OK, (await Classify(AliceKey, TestModels.Tiny)).StatusCode);
        Assert.Equal(StatusCode.OK, (await Infer(AliceKey, TestModels.Tiny)).StatusCode);
        using (var ok = await Rest(AliceKey, TestModels.Tiny)) Assert.Equal(HttpStatusCode.OK, ok.StatusCode);

        var denied = await Classify(AliceKey, TestModels.Deep);
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        Assert.Contains("'alice' may not use model 'deep'", denied.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.PermissionDenied, (await Infer(AliceKey, TestModels.Deep)).StatusCode);
        Assert.Equal(StatusCode.PermissionDenied, (await Requests.StatusOf(() =>
            _host.Client.GetModelAsync(new GetModelRequest { Name = TestModels.Deep }, Key(AliceKey)).ResponseAsync)).StatusCode);
        using (var rest = await Rest(AliceKey, TestModels.Deep))
        {
            Assert.Equal(HttpStatusCode.Forbidden, rest.StatusCode);
            Assert.Contains("may not use model 'deep'", await ErrorOf(rest), StringComparison.Ordinal);
        }
        // A model that is not hosted is NOT_FOUND, and the message lists only the caller's models.
        var missing = await Classify(AliceKey, "nope");
        Assert.Equal(StatusCode.NotFound, missing.StatusCode);
        Assert.EndsWith("hosted: tiny", missing.Detail, StringComparison.Ordinal);

        // Listings show only the caller's models.
        var alice = await _host.Client.ListModelsAsync(new ListModelsRequest(), Key(AliceKey));
        Assert.Equal([TestModels.Tiny], alice.Models.Select(m => m.Name));
        var bob = await _host.Client.ListModelsAsync(new ListModelsRequest(), Key(BobKey));
        Assert.Contains(bob.Models, m => m.Name == TestModels.Deep);
        using var request = new HttpRequestMessage(HttpMethod.Get, "/ecmt/v1/models");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AliceKey);
        using var listing = await _http.SendAsync(request);
        var names = (await listing.Content.ReadFromJsonAsync<JsonObject>())!["models"]!.AsArray().Select(m => m!["name"]!.GetValue<string>());
        Assert.Equal([TestModels.Tiny], names);
    }

    [Fact]
    public async Task Health_stays_open_to_probes()
    {
        var health = new Health.HealthClient(_host.Channel);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, (await health.CheckAsync(new HealthCheckRequest())).Status);
        Assert.True((await _host.Inference.ServerReadyAsync(new ServerReadyRequest())).Ready);
        Assert.True((await _host.Inference.ServerLiveAsync(new ServerLiveRequest())).Live);
        Assert.Equal(HttpStatusCode.OK, (await _http.GetAsync(new Uri("/v2/health/ready", UriKind.Relative))).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await _http.GetAsync(new Uri("/healthz/ready", UriKind.Relative))).StatusCode);
        // A model's own readiness names a model: it needs a caller.
        Assert.Equal(StatusCode.Unauthenticated, (await Requests.StatusOf(() =>
            _host.Inference.ModelReadyAsync(new ModelReadyRequest { Name = TestModels.Tiny }).ResponseAsync)).StatusCode);
    }

    [Fact]
    public async Task A_caller_over_its_rate_is_refused_with_a_pushback()
    {
        // bob: 2 classifications per second. Within one second the third is refused, on every protocol.
        var statuses = new List<StatusCode>();
        RpcException? refused = null;
        for (int i = 0; i < 3; i++)
        {
            try
            {
                using var call = _host.Client.Classify(Requests.Tensor(TestModels.Tiny, maxSteps: 1), Key(BobKey));
                await call.ReadAll();
                statuses.Add(StatusCode.OK);
            }
            catch (RpcException e)
            {
                statuses.Add(e.StatusCode);
                refused = e;
            }
        }
        Assert.Contains(StatusCode.ResourceExhausted, statuses);
        Assert.Contains("over its 2 classifications per second", refused!.Status.Detail, StringComparison.Ordinal);
        var pushback = int.Parse(refused.Trailers.GetValue("grpc-retry-pushback-ms")!, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(pushback, 1, 1000);

        for (int i = 0; i < 3; i++)
        {
            using var rest = await Rest(BobKey, TestModels.Tiny);
            if (rest.StatusCode == HttpStatusCode.OK) continue;
            Assert.Equal(HttpStatusCode.TooManyRequests, rest.StatusCode);
            Assert.NotNull(rest.Headers.RetryAfter?.Delta);
            return;
        }
        Assert.Fail("three REST requests within a second were all admitted");
    }

    [Fact]
    public async Task A_caller_cannot_take_more_than_its_streams_while_another_goes_on()
    {
        // carol: one classification at once. Her second is refused while the first runs; alice is not affected.
        using var first = _host.Client.Classify(Requests.Tensor(TestModels.Deep, maxSteps: 100_000), Key(CarolKey));
        Assert.True(await first.ResponseStream.MoveNext(CancellationToken.None));
        var second = await Classify(CarolKey, TestModels.Tiny);
        Assert.Equal(StatusCode.ResourceExhausted, second.StatusCode);
        Assert.Contains("running its 1 classifications at once", second.Detail, StringComparison.Ordinal);
        Assert.Equal(StatusCode.OK, (await Classify(AliceKey, TestModels.Tiny)).StatusCode);
        first.Dispose();
        // Her slot comes back when the stream ends.
        var deadline = DateTime.UtcNow.AddSeconds(10);
        Status again;
        do again = await Classify(CarolKey, TestModels.Tiny);
        while (again.StatusCode == StatusCode.ResourceExhausted && DateTime.UtcNow < deadline);
        Assert.Equal(StatusCode.OK, again.StatusCode);
    }

    [Fact]
    public async Task A_changed_access_file_takes_effect_without_a_restart()
    {
        Assert.Equal(StatusCode.Unauthenticated, (await Classify(DaveKey, TestModels.Tiny)).StatusCode);
        // As a Kubernetes Secret update does: a new file swapped in.
        string next = _file + ".new";
        await File.WriteAllTextAsync(next, AccessJson([.. Callers.Skip(1), $$"""{"name": "dave", "key_sha256": "{{Sha(DaveKey)}}", "models": ["tiny"]}"""]));
        File.Move(next, _file, overwrite: true);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while ((await Classify(DaveKey, TestModels.Tiny)).StatusCode != StatusCode.OK)
        {
            Assert.True(DateTime.UtcNow < deadline, "the new key was not accepted within 10 s");
            await Task.Delay(100);
        }
        // alice was removed.
        Assert.Equal(StatusCode.Unauthenticated, (await Classify(AliceKey, TestModels.Tiny)).StatusCode);

        // A broken file is logged and the previous version kept.
        await File.WriteAllTextAsync(_file, """{"callers": [{"name": "eve", "key_sha256": "not-a-hash", "models": ["*"]}]}""");
        await Task.Delay(600);
        Assert.Equal(StatusCode.OK, (await Classify(DaveKey, TestModels.Tiny)).StatusCode);
    }

    [Fact]
    public async Task Reflection_needs_a_caller_and_can_be_turned_off()
    {
        async Task<Status> Reflect(GrpcChannel channel, Metadata? headers)
        {
            var client = new ServerReflection.ServerReflectionClient(channel);
            return await Requests.StatusOf(async () =>
            {
                using var call = client.ServerReflectionInfo(headers);
                await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
                await call.RequestStream.CompleteAsync();
                await foreach (var _ in call.ResponseStream.ReadAllAsync()) { }
            });
        }
        Assert.Equal(StatusCode.Unauthenticated, (await Reflect(_host.Channel, null)).StatusCode);
        Assert.Equal(StatusCode.OK, (await Reflect(_host.Channel, Key(AliceKey))).StatusCode);

        await using var off = await ServerHost.KestrelAsync(("Ecmt:Access:File", _file), ("Ecmt:Access:Reflection", "false"));
        Assert.Equal(StatusCode.Unimplemented, (await Reflect(off.Channel, Key(BobKey))).StatusCode);
    }

    [Fact]
    public void The_access_file_is_checked()
    {
        var list = AccessList.Parse(AccessJson(Callers), "test");
        Assert.Equal("alice", list.FindKey(AliceKey)!.Name);
        Assert.Null(list.FindKey(AliceKey + " "));
        Assert.Equal(2, list.Find("bob")!.RequestsPerSecond);
        Assert.Contains("64 hex digits", Assert.Throws<InvalidOperationException>(() =>
            AccessList.Parse(AccessJson($$"""{"name": "x", "key_sha256": "{{AliceKey}}", "models": ["*"]}"""), "test")).Message, StringComparison.Ordinal);
        Assert.Contains("exactly one of", Assert.Throws<InvalidOperationException>(() =>
            AccessList.Parse(AccessJson("""{"name": "x", "models": ["*"]}"""), "test")).Message, StringComparison.Ordinal);
        Assert.Contains("models is empty", Assert.Throws<InvalidOperationException>(() =>
            AccessList.Parse(AccessJson("""{"name": "x", "certificate_subject": "CN=x"}"""), "test")).Message, StringComparison.Ordinal);
        Assert.Throws<InvalidOperationException>(() => AccessList.Parse("""{"callers": [], "key": "plaintext"}""", "test"));
    }
}

/// <summary>Mutual TLS: client certificates checked against the configured CA, their subjects mapped to callers.</summary>
public sealed class ClientCertificateTests
{
    static readonly Oid ClientAuth = new("1.3.6.1.5.5.7.3.2");

    static X509Certificate2 Authority(string name)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
    }

    static X509Certificate2 Client(X509Certificate2 authority, string subject)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([ClientAuth], false));
        using var signed = request.Create(authority, DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddHours(1), RandomNumberGenerator.GetBytes(8));
        using var withKey = signed.CopyWithPrivateKey(key);
        // Through PKCS#12, so the TLS stack gets a key it can use on every platform.
        return X509CertificateLoader.LoadPkcs12(withKey.Export(X509ContentType.Pkcs12), null);
    }

    [Fact]
    public async Task Certificates_from_the_ca_authenticate_others_do_not()
    {
        var dir = Directory.CreateTempSubdirectory("ecmt-mtls-");
        try
        {
            using var serverKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var serverRequest = new CertificateRequest("CN=localhost", serverKey, HashAlgorithmName.SHA256);
            var san = new SubjectAlternativeNameBuilder();
            san.AddIpAddress(IPAddress.Loopback);
            serverRequest.CertificateExtensions.Add(san.Build());
            using var server = serverRequest.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
            using var ca = Authority("Ecmt test CA");
            using var otherCa = Authority("Another CA");
            using var reporting = Client(ca, "CN=reporting, O=Example");
            using var stranger = Client(ca, "CN=stranger");
            using var forged = Client(otherCa, "CN=reporting, O=Example");

            string Write(string name, string text)
            {
                var path = Path.Combine(dir.FullName, name);
                File.WriteAllText(path, text);
                return path;
            }
            var settings = new[]
            {
                ("Ecmt:Tls:CertificateFile", Write("server.crt", server.ExportCertificatePem())),
                ("Ecmt:Tls:KeyFile", Write("server.key", serverKey.ExportPkcs8PrivateKeyPem())),
                ("Ecmt:Tls:ClientCaFile", Write("ca.crt", ca.ExportCertificatePem())),
                ("Ecmt:Access:File", Write("access.json", $$"""
                    {"callers": [
                      {"name": "reporting", "certificate_subject": "CN=reporting, O=Example", "models": ["tiny"]},
                      {"name": "ops", "key_sha256": "{{AccessTests.Sha("ops-key")}}", "models": ["*"]}
                    ]}
                    """)),
            };
            var host = await ServerHost.KestrelWithHttpAsync(null, settings);

            async Task<Status> Call(X509Certificate2? certificate, string model = TestModels.Tiny, Metadata? headers = null)
            {
                var handler = new SocketsHttpHandler();
                handler.SslOptions.RemoteCertificateValidationCallback = (_, cert, _, _) => cert?.GetCertHashString() == server.GetCertHashString();
                if (certificate is not null) handler.SslOptions.ClientCertificates = [certificate];
                using var channel = GrpcChannel.ForAddress(host.Address, new GrpcChannelOptions { HttpHandler = handler });
                var client = new Classifier.ClassifierClient(channel);
                return await Requests.StatusOf(async () =>
                {
                    using var call = client.Classify(Requests.Tensor(model, maxSteps: 2), headers);
                    await call.ReadAll();
                });
            }

            Assert.Equal(StatusCode.OK, (await Call(reporting)).StatusCode);
            Assert.Equal(StatusCode.PermissionDenied, (await Call(reporting, TestModels.Deep)).StatusCode);

            var missing = await Call(null);
            Assert.Equal(StatusCode.Unauthenticated, missing.StatusCode);
            Assert.Contains("no credential", missing.Detail, StringComparison.Ordinal);

            var wrongCa = await Call(forged);
            Assert.Equal(StatusCode.Unauthenticated, wrongCa.StatusCode);
            Assert.Contains("client certificate is not accepted", wrongCa.Detail, StringComparison.Ordinal);

            var unknown = await Call(stranger);
            Assert.Equal(StatusCode.Unauthenticated, unknown.StatusCode);
            Assert.Contains("'CN=stranger' is not a caller", unknown.Detail, StringComparison.Ordinal);

            // API keys work alongside certificates (unless Ecmt:Tls:RequireClientCertificate).
            Assert.Equal(StatusCode.OK, (await Call(null, TestModels.Deep, new Metadata { { "authorization", "Bearer ops-key" } })).StatusCode);

            // With RequireClientCertificate the handshake itself needs a certificate: a key alone gets no connection.
            await host.DisposeAsync();
            await using var strict = await ServerHost.KestrelWithHttpAsync(null, [.. settings, ("Ecmt:Tls:RequireClientCertificate", "true")]);
            host = strict;
            Assert.Equal(StatusCode.OK, (await Call(reporting)).StatusCode);
            var keyOnly = await Call(null, TestModels.Deep, new Metadata { { "authorization", "Bearer ops-key" } });
            // grpc-dotnet reports the refused handshake as INTERNAL or UNAVAILABLE, depending on where it broke.
            Assert.True(keyOnly.StatusCode is StatusCode.Internal or StatusCode.Unavailable, keyOnly.ToString());
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
