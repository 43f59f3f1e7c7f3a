using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Reflection.V1Alpha;
using static Grpc.Health.V1.HealthCheckResponse.Types;

namespace Ecmt.Server.Tests;

/// <summary>grpc.health.v1 per server and per model, server reflection, and the HTTP probes.</summary>
public sealed class HealthTests : IAsyncLifetime
{
    ServerHost _host = null!;

    public async ValueTask InitializeAsync() => _host = await ServerHost.InProcessAsync();

    public async ValueTask DisposeAsync() => await _host.DisposeAsync();

    async Task<ServingStatus> Check(string service) =>
        (await new Health.HealthClient(_host.Channel).CheckAsync(new HealthCheckRequest { Service = service })).Status;

    [Fact]
    public async Task Check_reports_the_server_and_each_model()
    {
        Assert.Equal(ServingStatus.Serving, await Check(""));
        Assert.Equal(ServingStatus.Serving, await Check("ecmt.v1.Classifier"));
        Assert.Equal(ServingStatus.Serving, await Check("ecmt.v1.Classifier/tiny"));
        Assert.Equal(ServingStatus.Serving, await Check("ecmt.v1.Classifier/deep"));
        Assert.Equal(ServingStatus.NotServing, await Check("ecmt.v1.Classifier/broken"));
        var unknown = await Requests.StatusOf(() => Check("ecmt.v1.Classifier/unconverted"));
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
    }

    [Fact]
    public async Task Watch_streams_the_current_status()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        using var call = new Health.HealthClient(_host.Channel).Watch(new HealthCheckRequest { Service = "ecmt.v1.Classifier/tiny" }, cancellationToken: cts.Token);
        Assert.True(await call.ResponseStream.MoveNext(cts.Token));
        Assert.Equal(ServingStatus.Serving, call.ResponseStream.Current.Status);
    }

    [Fact]
    public async Task Reflection_lists_the_services()
    {
        var client = new ServerReflection.ServerReflectionClient(_host.Channel);
        using var call = client.ServerReflectionInfo();
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        await call.RequestStream.CompleteAsync();
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        var services = call.ResponseStream.Current.ListServicesResponse.Service.Select(s => s.Name).ToList();
        Assert.Contains("ecmt.v1.Classifier", services);
        Assert.Contains("grpc.health.v1.Health", services);

        // And the file descriptor that lets tools such as grpcurl call Classify.
        using var describe = client.ServerReflectionInfo();
        await describe.RequestStream.WriteAsync(new ServerReflectionRequest { FileContainingSymbol = "ecmt.v1.Classifier" });
        await describe.RequestStream.CompleteAsync();
        Assert.True(await describe.ResponseStream.MoveNext(CancellationToken.None));
        var file = Google.Protobuf.Reflection.FileDescriptorProto.Parser.ParseFrom(describe.ResponseStream.Current.FileDescriptorResponse.FileDescriptorProto[0]);
        Assert.Equal("ecmt/v1/classifier.proto", file.Name);
        Assert.Contains(file.Service.Single().Method, m => m.Name == "Classify" && m.ServerStreaming);
    }

    [Fact]
    public async Task Http_probes_answer()
    {
        using var http = _host.HttpClient();
        var ready = await http.GetAsync(new Uri("/healthz/ready", UriKind.Relative));
        Assert.True(ready.IsSuccessStatusCode);
        Assert.Equal("Healthy", await ready.Content.ReadAsStringAsync());
        var live = await http.GetAsync(new Uri("/healthz/live", UriKind.Relative));
        Assert.True(live.IsSuccessStatusCode);
    }
}
