using System.Net;
using System.Net.Sockets;
using Ecmt.Engine.Conversion;
using Ecmt.Protos.V1;
using Ecmt.Server;
using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Balancer;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Ecmt.Deploy.Tests;

/// <summary>
/// What deploy/README.md says about spreading calls over replicas, run against two real servers (Kestrel, h2c) on
/// 127.0.0.1 and 127.0.0.2 with the same port, standing in for two pods behind the headless Service: a plain channel
/// pins every call to one of them, the README's round_robin channel spreads them, and when one replica shuts down
/// (as on SIGTERM) the calls move to the other without an error reaching the caller.
/// </summary>
public sealed class LoadSpreadingTests : IAsyncLifetime
{
    readonly DirectoryInfo _models = Directory.CreateTempSubdirectory("ecmt-deploy-models-");
    Replica _a = null!, _b = null!;
    int _port;

    public async ValueTask InitializeAsync()
    {
        SyntheticModels.Create(Path.Combine(_models.FullName, "synthetic"), SyntheticModels.Config("synthetic"));
        _port = FreePort();
        _a = await Replica.StartAsync(_models.FullName, "127.0.0.1", _port);
        _b = await Replica.StartAsync(_models.FullName, "127.0.0.2", _port);
    }

    public async ValueTask DisposeAsync()
    {
        await _a.DisposeAsync();
        await _b.DisposeAsync();
        _models.Delete(recursive: true);
    }

    [Fact]
    public async Task A_plain_channel_pins_every_call_to_one_replica()
    {
        // What a client gets from a ClusterIP Service: one address, one HTTP/2 connection, one pod.
        using var channel = GrpcChannel.ForAddress($"http://127.0.0.1:{_port}");
        var client = new Classifier.ClassifierClient(channel);
        for (int i = 0; i < 12; i++) await ClassifyAsync(client);
        Assert.Equal(12, _a.Calls);
        Assert.Equal(0, _b.Calls);
    }

    [Fact]
    public async Task The_readme_channel_spreads_calls_over_replicas_and_moves_off_one_that_shuts_down()
    {
        // The headless Service's DNS answer is the pods' addresses on one port; a static resolver gives the same list.
        var resolver = new StaticResolverFactory(_ => [new BalancerAddress("127.0.0.1", _port), new BalancerAddress("127.0.0.2", _port)]);
        using var channel = ClientChannels.Create("static:///ecmt-headless", resolver);
        var client = new Classifier.ClassifierClient(channel);
        await channel.ConnectAsync(TestContext.Current.CancellationToken);
        // Round robin picks only connected subchannels: wait until both replicas are, as a long-lived client would be.
        for (int i = 0; i < 200 && (_a.Calls == 0 || _b.Calls == 0); i++) await ClassifyAsync(client);
        int a0 = _a.Calls, b0 = _b.Calls;
        for (int i = 0; i < 20; i++) await ClassifyAsync(client);
        Assert.Equal(10, _a.Calls - a0);
        Assert.Equal(10, _b.Calls - b0);

        // Replica A shuts down (SIGTERM's path: health NOT_SERVING, listeners closed, GOAWAY) while calls go on.
        var stopping = _a.StopAsync();
        var statuses = new List<StatusCode>();
        for (int i = 0; i < 20; i++) statuses.Add(await StatusOfAsync(() => ClassifyAsync(client)));
        await stopping;
        for (int i = 0; i < 20; i++) statuses.Add(await StatusOfAsync(() => ClassifyAsync(client)));
        Assert.All(statuses, s => Assert.Equal(StatusCode.OK, s));
        Assert.True(_b.Calls - b0 >= 30, $"replica B took {_b.Calls - b0} of the calls once A began stopping");
    }

    static async Task ClassifyAsync(Classifier.ClassifierClient client)
    {
        var tensor = new Tensor();
        tensor.Shape.AddRange([1, 28, 28]);
        tensor.Data.AddRange(Enumerable.Range(0, 28 * 28).Select(i => (i % 17) / 16f));
        using var call = client.Classify(new ClassifyRequest { Model = "synthetic", Tensor = tensor, MaxSteps = 2 },
            deadline: DateTime.UtcNow.AddSeconds(30));
        int updates = 0;
        await foreach (var _ in call.ResponseStream.ReadAllAsync()) updates++;
        Assert.Equal(2, updates);
    }

    static async Task<StatusCode> StatusOfAsync(Func<Task> call)
    {
        try
        {
            await call();
            return StatusCode.OK;
        }
        catch (RpcException e)
        {
            return e.StatusCode;
        }
    }

    static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>One server as ecmt-server runs it (ServerApp), counting the Classifier calls it receives.</summary>
    sealed class Replica : IStartupFilter, IAsyncDisposable
    {
        WebApplication _app = null!;
        int _calls;
        bool _stopped;

        public int Calls => Volatile.Read(ref _calls);

        public static async Task<Replica> StartAsync(string models, string address, int port)
        {
            var replica = new Replica();
            var builder = ServerApp.CreateBuilder([$"--models={models}", "--backend=reference", $"--address={address}", $"--port={port}", "--http-port=0", "--metrics-port=0"]);
            builder.Logging.SetMinimumLevel(LogLevel.Warning);
            builder.Services.AddSingleton<IStartupFilter>(replica);
            replica._app = ServerApp.Build(builder);
            await replica._app.StartAsync();
            var host = replica._app.Services.GetRequiredService<ModelHost>();
            for (int i = 0; i < 600 && !host.LoadingFinished; i++) await Task.Delay(50);
            Assert.True(host.LoadingFinished, "the synthetic model did not load");
            return replica;
        }

        public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
        {
            app.Use(async (context, nextStep) =>
            {
                if (context.Request.Path.StartsWithSegments($"/{HealthNames.Classifier}", StringComparison.Ordinal)) Interlocked.Increment(ref _calls);
                await nextStep(context);
            });
            next(app);
        };

        public async Task StopAsync()
        {
            _stopped = true;
            await _app.StopAsync();
        }

        public async ValueTask DisposeAsync()
        {
            if (!_stopped) await _app.StopAsync();
            await _app.DisposeAsync();
        }
    }
}
