using Ecmt.Engine.Conversion;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;
using Ecmt.Kernels.Reference;

namespace Ecmt.Engine.Tests;

/// <summary>The ablation hook (<see cref="Ablation"/>): lossless neuron places and EC modules that emit the ANN's value.</summary>
public class AblationTests
{
    const int Images = 3;

    static (SpikingModel Model, float[] Pixels, float[] Ann) Setup(Ablation ablation)
    {
        var model = new SpikingModel(TestModels.TinyConverted(), ablation);
        var pixels = TestModels.RandomImages(model.Config, Images, 5).Normalized(0, Images, model.Config);
        return (model, pixels, model.Ann.Forward(pixels, Images));
    }

    /// <summary>Largest |accumulated logits / t − ANN logits| over the images after each of <paramref name="steps"/> steps.</summary>
    static double[] Errors(SpikingModel model, float[] pixels, float[] ann, int steps)
    {
        using var session = new SpikingSession(model, new ReferenceBackend(), Images);
        session.Reset(pixels);
        var errors = new double[steps];
        for (int t = 0; t < steps; t++)
        {
            var output = session.Next();
            for (int i = 0; i < Images; i++)
                for (int c = 0; c < output.Classes; c++)
                    errors[t] = Math.Max(errors[t], Math.Abs(output.Logits(i)[c] / output.Step - ann[i * output.Classes + c]));
        }
        return errors;
    }

    [Fact]
    public void With_every_neuron_lossless_the_spiking_model_is_the_ANN_at_every_step()
    {
        var (model, pixels, ann) = Setup(new Ablation(Places.All.ToHashSet(), new HashSet<EcModule>()));
        Assert.All(Errors(model, pixels, ann, 4), e => Assert.True(e < 1e-3, $"logit error {e:G3}"));
    }

    [Fact]
    public void One_exact_place_removes_only_its_own_error()
    {
        var (model, pixels, ann) = Setup(Ablation.None);
        var baseline = Errors(model, pixels, ann, 2);
        Assert.True(baseline[0] > 1e-2, $"the tiny model's first step should be inexact ({baseline[0]:G3})");
        // One place alone still leaves the others' errors.
        var (fc2, _, _) = Setup(new Ablation(new HashSet<Place> { Place.Fc2 }, new HashSet<EcModule>()));
        Assert.True(Errors(fc2, pixels, ann, 1)[0] > 1e-3);
        // Every EC output replaced by the ANN's, and every neuron lossless: exact again.
        var (both, _, _) = Setup(new Ablation(Places.All.ToHashSet(), Enum.GetValues<EcModule>().ToHashSet()));
        Assert.All(Errors(both, pixels, ann, 3), e => Assert.True(e < 1e-3, $"logit error {e:G3}"));
        // The ANN value of EC-GELU feeds fc2's neurons the ANN's activations: lossless fc2 after it makes every MLP
        // output exact, which a model with no other exact place cannot match.
        var (mlp, _, _) = Setup(new Ablation(new HashSet<Place> { Place.Fc2 }, new HashSet<EcModule> { EcModule.Gelu }));
        Assert.NotEqual(Errors(mlp, pixels, ann, 1)[0], baseline[0]);
    }

    [Fact]
    public void Only_the_reference_backend_runs_lossless_neurons()
    {
        var neuron = new MultiThresholdNeuron(4, [1f], [1f]) { Lossless = true };
        using var fast = Backends.Create(BackendKind.FastCpu);
        Assert.Throws<NotSupportedException>(() => fast.AllocateSpikes(neuron, 1, 4));
        var qk = new Ablation(new HashSet<Place> { Place.Q }, new HashSet<EcModule>());
        Assert.Throws<NotSupportedException>(() => new SpikingModel(TestModels.TinyConverted(), qk));
    }
}
