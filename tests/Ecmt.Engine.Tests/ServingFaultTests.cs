using Ecmt.Engine.Model;
using Ecmt.Engine.Serving;
using Ecmt.Kernels;

namespace Ecmt.Engine.Tests;

/// <summary>
/// A device fault while serving stops the model (NOT_SERVING, with the fault and why the device is not reopened)
/// instead of failing requests one by one; the fault is reported as the step scheduler reports it, since there is no
/// GPU here to fail.
/// </summary>
public class ServingFaultTests
{
    [Fact]
    public async Task A_device_fault_while_serving_stops_the_model_and_says_why()
    {
        var path = TestModels.ShippedModel();
        Assert.SkipWhen(path is null, "the shipped model is not built yet");
        using var metrics = new EngineMetrics();
        var config = VitConfig.Load(Path.Combine(path!, ModelDirectory.ConfigFile));
        using var model = new HostedModel(new ModelLocation("fmnist-vit", path!), config, BackendKind.Reference, metrics);
        model.Load();
        Assert.Equal(ModelState.Ready, model.State);
        var changes = new List<ModelState>();
        model.StateChanged += m => changes.Add(m.State);

        var image = new float[config.InChannels * config.ImageSize * config.ImageSize];
        await foreach (var _ in model.ClassifyAsync(image, 1, Protos.StopPolicy.None, TestContext.Current.CancellationToken)) { }
        Assert.False(model.Faulted);

        // What the step scheduler reports when a step fails with a device fault (no GPU here to fail for real).
        model.ReportDeviceFault(new BackendFaultException("cuda: CUDA_ERROR_ILLEGAL_ADDRESS (simulated)"));
        Assert.True(model.Faulted);
        Assert.Equal(ModelState.Failed, model.State);
        Assert.Equal([ModelState.Failed], changes);
        Assert.Contains("CUDA_ERROR_ILLEGAL_ADDRESS", model.Error);
        Assert.Contains("restart the server", model.Error);

        var refused = await Assert.ThrowsAsync<ModelNotReadyException>(async () =>
        {
            await foreach (var _ in model.ClassifyAsync(image, 1, Protos.StopPolicy.None, TestContext.Current.CancellationToken)) { }
        });
        Assert.Contains("stopped serving", refused.Message);
    }

    [Fact]
    public void Device_faults_are_told_from_bad_arguments()
    {
        Assert.True(Backends.IsDeviceFault(new BackendFaultException("broken")));
        Assert.False(Backends.IsDeviceFault(new ArgumentException("bad shape")));
        Assert.False(Backends.IsDeviceFault(new BackendUnavailableException("no device")));
    }
}
