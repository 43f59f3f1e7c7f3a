using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;

namespace Ecmt.Engine.Tests;

/// <summary>
/// Whole models on every backend against the reference backend. Backends whose device is absent skip; one whose device
/// is present but broken fails (<see cref="BackendFaultException"/> is not caught). <c>cpu-cuda-shape</c> runs the
/// tiny model with CUDA's launch shape: 256-thread groups, several per launch (e.g. every row-wise kernel over its
/// (2 · tokens) rows, one group each).
/// Float summation order may flip a neuron that sits exactly on a threshold, so predictions may differ on a few
/// (image, step) pairs; anything more is a bug.
/// </summary>
public class CrossBackendModelTests
{
    /// <summary>(images, steps) predictions and per-step records of a run.</summary>
    static (int[,] Predictions, StepOutput[] Outputs) Run(SpikingModel model, ISpikingBackend backend, float[] pixels, int images, int steps)
    {
        using var session = new SpikingSession(model, backend, images);
        session.Reset(pixels);
        var predictions = new int[images, steps];
        var outputs = new StepOutput[steps];
        for (int t = 0; t < steps; t++)
        {
            outputs[t] = session.Next();
            for (int i = 0; i < images; i++) predictions[i, t] = outputs[t].Prediction(i);
        }
        return (predictions, outputs);
    }

    [Theory]
    [InlineData("fastcpu", ThresholdGranularity.PerTensor)]
    [InlineData("fastcpu", ThresholdGranularity.PerChannel)]
    [InlineData("cpu", ThresholdGranularity.PerTensor)]
    [InlineData("cpu", ThresholdGranularity.PerChannel)]
    [InlineData("cpu-cuda-shape", ThresholdGranularity.PerTensor)]
    [InlineData("cuda", ThresholdGranularity.PerTensor)]
    [InlineData("opencl", ThresholdGranularity.PerTensor)]
    public void Tiny_model_gives_the_reference_logits_and_counts(string backendName, ThresholdGranularity granularity)
    {
        using var backend = TestModels.BackendOrSkip(backendName);
        AssertLikeTheReference(new SpikingModel(TestModels.TinyConverted(ConversionSettings.Calibrated(granularity))), backend, $"{granularity}");
    }

    /// <summary>Two random images, 4 steps: the accumulated logits within 1e-4 of the reference's, the counts equal, at every step.</summary>
    static void AssertLikeTheReference(SpikingModel model, ISpikingBackend backend, string what)
    {
        const int images = 2, steps = 4;
        var pixels = TestModels.RandomImages(model.Config, images, 3).Normalized(0, images, model.Config);
        using var reference = Backends.Create(BackendKind.Reference);
        var expected = Run(model, reference, pixels, images, steps);
        var actual = Run(model, backend, pixels, images, steps);
        for (int t = 0; t < steps; t++)
        {
            var e = expected.Outputs[t];
            var a = actual.Outputs[t];
            for (int k = 0; k < e.AccumulatedLogits.Length; k++)
                Assert.True(Math.Abs(e.AccumulatedLogits[k] - a.AccumulatedLogits[k]) <= 1e-4 + 1e-4 * Math.Abs(e.AccumulatedLogits[k]),
                    $"{what}, step {t + 1}, logit {k}: {a.AccumulatedLogits[k]} vs reference {e.AccumulatedLogits[k]}");
            Assert.Equal(e.Sops, a.Sops);
            Assert.Equal(e.Spikes, a.Spikes);
        }
    }

    /// <summary>A tiny model of a layout (TestModels.Layouts), thresholds calibrated per channel on random images.</summary>
    static SpikingModel TinyLayoutModel(string layout)
    {
        var config = TestModels.TinyLayout(layout);
        return new SpikingModel(ConvertedModel.Convert(TestModels.RandomWeights(config, 4), TestModels.RandomImages(config, 40, 4),
            ConversionSettings.Calibrated(ThresholdGranularity.PerChannel), batchSize: 20));
    }

