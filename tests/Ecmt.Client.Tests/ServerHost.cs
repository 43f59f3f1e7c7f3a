using System.Net;
using System.Net.Sockets;
using Ecmt.Engine.Serving;
using Ecmt.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Ecmt.Client.Tests;

/// <summary>
/// The real server app (built by <see cref="ServerApp"/> exactly as ecmt-server builds it) on Kestrel at a loopback
/// port, serving <see cref="TestModels"/> on the reference backend. The engine's own step counters
/// (<see cref="HostedModel.StepsRun"/>, <see cref="HostedModel.RunCompleted"/>) tell how many steps really ran.
/// </summary>
sealed class ServerHost : IAsyncDisposable
{
    ServerHost(WebApplication app, Uri address)
    {
        App = app;
        Address = address;
    }

    public WebApplication App { get; }
    /// <summary>http://127.0.0.1:PORT/</summary>
    public Uri Address { get; }
    public ModelHost Models => App.Services.GetRequiredService<ModelHost>();
    public HostedModel Model(string name) => Models.Find(name)!;

    /// <summary>Starts a server on a free port (or on <paramref name="port"/>) and waits until its models are loaded.</summary>
    public static async Task<ServerHost> StartAsync(int port = 0, params (string Key, string Value)[] settings)
    {
        var builder = ServerApp.CreateBuilder([$"--models={TestModels.Root}", "--backend=reference"]);
        var overrides = new Dictionary<string, string?>
        {
            ["Ecmt:Address"] = "127.0.0.1",
            ["Ecmt:Port"] = port.ToString(),
            ["Ecmt:HttpPort"] = "0",
            ["Ecmt:MetricsPort"] = "0",
            ["Ecmt:Limits:MaxSteps"] = "1000000",
            // The step thread at the default nice 10 yields to every other test project that CI runs at the same
            // time on 2 cores, and these tests time steps against deadlines; the server tests keep the default.
            ["Ecmt:Batching:Nice"] = "0",
            ["Logging:LogLevel:Default"] = "Warning",
        };
        foreach (var (key, value) in settings) overrides[key] = value;
        builder.Configuration.AddInMemoryCollection(overrides);
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var app = ServerApp.Build(builder);
        await app.StartAsync();
        var address = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());
        var host = new ServerHost(app, address);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!host.Models.LoadingFinished)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("models did not load within 60 s");
            await Task.Delay(10);
        }
        return host;
    }

    /// <summary>A loopback port that was free a moment ago (for a server that starts later).</summary>
    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    public async ValueTask DisposeAsync()
    {
        await App.StopAsync();
        await App.DisposeAsync();
    }
}

/// <summary>One server for all the tests of a class (they run one after another, so the step counters are theirs alone).</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    internal ServerHost Host { get; private set; } = null!;

    public async ValueTask InitializeAsync() => Host = await ServerHost.StartAsync();

    public async ValueTask DisposeAsync() => await Host.DisposeAsync();
}
