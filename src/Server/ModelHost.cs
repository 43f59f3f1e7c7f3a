using Ecmt.Engine.Model;
using Ecmt.Engine.Serving;
using Ecmt.Kernels;
using Microsoft.Extensions.Options;

namespace Ecmt.Server;

/// <summary>
/// The models this server hosts. Finds them when constructed (so a wrong model directory or backend name stops the
/// server at startup), checks at start that the backend can be created here, then loads the models one after
/// another in the background: each becomes ready on its own, which the health service reports per model.
/// </summary>
public sealed class ModelHost : IHostedService, IDisposable
{
    readonly ILogger<ModelHost> _logger;
    readonly SortedDictionary<string, HostedModel> _models = new(StringComparer.Ordinal);
    Task _loading = Task.CompletedTask;
    readonly CancellationTokenSource _stop = new();

    public ModelHost(IOptions<EcmtOptions> options, EngineMetrics metrics, ILogger<ModelHost> logger)
    {
        _logger = logger;
        var o = options.Value;
        Backend = Backends.Parse(string.IsNullOrWhiteSpace(o.Backend) ? Environment.GetEnvironmentVariable(Backends.EnvironmentVariable) : o.Backend);
        ModelDirectory = string.IsNullOrWhiteSpace(o.ModelDirectory) ? DefaultModelDirectory() : o.ModelDirectory;
        var locations = ModelCatalog.Discover(ModelDirectory, out var skipped);
        foreach (var folder in skipped)
            Log.SkippedUnconverted(logger, folder);
        foreach (var location in locations)
        {
            VitConfig config;
            try
            {
                config = VitConfig.Load(Path.Combine(location.Directory, Engine.Model.ModelDirectory.ConfigFile));
            }
            catch (Exception e) when (e is IOException or InvalidDataException or System.Text.Json.JsonException)
            {
                Log.BadConfig(logger, location.Directory, e.Message);
                continue;
            }
            var model = new HostedModel(location, config, Backend, metrics, o.Batching.ToEngine());
            model.StateChanged += m =>
            {
                if (m.Faulted) Log.ModelFaulted(logger, m.Name, m.Error);
                Changed?.Invoke();
            };
            _models.Add(model.Name, model);
        }
        if (_models.Count == 0)
            throw new InvalidOperationException($"no converted model found in '{ModelDirectory}' (a converted model folder holds config.json, model.safetensors, conversion.json and thresholds.safetensors)");
    }

    static string DefaultModelDirectory()
    {
        try
        {
            return Engine.Model.ModelDirectory.DefaultModelPath();
        }
        catch (DirectoryNotFoundException)
        {
            throw new InvalidOperationException(
                $"no model directory is configured and the default model models/{Engine.Model.ModelDirectory.DefaultModelName} was not found; "
                + "set Ecmt:ModelDirectory (--models DIR, or Ecmt__ModelDirectory)");
        }
    }

    public BackendKind Backend { get; }
    public string ModelDirectory { get; }
    public IReadOnlyCollection<HostedModel> Models => _models.Values;
    /// <summary>True once every model has loaded or failed.</summary>
    public bool LoadingFinished { get; private set; }
    /// <summary>Raised when a model's state changes or loading finishes.</summary>
    public event Action? Changed;

    public HostedModel? Find(string name) => _models.GetValueOrDefault(name);

    public Task StartAsync(CancellationToken cancellationToken)
    {
        // Fail fast when the chosen device is absent, rather than failing every model.
        using (var probe = Backends.Create(Backend))
            Log.Serving(_logger, _models.Count, ModelDirectory, probe.Name);
        // auto never falls back from a broken CUDA device in silence: logged here, reported by health (Health.cs).
        if (Backend == BackendKind.Auto && Backends.AutoFallbackReason is string reason) Log.AutoFellBack(_logger, reason);
        _loading = Task.Run(LoadAll, CancellationToken.None);
        return Task.CompletedTask;
    }

    void LoadAll()
    {
        foreach (var model in _models.Values)
        {
            if (_stop.IsCancellationRequested) break;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            model.Load();
            if (model.State == ModelState.Ready)
                Log.ModelReady(_logger, model.Name, clock.Elapsed.TotalSeconds, model.Config.Depth, model.Config.EmbedDim, model.Config.NumClasses, model.BackendName);
            else
                Log.ModelFailed(_logger, model.Name, model.Directory, model.Error);
        }
        LoadingFinished = true;
        Changed?.Invoke();
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stop.CancelAsync();
        await _loading.WaitAsync(cancellationToken).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    public void Dispose()
    {
        foreach (var model in _models.Values) model.Dispose();
        _stop.Dispose();
    }
}
