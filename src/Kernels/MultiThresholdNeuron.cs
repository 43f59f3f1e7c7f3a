namespace Ecmt.Kernels;

/// <summary>Where between two levels an MT neuron switches to the higher one (the firing offsets).</summary>
public enum SpikeRounding
{
    /// <summary>
    /// The paper's rule: level k fires from λ·2^k − λ/2, half the base threshold below it. Rounds to nearest for the
    /// first level only; a membrane between two higher levels mostly gets the lower one.
    /// </summary>
    HalfBase,
    /// <summary>
    /// Nearest level: level 0 fires from λ/2, level k ≥ 1 from 0.75·λ·2^k (halfway between λ·2^(k−1) and λ·2^k), so one
    /// spike is the level nearest the membrane. Exact in the limit all the same: the reset by subtraction carries what
    /// a spike did not send into the next step.
    /// </summary>
    Nearest,
}

/// <summary>
/// The multi-threshold (MT) neurons at one place of the network: two-sided, <see cref="Levels"/> levels per side,
/// base thresholds λp (positive side) and λn (negative side) per group, level ratio 2.
/// <para>
/// A spike is one signed byte: 0 for silence, +(k+1) for the positive level k (value +λp·2^k),
/// −(k+1) for the negative level k (value −λn·2^k). Element i of a tensor belongs to group
/// (i / <see cref="Inner"/>) mod <see cref="Groups"/>: one group for a per-tensor threshold, one per
/// channel (Inner = 1, Groups = channels) for per-channel thresholds, and so on.
/// </para>
/// </summary>
public sealed class MultiThresholdNeuron
{
    public const int MaxLevels = 24;

    public MultiThresholdNeuron(int levels, float[] lambdaPos, float[] lambdaNeg, int inner = 1, SpikeRounding rounding = SpikeRounding.HalfBase)
    {
        if (levels is < 1 or > MaxLevels) throw new ArgumentOutOfRangeException(nameof(levels), levels, $"levels must be 1..{MaxLevels}");
        if (lambdaPos.Length == 0 || lambdaPos.Length != lambdaNeg.Length) throw new ArgumentException("λp and λn need the same, non-zero number of groups");
        if (lambdaPos.Concat(lambdaNeg).Any(l => !(l > 0) || float.IsInfinity(l))) throw new ArgumentException("thresholds must be positive and finite");
        ArgumentOutOfRangeException.ThrowIfLessThan(inner, 1);
        Levels = levels;
        LambdaPos = lambdaPos;
        LambdaNeg = lambdaNeg;
        Inner = inner;
        Rounding = rounding;
        _thresholdPos = new float[lambdaPos.Length * levels];
        _thresholdNeg = new float[lambdaPos.Length * levels];
        for (int g = 0; g < lambdaPos.Length; g++)
        {
            for (int k = 0; k < levels; k++)
            {
                _thresholdPos[g * levels + k] = Threshold(lambdaPos[g], k, rounding);
                _thresholdNeg[g * levels + k] = Threshold(lambdaNeg[g], k, rounding);
            }
        }
    }

    // Threshold(λ, k) for every group and level, (G, n): the same floats, computed once.
    readonly float[] _thresholdPos, _thresholdNeg;

    /// <summary>One threshold pair for the whole tensor.</summary>
    public static MultiThresholdNeuron PerTensor(int levels, float lambdaPos, float lambdaNeg) => new(levels, [lambdaPos], [lambdaNeg]);

    public int Levels { get; }
    /// <summary>λp per group (G).</summary>
    public float[] LambdaPos { get; }
    /// <summary>λn per group (G).</summary>
    public float[] LambdaNeg { get; }
    public int Inner { get; }
    public int Groups => LambdaPos.Length;
    public SpikeRounding Rounding { get; }

    /// <summary>
    /// Diagnostic, the reference backend only: a lossless neuron passes its whole membrane on at every step (an exact
    /// value, not one spike of one level) and keeps nothing, so the place adds no quantisation error. The ablation
    /// that measures what each place's quantisation costs (<c>ecmt ablate</c>) uses it; other backends refuse it.
    /// </summary>
    public bool Lossless { get; init; }

    public int GroupOf(long index) => (int)(index / Inner % Groups);

    /// <summary>
    /// The firing threshold of positive level k: λ·2^k − λ/2 for <see cref="SpikeRounding.HalfBase"/>; for
    /// <see cref="SpikeRounding.Nearest"/> λ/2 at k = 0 and 0.75·λ·2^k above (the midpoint between two levels).
    /// </summary>
    public static float Threshold(float lambda, int k, SpikeRounding rounding = SpikeRounding.HalfBase) =>
        rounding == SpikeRounding.Nearest && k > 0 ? 0.75f * lambda * Pow2(k) : lambda * Pow2(k) - 0.5f * lambda;

    public static float Pow2(int k) => BitConverter.Int32BitsToSingle((127 + k) << 23);

    /// <summary>The value a spike code stands for in group g.</summary>
    public float Value(sbyte code, int g) => code switch
    {
        > 0 => LambdaPos[g] * Pow2(code - 1),
        < 0 => -LambdaNeg[g] * Pow2(-code - 1),
        _ => 0f,
    };

    /// <summary>
    /// One step of one neuron whose input has already been added to <paramref name="membrane"/>:
    /// fire the largest level whose threshold the membrane reaches (positive side first), reset by subtraction.
    /// This is the rule every backend implements.
    /// </summary>
    public sbyte Fire(ref float membrane, int g)
    {
        // Thresholds grow with k, so a membrane below the lowest one on either side stays silent.
        int row = g * Levels;
        if (membrane >= _thresholdPos[row])
        {
            for (int k = Levels - 1; k >= 0; k--)
            {
                if (membrane >= _thresholdPos[row + k])
                {
                    membrane -= LambdaPos[g] * Pow2(k);
                    return (sbyte)(k + 1);
                }
            }
        }
        else if (membrane <= -_thresholdNeg[row])
        {
            for (int k = Levels - 1; k >= 0; k--)
            {
                if (membrane <= -_thresholdNeg[row + k])
                {
                    membrane += LambdaNeg[g] * Pow2(k);
                    return (sbyte)-(k + 1);
                }
            }
        }
        return 0;
    }
}
