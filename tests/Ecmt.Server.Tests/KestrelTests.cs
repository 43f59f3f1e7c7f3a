using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Ecmt.Protos.V1;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using static Grpc.Health.V1.HealthCheckResponse.Types;

namespace Ecmt.Server.Tests;

/// <summary>The server on real Kestrel listeners: HTTP/2 streaming, graceful shutdown, TLS, the HTTP/1.1 metrics port, configuration.</summary>
public sealed class KestrelTests
{
    [Fact]
    public async Task Streams_over_a_loopback_http2_connection()
    {
        await using var host = await ServerHost.KestrelAsync();
        Assert.StartsWith("http://127.0.0.1:", host.Address.ToString(), StringComparison.Ordinal);
        var updates = await host.Client.RunAsync(Requests.Image(TestModels.Tiny, TestModels.Png(2), maxSteps: 5));
        Assert.Equal(5, updates.Count);
        Assert.Equal(StopReason.MaxSteps, updates[^1].StopReason);
    }

    [Fact]
    public async Task Shutdown_turns_health_not_serving_then_drains_in_flight_streams()
    {
        await using var host = await ServerHost.KestrelAsync(("Ecmt:Shutdown:DrainDelaySeconds", "1"), ("Ecmt:Shutdown:TimeoutSeconds", "60"),
            ("Ecmt:Limits:MaxSteps", "100000"));
        var health = new Health.HealthClient(host.Channel);
        using var watch = health.Watch(new HealthCheckRequest { Service = "" });
        Assert.True(await watch.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(ServingStatus.Serving, watch.ResponseStream.Current.Status);

        // A stream long enough to be in flight through the drain delay.
        var clock = System.Diagnostics.Stopwatch.StartNew();
        await host.Client.RunAsync(Requests.Tensor(TestModels.Deep, maxSteps: 20));
        uint steps = (uint)Math.Clamp(20 * 2500 / Math.Max(1, clock.ElapsedMilliseconds), 40, 100_000);
        using var inFlight = host.Client.Classify(Requests.Tensor(TestModels.Deep, maxSteps: steps));
        Assert.True(await inFlight.ResponseStream.MoveNext(CancellationToken.None));
        var rest = inFlight.ReadAll();

        clock.Restart();
        var stopping = host.App.StopAsync();
        Assert.True(await watch.ResponseStream.MoveNext(CancellationToken.None));
        Assert.Equal(ServingStatus.NotServing, watch.ResponseStream.Current.Status);
        var refused = await Requests.StatusOf(() => host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 1)));
        Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
        Assert.Contains("shutting down", refused.Detail, StringComparison.Ordinal);

