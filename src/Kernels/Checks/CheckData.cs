namespace Ecmt.Kernels.Checks;

/// <summary>A backend disagreed with the reference (or misbehaved) in a check; the message names the first difference.</summary>
public sealed class CheckFailedException(string message) : Exception(message);

/// <summary>Seeded random inputs of the operation checks, and the comparison they use.</summary>
public static class CheckData
{
    /// <summary><paramref name="count"/> normal samples (Box–Muller over <see cref="Random"/> with <paramref name="seed"/>).</summary>
    public static float[] Normal(int count, int seed, float std = 1f, float mean = 0f)
    {
        var rng = new Random(seed);
        var values = new float[count];
        for (int i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            values[i] = mean + std * (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return values;
    }

    /// <summary>Random spike codes of a neuron: mostly silent, the rest spread over the levels and both signs.</summary>
    public static sbyte[] Codes(long count, int levels, int seed, double density = 0.4)
    {
        var rng = new Random(seed);
        var codes = new sbyte[count];
        for (long i = 0; i < count; i++)
            if (rng.NextDouble() < density) codes[i] = (sbyte)((rng.Next(2) == 0 ? 1 : -1) * (1 + rng.Next(levels)));
        return codes;
    }

    /// <summary>A neuron with random thresholds in [0.05, 0.55) per group.</summary>
    public static MultiThresholdNeuron Neuron(int levels, int groups, int inner, int seed, SpikeRounding rounding = SpikeRounding.HalfBase)
    {
        var rng = new Random(seed);
        float[] pos = new float[groups], neg = new float[groups];
        for (int g = 0; g < groups; g++)
        {
            pos[g] = 0.05f + (float)rng.NextDouble() * 0.5f;
            neg[g] = 0.05f + (float)rng.NextDouble() * 0.5f;
        }
        return new MultiThresholdNeuron(levels, pos, neg, inner, rounding);
    }

    /// <summary>Every one of <paramref name="images"/> images at step <paramref name="t"/>, on <paramref name="backend"/>.</summary>
    public static ImageSteps Uniform(ISpikingBackend backend, int images, int t)
    {
        var steps = backend.AllocateSteps(images);
        backend.UploadSteps(Enumerable.Repeat(t, images).ToArray(), steps);
        return steps;
    }

    /// <summary>Throws <see cref="CheckFailedException"/> unless <paramref name="condition"/>.</summary>
    public static void That(bool condition, string failure)
    {
        if (!condition) throw new CheckFailedException(failure);
    }

    /// <summary>Checks |expected − actual| ≤ atol + rtol·|expected| everywhere, naming the worst element.</summary>
    public static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what, float rtol = 1e-4f, float atol = 1e-5f)
    {
        That(expected.Length == actual.Length, $"{what}: {actual.Length} elements, expected {expected.Length}");
        int worst = -1;
        double worstExcess = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double error = Math.Abs((double)expected[i] - actual[i]);
            double excess = error - (atol + rtol * Math.Abs(expected[i]));
            if (double.IsNaN(actual[i]) || excess > worstExcess)
            {
                worstExcess = double.IsNaN(actual[i]) ? double.PositiveInfinity : excess;
                worst = i;
            }
        }
        if (worst >= 0)
            throw new CheckFailedException($"{what}: element {worst} is {actual[worst]}, expected {expected[worst]} (tolerance {atol} + {rtol}·|expected|)");
    }
}
