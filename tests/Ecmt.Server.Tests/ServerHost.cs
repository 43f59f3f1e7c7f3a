using System.Net;
using System.Net.Sockets;
using Ecmt.Engine.Serving;
using Ecmt.Protos.Inference;
using Ecmt.Protos.V1;
using Grpc.Net.Client;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Ecmt.Server.Tests;

/// <summary>
/// The real server app, built by <see cref="ServerApp"/> exactly as Program does, hosted in-process on a TestServer
/// or on Kestrel at a free loopback port. Tests choose the reference backend so they pass with or without the others.
/// </summary>
sealed class ServerHost : IAsyncDisposable
{
    ServerHost(WebApplication app, GrpcChannel channel, Uri address, Uri? httpAddress, LogCapture logs)
    {
        App = app;
        Logs = logs;
        Channel = channel;
        Address = address;
        HttpAddress = httpAddress;
        Client = new Classifier.ClassifierClient(channel);
        Inference = new GRPCInferenceService.GRPCInferenceServiceClient(channel);
    }

    public WebApplication App { get; }
    public GrpcChannel Channel { get; }
    public Uri Address { get; }
    /// <summary>The HTTP/1.1 port's address (REST, the page) when the host was started with one.</summary>
    public Uri? HttpAddress { get; }
    public Classifier.ClassifierClient Client { get; }
    public GRPCInferenceService.GRPCInferenceServiceClient Inference { get; }
    /// <summary>Every entry the server logged at Warning or above.</summary>
    public LogCapture Logs { get; }
    public ModelHost Models => App.Services.GetRequiredService<ModelHost>();
    public HostedModel Model(string name) => Models.Find(name)!;

    public static Task<ServerHost> InProcessAsync(params (string Key, string Value)[] settings) => StartAsync(kestrel: false, settings);

    public static Task<ServerHost> KestrelAsync(params (string Key, string Value)[] settings) => StartAsync(kestrel: true, settings);

    /// <summary>On Kestrel with the HTTP/1.1 port (REST, the page) at a free port; <paramref name="args"/> replace the test models.</summary>
    public static Task<ServerHost> KestrelWithHttpAsync(string[]? args, params (string Key, string Value)[] settings) =>
        StartAsync(kestrel: true, [("Ecmt:HttpPort", FreePort().ToString()), .. settings], args);

    /// <summary>In-process on the converted models under <paramref name="directory"/> (reference backend).</summary>
    public static Task<ServerHost> InProcessOnAsync(string directory) => StartAsync(kestrel: false, [], [$"--models={directory}", "--backend=reference"]);

    /// <summary>In-process on the shipped default model (no model directory given).</summary>
    public static Task<ServerHost> DefaultModelAsync() => StartAsync(kestrel: false, [], ["--backend=reference"]);

    /// <summary>A port free a moment ago (Kestrel reports only one address per listener, so the HTTP port is chosen here).</summary>
    public static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }

    static async Task<ServerHost> StartAsync(bool kestrel, (string Key, string Value)[] settings, string[]? args = null)
    {
        var builder = ServerApp.CreateBuilder(args ?? [$"--models={TestModels.Root}", "--backend=reference"]);
        var overrides = new Dictionary<string, string?>
        {
            ["Ecmt:Address"] = "127.0.0.1",
            ["Ecmt:Port"] = "0",
            ["Ecmt:HttpPort"] = "0",
            ["Ecmt:MetricsPort"] = "0",
        };
        foreach (var (key, value) in settings) overrides[key] = value;
        builder.Configuration.AddInMemoryCollection(overrides);
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var logs = new LogCapture();
        builder.Logging.AddProvider(logs);
        if (!kestrel) builder.WebHost.UseTestServer();
        var app = ServerApp.Build(builder);
        await app.StartAsync();

        GrpcChannel channel;
        Uri address;
        if (kestrel)
        {
            // The gRPC listener is the one at a port Kestrel picked (the HTTP port, when there is one, was given).
            var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
            address = new Uri(addresses.First(a => new Uri(a).Port.ToString() != overrides["Ecmt:HttpPort"]));
            channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { MaxReceiveMessageSize = null, MaxSendMessageSize = null });
        }
        else
        {
            var server = app.GetTestServer();
            address = server.BaseAddress;
            channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions { HttpHandler = server.CreateHandler(), MaxSendMessageSize = null });
        }
        int httpPort = int.Parse(overrides["Ecmt:HttpPort"]!);
        var host = new ServerHost(app, channel, address, kestrel && httpPort > 0 ? new Uri($"http://127.0.0.1:{httpPort}/") : null, logs);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!host.Models.LoadingFinished)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("models did not load within 60 s");
            await Task.Delay(10);
        }
        return host;
    }

    /// <summary>An HTTP client for the non-gRPC endpoints (/metrics, /healthz, REST, the page): in-process, or on the HTTP port.</summary>
    public HttpClient HttpClient() => HttpAddress is { } http ? new HttpClient { BaseAddress = http } : App.GetTestServer().CreateClient();

    public async ValueTask DisposeAsync()
    {
        Channel.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
    }
}

/// <summary>Keeps what the server logs, so a test can say which events were errors.</summary>
sealed class LogCapture : ILoggerProvider
{
    readonly System.Collections.Concurrent.ConcurrentQueue<(string Category, LogLevel Level, string Message, Exception? Exception)> _entries = new();

    public IReadOnlyList<(string Category, LogLevel Level, string Message, Exception? Exception)> Entries => [.. _entries];

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose() { }

    sealed class Logger(LogCapture owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (IsEnabled(logLevel)) owner._entries.Enqueue((category, logLevel, formatter(state, exception), exception));
        }
    }
}