        var updates = await rest;
        await stopping.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal((int)steps - 1, updates.Count);
        Assert.Equal(StopReason.MaxSteps, updates[^1].StopReason);
        // The open Watch did not hold the drain up to the 60 s timeout.
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"shutdown took {clock.Elapsed}");
    }

    [Fact]
    public async Task Serves_over_tls_with_certificate_files()
    {
        var dir = Directory.CreateTempSubdirectory("ecmt-tls-");
        try
        {
            using var key = RSA.Create(2048);
            var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
            var san = new SubjectAlternativeNameBuilder();
            san.AddIpAddress(IPAddress.Loopback);
            san.AddDnsName("localhost");
            request.CertificateExtensions.Add(san.Build());
            using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
            string certFile = Path.Combine(dir.FullName, "server.crt"), keyFile = Path.Combine(dir.FullName, "server.key");
            await File.WriteAllTextAsync(certFile, certificate.ExportCertificatePem());
            await File.WriteAllTextAsync(keyFile, key.ExportPkcs8PrivateKeyPem());

            await using var host = await ServerHost.KestrelWithHttpAsync(null, ("Ecmt:Tls:CertificateFile", certFile), ("Ecmt:Tls:KeyFile", keyFile));
            Assert.Equal("https", host.Address.Scheme);
            var handler = new SocketsHttpHandler();
            handler.SslOptions.RemoteCertificateValidationCallback = (_, cert, _, _) => cert?.GetCertHashString() == certificate.GetCertHashString();
            using var channel = GrpcChannel.ForAddress(host.Address, new GrpcChannelOptions { HttpHandler = handler });
            var models = await new Classifier.ClassifierClient(channel).ListModelsAsync(new ListModelsRequest());
            Assert.Contains(models.Models, m => m.Name == TestModels.Tiny);

            // The HTTP port (REST, the page) uses the same certificate: HTTPS with HTTP/1.1 and HTTP/2.
            var httpsHandler = new SocketsHttpHandler();
            httpsHandler.SslOptions.RemoteCertificateValidationCallback = handler.SslOptions.RemoteCertificateValidationCallback;
            using var http = new HttpClient(httpsHandler) { BaseAddress = new Uri($"https://127.0.0.1:{host.HttpAddress!.Port}/") };
            foreach (var version in new[] { HttpVersion.Version11, HttpVersion.Version20 })
            {
                using var probe = new HttpRequestMessage(HttpMethod.Get, "/v2/health/live") { Version = version, VersionPolicy = HttpVersionPolicy.RequestVersionExact };
                using var answer = await http.SendAsync(probe);
                Assert.Equal((HttpStatusCode.OK, version), (answer.StatusCode, answer.Version));
            }
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task Metrics_and_probes_are_served_over_http1_on_the_metrics_port()
    {
        int port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }
        await using var host = await ServerHost.KestrelAsync(("Ecmt:MetricsPort", port.ToString()));
        await host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 2));

        using var http = new HttpClient { DefaultRequestVersion = HttpVersion.Version11 };
        var metrics = await http.GetAsync(new Uri($"http://127.0.0.1:{port}/metrics"));
        Assert.Equal(HttpVersion.Version11, metrics.Version);
        Assert.Contains("ecmt_steps_total", await metrics.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal("Healthy", await http.GetStringAsync(new Uri($"http://127.0.0.1:{port}/healthz/ready")));
        // The metrics port serves metrics and health only (a NetworkPolicy admits scrapers to it alone), and /metrics
        // is served there only.
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync(new Uri($"http://127.0.0.1:{port}/v2/health/live"))).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync(new Uri($"http://127.0.0.1:{port}/ecmt/v1/models"))).StatusCode);
        using var h2 = new HttpClient { DefaultRequestVersion = HttpVersion.Version20, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };
        Assert.Equal(HttpStatusCode.NotFound, (await h2.GetAsync(new Uri(host.Address, "/metrics"))).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await h2.GetAsync(new Uri(host.Address, "/healthz/ready"))).StatusCode);
    }

    [Fact]
    public void Command_line_switches_and_keys_bind_the_options()
    {
        var builder = ServerApp.CreateBuilder(["--models=/srv/models", "--backend=reference", "--port=6000", "--address=::",
            "--Ecmt:Limits:MaxSteps=64", "--Ecmt:DefaultSteps=4", "--tls-cert=/c.pem"]);
        var options = builder.Configuration.GetSection(EcmtOptions.Section).Get<EcmtOptions>()!;
        Assert.Equal("/srv/models", options.ModelDirectory);
        Assert.Equal("reference", options.Backend);
        Assert.Equal(6000, options.Port);
        Assert.Equal("::", options.Address);
        Assert.Equal(64, options.Limits.MaxSteps);
        Assert.Equal(4, options.DefaultSteps);
        Assert.Equal("/c.pem", options.Tls.CertificateFile);
        Assert.Equal(9464, options.MetricsPort);
        Assert.Equal(8080, options.HttpPort);
        Assert.Equal(96, options.Limits.MaxConcurrentStreams);
        Assert.Equal(32, options.Batching.MaxBatch);
    }

    [Fact]
    public async Task Bad_configuration_stops_the_server_at_startup_with_a_message()
    {
        var missing = Path.Combine(Path.GetTempPath(), "ecmt-no-such-folder");
        var e = await Assert.ThrowsAnyAsync<Exception>(async () => await ServerHost.InProcessAsync(("Ecmt:ModelDirectory", missing)));
        Assert.Contains("does not exist", e.Message, StringComparison.Ordinal);

        var steps = await Assert.ThrowsAsync<OptionsValidationException>(async () => await ServerHost.InProcessAsync(("Ecmt:DefaultSteps", "500")));
        Assert.Contains("DefaultSteps", steps.Message, StringComparison.Ordinal);

        var backend = await Assert.ThrowsAnyAsync<Exception>(async () => await ServerHost.InProcessAsync(("Ecmt:Backend", "tpu")));
        Assert.Contains("unknown backend 'tpu'", backend.Message, StringComparison.Ordinal);

        var ports = await Assert.ThrowsAsync<OptionsValidationException>(async () => await ServerHost.InProcessAsync(("Ecmt:HttpPort", "9464"), ("Ecmt:MetricsPort", "9464")));
        Assert.Contains("must differ", ports.Message, StringComparison.Ordinal);
    }
}
