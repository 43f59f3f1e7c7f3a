using Ecmt.Kernels.Checks;

namespace Ecmt.Kernels.Tests;

/// <summary>The seeded inputs and the comparison of <see cref="CheckData"/>, under the tests' names.</summary>
static class TestData
{
    /// <summary>Every one of <paramref name="images"/> images at step <paramref name="t"/>, on <paramref name="backend"/>.</summary>
    public static ImageSteps Uniform(ISpikingBackend backend, int images, int t) => CheckData.Uniform(backend, images, t);

    public static float[] Normal(int count, int seed, float std = 1f, float mean = 0f) => CheckData.Normal(count, seed, std, mean);

    public static sbyte[] Codes(long count, int levels, int seed, double density = 0.4) => CheckData.Codes(count, levels, seed, density);

    public static MultiThresholdNeuron Neuron(int levels, int groups, int inner, int seed, SpikeRounding rounding = SpikeRounding.HalfBase) =>
        CheckData.Neuron(levels, groups, inner, seed, rounding);

    /// <summary>Asserts |expected − actual| ≤ atol + rtol·|expected| everywhere, naming the worst element.</summary>
    public static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what, float rtol = 1e-4f, float atol = 1e-5f) =>
        CheckData.AssertClose(expected, actual, what, rtol, atol);
}
