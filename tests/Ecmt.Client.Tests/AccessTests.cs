using System.CommandLine;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json.Nodes;
using Ecmt.Cli;
using Grpc.Core;

namespace Ecmt.Client.Tests;

/// <summary>
/// The library and the command line against a server with access control on a real loopback port: an API key
/// (EcmtClientOptions.ApiKey, --api-key), a client certificate with a private CA (mutual TLS), and bench-server's
/// flood from a second key being refused while the measured key is served.
/// </summary>
public sealed class AccessTests : IAsyncLifetime
{
    readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("ecmt-client-access-");
    ServerHost _host = null!;
    X509Certificate2 _server = null!, _client = null!;

    static string Sha(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    public async ValueTask InitializeAsync()
    {
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest("CN=Ecmt client test CA", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign, true));
        using var ca = caRequest.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));

        using var serverKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var serverRequest = new CertificateRequest("CN=localhost", serverKey, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        serverRequest.CertificateExtensions.Add(san.Build());
        using (var signed = serverRequest.Create(ca, DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddHours(1), RandomNumberGenerator.GetBytes(8)))
            _server = signed.CopyWithPrivateKey(serverKey);

        using var clientKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var clientRequest = new CertificateRequest("CN=lib-client", clientKey, HashAlgorithmName.SHA256);
        using (var signed = clientRequest.Create(ca, DateTimeOffset.UtcNow.AddHours(-1), DateTimeOffset.UtcNow.AddHours(1), RandomNumberGenerator.GetBytes(8)))
            _client = signed.CopyWithPrivateKey(clientKey);

        string Write(string name, string text)
        {
            var path = System.IO.Path.Combine(_dir.FullName, name);
            File.WriteAllText(path, text);
            return path;
        }
        Write("ca.crt", ca.ExportCertificatePem());
        Write("client.crt", _client.ExportCertificatePem());
        Write("client.key", clientKey.ExportPkcs8PrivateKeyPem());
        _host = await ServerHost.StartAsync(0,
            ("Ecmt:Tls:CertificateFile", Write("server.crt", _server.ExportCertificatePem())),
            ("Ecmt:Tls:KeyFile", Write("server.key", serverKey.ExportPkcs8PrivateKeyPem())),
            ("Ecmt:Tls:ClientCaFile", In("ca.crt")),
            ("Ecmt:Access:File", Write("access.json", $$"""
                {"callers": [
                  {"name": "lib", "key_sha256": "{{Sha("lib-key")}}", "models": ["tiny"]},
                  {"name": "flood", "key_sha256": "{{Sha("flood-key")}}", "models": ["tiny"], "requests_per_second": 1, "concurrent_streams": 1},
                  {"name": "cert", "certificate_subject": "CN=lib-client", "models": ["*"]}
                ]}
                """)));
    }

    public async ValueTask DisposeAsync()
    {
        await _host.DisposeAsync();
        _server.Dispose();
        _client.Dispose();
        _dir.Delete(recursive: true);
    }

    string In(string name) => System.IO.Path.Combine(_dir.FullName, name);

    EcmtClientOptions Options(string? key = null, bool certificate = false) => new()
    {
        ApiKey = key,
        ClientCertificate = certificate ? EcmtClientOptions.LoadClientCertificate(In("client.crt"), In("client.key")) : null,
        ServerCertificateAuthorities = EcmtClientOptions.LoadAuthorities(In("ca.crt")),
        Retry = RetryPolicy.None,
    };

    static ClassifyInput Tensor() => ClassifyInput.FromTensor(TestModels.Intensities(1), 1, TestModels.Size, TestModels.Size);

    [Fact]
    public async Task The_library_sends_its_key_and_its_client_certificate()
    {
        Assert.Equal("https", _host.Address.Scheme);
        using (var anonymous = new EcmtClient(_host.Address.ToString(), Options()))
            Assert.Equal(StatusCode.Unauthenticated, (await Assert.ThrowsAsync<EcmtRpcException>(() => anonymous.ListModelsAsync())).StatusCode);

        using (var keyed = new EcmtClient(_host.Address.ToString(), Options("lib-key")))
        {
            Assert.Equal([TestModels.Tiny], (await keyed.ListModelsAsync()).Select(m => m.Name));
            Assert.Equal(2, (await keyed.ClassifyToEndAsync(TestModels.Tiny, Tensor(), new ClassifyOptions { MaxSteps = 2 })).Steps);
            var denied = await Assert.ThrowsAsync<EcmtRpcException>(() => keyed.ClassifyToEndAsync(TestModels.Deep, Tensor(), new ClassifyOptions { MaxSteps = 2 }));
            Assert.Equal("PERMISSION_DENIED", denied.Code);
        }

        using var withCertificate = new EcmtClient(_host.Address.ToString(), Options(certificate: true));
        Assert.Equal(2, (await withCertificate.ClassifyToEndAsync(TestModels.Deep, Tensor(), new ClassifyOptions { MaxSteps = 2 })).Steps);
    }

    static async Task<(int Code, string Out, string Err)> Ecmt(params string[] args)
    {
        var root = new RootCommand { ClassifyCommand.Create(), BenchServerCommand.Create() };
        using StringWriter output = new(), error = new();
        int code = await root.Parse(args).InvokeAsync(new InvocationConfiguration { Output = output, Error = error });
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public async Task The_command_line_takes_a_key_or_a_certificate_and_bench_server_measures_a_flood()
    {
        var image = System.IO.Path.Combine(_dir.FullName, "image.png");
        await File.WriteAllBytesAsync(image, TestModels.Png(3));
        string[] common = ["--server", _host.Address.ToString(), "--ca-cert", In("ca.crt"), "--model", TestModels.Tiny, "--max-steps", "2", "--json"];

        var (code, _, err) = await Ecmt(["classify", image, .. common]);
        Assert.Equal(1, code);
        Assert.Contains("UNAUTHENTICATED", err, StringComparison.Ordinal);
        (code, var output, err) = await Ecmt(["classify", image, .. common, "--api-key", "lib-key"]);
        Assert.True(code == 0, err);
        Assert.Equal(2, JsonNode.Parse(output)!["results"]![0]!["steps"]!.GetValue<int>());
        (code, _, err) = await Ecmt(["classify", image, .. common, "--client-cert", In("client.crt"), "--client-key", In("client.key")]);
        Assert.True(code == 0, err);

        // A second key floods (at most 1 classification per second, 1 at once); the measured key is served throughout.
        (code, output, err) = await Ecmt(["bench-server", .. common, "--api-key", "lib-key", "--concurrency", "1", "--duration", "2",
            "--images", image, "--flood-key", "flood-key", "--flood-concurrency", "2"]);
        Assert.True(code == 0, err);
        var report = JsonNode.Parse(output)!;
        Assert.Equal(0, report["error_count"]!.GetValue<int>());
        Assert.True(report["images"]!.GetValue<int>() > 0);
        var flood = report["flood"]!;
        Assert.True(flood["refused"]!.GetValue<long>() > 0, output);
        Assert.InRange(flood["admitted"]!.GetValue<long>(), 0, 4);
        Assert.Equal(0, flood["other_errors"]!.GetValue<long>());
    }
}