    /// <summary>
    /// One case per layout and backend: the accumulated logits and the counts of every step as the reference's. ILGPU's
    /// CPU accelerator (cpu) is slow, so it runs the two layouts that between them use every layout operation; the
    /// conformance suite holds it to the reference on each operation.
    /// </summary>
    [Theory]
    [InlineData("eva", "fastcpu")]
    [InlineData("beit-shared", "fastcpu")]
    [InlineData("no-qkv-bias", "fastcpu")]
    [InlineData("post-norm", "fastcpu")]
    [InlineData("eva", "cpu")]
    [InlineData("post-norm", "cpu")]
    [InlineData("eva", "cuda")]
    [InlineData("beit-shared", "cuda")]
    [InlineData("no-qkv-bias", "cuda")]
    [InlineData("post-norm", "cuda")]
    public void Each_layout_gives_the_reference_logits_and_counts(string layout, string backendName)
    {
        using var backend = TestModels.BackendOrSkip(backendName);
        AssertLikeTheReference(TinyLayoutModel(layout), backend, layout);
    }

    /// <summary>Every layout's accumulated logits / t converge to the ANN's: the error at t = 32 well under that at t = 4.</summary>
    [Theory]
    [MemberData(nameof(TestModels.LayoutNames), MemberType = typeof(TestModels))]
    public void Each_layout_converges_to_the_ANN(string layout)
    {
        var model = TinyLayoutModel(layout);
        const int images = 4;
        var pixels = TestModels.RandomImages(model.Config, images, 9).Normalized(0, images, model.Config);
        var ann = model.Ann.Forward(pixels, images);
        using var backend = Backends.Create(BackendKind.FastCpu);
        var outputs = Run(model, backend, pixels, images, 32).Outputs;
        double Error(int t) => ann.Select((v, k) => Math.Abs(outputs[t - 1].AccumulatedLogits[k] / t - v)).Max();
        double at4 = Error(4), at32 = Error(32);
        Assert.True(at32 < 0.25 * at4, $"{layout}: max |logit error| {at4:G3} at t = 4, {at32:G3} at t = 32");
    }

    /// <summary>
    /// The shipped model on the first 1,000 test images, 8 steps. Predictions must agree with the reference on at
    /// least 99.5 % of (image, step) pairs, both on the fixed set of the first 200 images and on all 1,000; per-step
    /// top-1 may differ by at most 0.2 point. That bound is measured on 1,000 images because on 200 one image is
    /// already 0.5 point: a single neuron flipped by summation order once moved step 3 from 88.0 % to 87.5 % there.
    /// </summary>
    [Theory]
    [InlineData("fastcpu")]
    [InlineData("cuda")]
    [InlineData("opencl")]
    public void Shipped_model_predicts_like_the_reference_on_the_test_images(string backendName)
    {
        var path = TestModels.ShippedModel();
        Assert.SkipWhen(path is null, "the shipped model is not built yet");
        using var backend = TestModels.BackendOrSkip(backendName);
        var model = new SpikingModel(ConvertedModel.Load(path!));
        const int images = 1000, fixedSet = 200, steps = 8;
        var test = FashionMnist.Load(Split.Test).Take(images);
        var pixels = test.Normalized(0, images, model.Config);
        using var reference = Backends.Create(BackendKind.Reference);
        var expected = Run(model, reference, pixels, images, steps).Predictions;
        var actual = Run(model, backend, pixels, images, steps).Predictions;

        foreach (int count in new[] { fixedSet, images })
        {
            int agree = 0;
            for (int i = 0; i < count; i++)
                for (int t = 0; t < steps; t++)
                    if (expected[i, t] == actual[i, t]) agree++;
            double agreement = (double)agree / (count * steps);
            Assert.True(agreement >= 0.995, $"{backendName} agrees with the reference on {agreement:P2} of (image, step) pairs of the first {count} images");
        }
        for (int t = 0; t < steps; t++)
        {
            int step = t;
            double referenceTop1 = Enumerable.Range(0, images).Count(i => expected[i, step] == test.Labels[i]) / (double)images;
            double backendTop1 = Enumerable.Range(0, images).Count(i => actual[i, step] == test.Labels[i]) / (double)images;
            Assert.True(Math.Abs(referenceTop1 - backendTop1) <= 0.002 + 1e-12,
                $"step {t + 1}: top-1 {backendTop1:P1} on {backendName}, {referenceTop1:P1} on the reference");
        }
    }
}
