using Ecmt.Engine.Serving;
using Ecmt.Kernels;
using Grpc.AspNetCore.HealthChecks;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;

namespace Ecmt.Server;

/// <summary>
/// Names the grpc.health.v1 services:
/// <list type="bullet">
/// <item><c>""</c> and <c>ecmt.v1.Classifier</c>: the server. SERVING once every model has loaded or failed, at
/// least one is ready, and the server is not shutting down.</item>
/// <item><c>ecmt.v1.Classifier/&lt;model&gt;</c>: one model (its folder name, as ListModels shows). SERVING while
/// that model is loaded and the server is not shutting down; NOT_SERVING while it loads, if it failed, and from the
/// start of shutdown.</item>
/// </list>
/// </summary>
public static class HealthNames
{
    public const string Server = "";
    public const string Classifier = "ecmt.v1.Classifier";
    public static string Model(string model) => $"{Classifier}/{model}";

    internal const string ServerCheck = "server";
    internal static string ModelCheck(string model) => $"model:{model}";
}

/// <summary>Whether the server is shutting down; health turns NOT_SERVING from that moment.</summary>
public sealed class ServerLifecycle : IDisposable
{
    readonly CancellationTokenSource _watchesEnd = new();

    public bool Stopping { get; private set; }
    public event Action? Changed;

    /// <summary>Cancelled when health Watch streams must end, so they do not hold up the drain of classification streams.</summary>
    public CancellationToken WatchesEnd => _watchesEnd.Token;

    public void BeginStopping()
    {
        Stopping = true;
        Changed?.Invoke();
    }

    public void EndWatches() => _watchesEnd.Cancel();

    public void Dispose() => _watchesEnd.Dispose();
}

sealed class ServerReadinessCheck(ModelHost host, ServerLifecycle lifecycle) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        int ready = host.Models.Count(m => m.State == ModelState.Ready);
        var result = lifecycle.Stopping ? HealthCheckResult.Unhealthy("shutting down")
            : !host.LoadingFinished ? HealthCheckResult.Unhealthy($"loading models ({ready} of {host.Models.Count} ready)")
            : ready == 0 ? HealthCheckResult.Unhealthy("no model could be loaded")
            : HealthCheckResult.Healthy($"{ready} of {host.Models.Count} models ready");
        return Task.FromResult(result);
    }
}

/// <remarks>
/// A model that served on auto after a broken CUDA device was found is DEGRADED (still SERVING) with the device's
/// error; one that hit a device fault while serving is NOT_SERVING with it (<see cref="HostedModel.Faulted"/>).
/// </remarks>
sealed class ModelReadinessCheck(HostedModel model, ServerLifecycle lifecycle, BackendKind backend) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(lifecycle.Stopping ? HealthCheckResult.Unhealthy("shutting down") : model.State switch
        {
            ModelState.Ready when backend == BackendKind.Auto && Backends.AutoFallbackReason is string reason =>
                HealthCheckResult.Degraded($"{model.Name} ready on {model.BackendName}, not on CUDA: the CUDA device is broken: {reason}"),
            ModelState.Ready => HealthCheckResult.Healthy($"{model.Name} ready on {model.BackendName}"),
            ModelState.Failed when model.Faulted => HealthCheckResult.Unhealthy($"{model.Name} stopped serving: {model.Error}"),
            ModelState.Failed => HealthCheckResult.Unhealthy($"{model.Name} failed to load: {model.Error}"),
            _ => HealthCheckResult.Unhealthy($"{model.Name} is loading"),
        });
}

/// <summary>Registers the readiness checks and maps them to grpc.health.v1 service names (see <see cref="HealthNames"/>).</summary>
sealed class HealthSetup(ModelHost host, ServerLifecycle lifecycle) : IConfigureOptions<HealthCheckServiceOptions>, IConfigureOptions<GrpcHealthChecksOptions>
{
    public void Configure(HealthCheckServiceOptions options)
    {
        options.Registrations.Add(new HealthCheckRegistration(HealthNames.ServerCheck, new ServerReadinessCheck(host, lifecycle), HealthStatus.Unhealthy, ["ready"]));
        foreach (var model in host.Models)
            options.Registrations.Add(new HealthCheckRegistration(HealthNames.ModelCheck(model.Name), new ModelReadinessCheck(model, lifecycle, host.Backend), HealthStatus.Unhealthy, ["model"]));
    }

    public void Configure(GrpcHealthChecksOptions options)
    {
        options.Services.Clear();
        options.Services.Map(HealthNames.Server, r => r.Name == HealthNames.ServerCheck);
        options.Services.Map(HealthNames.Classifier, r => r.Name == HealthNames.ServerCheck);
        foreach (var model in host.Models)
        {
            var check = HealthNames.ModelCheck(model.Name);
            options.Services.Map(HealthNames.Model(model.Name), r => r.Name == check);
        }
    }
}

/// <summary>
/// Pushes health to Watch streams the moment readiness changes (a model loads, shutdown begins) instead of waiting
/// for the periodic publisher; and at shutdown turns health NOT_SERVING, waits the drain delay, then ends the
/// Watch streams so Kestrel's drain waits only for classification streams.
/// </summary>
sealed class HealthStatusPublisher(
    ModelHost host, ServerLifecycle lifecycle, HealthCheckService checks, IEnumerable<IHealthCheckPublisher> publishers,
    IOptions<EcmtOptions> options, ILogger<HealthStatusPublisher> logger) : IHostedLifecycleService, IDisposable
{
    readonly SemaphoreSlim _gate = new(1, 1);

    public async Task PublishNowAsync(CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            var report = await checks.CheckHealthAsync(cancellationToken);
            foreach (var publisher in publishers) await publisher.PublishAsync(report, cancellationToken);
        }
        finally
        {
            _gate.Release();
        }
    }

    void OnChanged() => _ = Task.Run(async () =>
    {
        try
        {
            await PublishNowAsync();
        }
        catch (Exception e)
        {
            Log.HealthPublishFailed(logger, e);
        }
    });

    public Task StartingAsync(CancellationToken cancellationToken)
    {
        host.Changed += OnChanged;
        lifecycle.Changed += OnChanged;
        return Task.CompletedTask;
    }

    public Task StartAsync(CancellationToken cancellationToken) => PublishNowAsync(cancellationToken);

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public async Task StoppingAsync(CancellationToken cancellationToken)
    {
        host.Changed -= OnChanged;
        lifecycle.Changed -= OnChanged;
        lifecycle.BeginStopping();
        await PublishNowAsync(cancellationToken);
        var delay = TimeSpan.FromSeconds(options.Value.Shutdown.DrainDelaySeconds);
        Log.ShuttingDown(logger, delay.TotalSeconds);
        if (delay > TimeSpan.Zero) await Task.Delay(delay, cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        lifecycle.EndWatches();
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public void Dispose() => _gate.Dispose();
}
