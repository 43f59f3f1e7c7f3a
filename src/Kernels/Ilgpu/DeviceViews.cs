using ILGPU;

namespace Ecmt.Kernels.Ilgpu;

/// <summary>
/// The MT neurons of one place as kernels see them: λp (G) and λn (G) in device memory, and the rule that maps a
/// flat element index to its threshold group, (index / Inner) mod Groups, as in <see cref="MultiThresholdNeuron"/>.
/// </summary>
readonly struct NeuronView
{
    public readonly ArrayView<float> LambdaPos, LambdaNeg;
    public readonly int Levels, Inner, Groups;
    /// <summary>1 for <see cref="SpikeRounding.Nearest"/>, 0 for <see cref="SpikeRounding.HalfBase"/>.</summary>
    public readonly int Nearest;

    public NeuronView(ArrayView<float> lambdaPos, ArrayView<float> lambdaNeg, int levels, int inner, int groups, SpikeRounding rounding)
    {
        Nearest = rounding == SpikeRounding.Nearest ? 1 : 0;
        LambdaPos = lambdaPos;
        LambdaNeg = lambdaNeg;
        Levels = levels;
        Inner = inner;
        Groups = groups;
    }

    public int GroupOf(int index) => index / Inner % Groups;

    /// <summary>2^k built from its exponent bits, exactly as <see cref="MultiThresholdNeuron.Pow2"/>.</summary>
    public static float Pow2(int k) => Interop.IntAsFloat((uint)((127 + k) << 23));

    /// <summary>The value of spike code <paramref name="code"/> of element <paramref name="index"/>: ±λ·2^(|code|−1) or 0.</summary>
    public float Value(sbyte code, int index)
    {
        if (code == 0) return 0f;
        int g = GroupOf(index);
        return code > 0 ? LambdaPos[g] * Pow2(code - 1) : -LambdaNeg[g] * Pow2(-code - 1);
    }

    /// <summary>
    /// <see cref="MultiThresholdNeuron.Fire"/> on the device: the membrane already holds this step's input; fires the
    /// largest level whose threshold (<see cref="MultiThresholdNeuron.Threshold"/>) it reaches (positive side first)
    /// and resets by subtraction.
    /// </summary>
    public sbyte Fire(ref float membrane, int index)
    {
        int g = GroupOf(index);
        float lp = LambdaPos[g], ln = LambdaNeg[g];
        for (int k = Levels - 1; k >= 0; k--)
        {
            if (membrane >= Threshold(lp, k))
            {
                membrane -= lp * Pow2(k);
                return (sbyte)(k + 1);
            }
        }
        for (int k = Levels - 1; k >= 0; k--)
        {
            if (membrane <= -Threshold(ln, k))
            {
                membrane += ln * Pow2(k);
                return (sbyte)-(k + 1);
            }
        }
        return 0;
    }

    /// <summary><see cref="MultiThresholdNeuron.Threshold"/>, the same float operations.</summary>
    float Threshold(float lambda, int k) => Nearest != 0 && k > 0 ? 0.75f * lambda * Pow2(k) : lambda * Pow2(k) - 0.5f * lambda;
}

/// <summary>Four floats held in registers: one row of a thread's 4×4 micro-tile in the tiled products.</summary>
struct Float4
{
    public float X, Y, Z, W;

    public Float4(float x, float y, float z, float w)
    {
        X = x;
        Y = y;
        Z = z;
        W = w;
    }

    /// <summary>this += a · b.</summary>
    public void Accumulate(float a, Float4 b)
    {
        X += a * b.X;
        Y += a * b.Y;
        Z += a * b.Z;
        W += a * b.W;
    }
}
