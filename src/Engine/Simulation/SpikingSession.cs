using Ecmt.Engine.Model;
using Ecmt.Kernels;

namespace Ecmt.Engine.Simulation;

/// <summary>
/// The accumulated output after step t for a batch: logits (B, classes) summed over steps 1..t, and per image the
/// cumulative spike and synaptic-operation counts.
/// </summary>
public sealed class StepOutput(int step, int images, int classes, long denseOperationsPerStep)
{
    public int Step { get; } = step;
    public int Images { get; } = images;
    public int Classes { get; } = classes;
    /// <summary>(B, classes): Σ of the head's increments; divided by t it approximates the ANN's logits.</summary>
    public float[] AccumulatedLogits { get; } = new float[images * classes];
    /// <summary>(B): synaptic operations over steps 1..t.</summary>
    public long[] Sops { get; } = new long[images];
    /// <summary>(B): spikes emitted over steps 1..t.</summary>
    public long[] Spikes { get; } = new long[images];
    /// <summary>The ANN's multiply-accumulates over the same layers, for one inference.</summary>
    public long DenseOperationsPerStep { get; } = denseOperationsPerStep;

    public ReadOnlySpan<float> Logits(int image) => AccumulatedLogits.AsSpan(image * Classes, Classes);

    public int Prediction(int image)
    {
        var logits = Logits(image);
        int best = 0;
        for (int c = 1; c < logits.Length; c++) if (logits[c] > logits[best]) best = c;
        return best;
    }

    /// <summary>Σ SOPs / Σ dense operations over steps 1..t (ECMT.md section 5).</summary>
    public double FiringRate(int image) => (double)Sops[image] / ((double)DenseOperationsPerStep * Step);

    /// <summary>Energy relative to one ANN inference: t · (0.9 pJ / 4.6 pJ) · rate(t).</summary>
    public double EnergyRatio(int image) => Step * Energy.AccumulateOverMac * FiringRate(image);
}

/// <summary>The 45 nm energy figures of ECMT.md section 5.</summary>
public static class Energy
{
    public const double AccumulatePicojoules = 0.9, MultiplyAccumulatePicojoules = 4.6;
    public const double AccumulateOverMac = AccumulatePicojoules / MultiplyAccumulatePicojoules;
}

/// <summary>
/// The spiking state of a batch of B independent images on one backend: membranes, EC sums and running
/// products for every block. <see cref="Reset"/> starts new images; each <see cref="Step"/> runs one time step
/// and returns the accumulated output. Not thread-safe: one session serves one caller.
/// </summary>
public sealed class SpikingSession : IDisposable
{
    readonly SpikingModel _model;
    readonly ISpikingBackend _backend;
    readonly List<IDisposable> _owned = [];
    readonly DeviceTensor _embed, _x, _h, _qkv, _scores, _probs, _attn, _residual, _hidden, _gelu, _cls, _clsNorm, _logits, _accumulated;
    readonly BlockState[] _blocks;
    readonly EcState _finalNorm;
    readonly StepCounters _counters;
    readonly float[] _embedHost;
    // (depth, EC modules): the ANN's output of each module an ablation replaces, for the current images; else null.
    readonly DeviceTensor?[,]? _annValues;
    // (depth): each block's relative position bias (1, H, N, N) on the backend, or null (blocks sharing one table share it)
    readonly DeviceTensor?[] _relPosBias;

    sealed record BlockState(
        EcState Ln1, DeviceTensor FcQkvMembrane, SpikeTensor FcQkvSpikes,
        DeviceTensor QkvMembrane, SpikeTensor QkvSpikes, DeviceTensor QkvSums, DeviceTensor ScoreProducts,
        EcState Softmax, DeviceTensor SMembrane, SpikeTensor SSpikes, DeviceTensor SSums, DeviceTensor ValueProducts,
        DeviceTensor FcOutMembrane, SpikeTensor FcOutSpikes,
        EcState Ln2, DeviceTensor Fc1Membrane, SpikeTensor Fc1Spikes, EcState Gelu, DeviceTensor Fc2Membrane, SpikeTensor Fc2Spikes);

    public SpikingSession(SpikingModel model, ISpikingBackend backend, int images)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(images, 1);
        _model = model;
        _backend = backend;
        Images = images;
        var c = model.Config;
        int b = images, n = c.Tokens, d = c.EmbedDim, f = c.MlpDim, h = c.NumHeads;
        _embedHost = new float[b * n * d];
        _embed = Tensor(b, n, d);
        _x = Tensor(b, n, d);
        _h = Tensor(b, n, d);
        _qkv = Tensor(b, n, 3 * d);
        _scores = Tensor(b, h, n, n);
        _probs = Tensor(b, h, n, n);
        _attn = Tensor(b, n, d);
        _residual = Tensor(b, n, d);
        _hidden = Tensor(b, n, f);
        _gelu = Tensor(b, n, f);
        _cls = Tensor(b, d);
        _clsNorm = Tensor(b, d);
        _logits = Tensor(b, c.NumClasses);
        _accumulated = State(b, c.NumClasses);
        _blocks = model.Blocks.Select(blk => new BlockState(
            Ec(b, n, d), State(b, n, d), Spikes(blk.FcQkvNeuron, b, n, d),
            State(b, n, 3 * d), Spikes(blk.QkvNeuron, b, n, 3 * d), State(b, n, 3 * d), State(b, h, n, n),
            Ec(b, h, n, n), State(b, h, n, n), Spikes(blk.SNeuron, b, h, n, n), State(b, h, n, n), State(b, n, d),
            State(b, n, d), Spikes(blk.FcOutNeuron, b, n, d),
            Ec(b, n, d), State(b, n, d), Spikes(blk.Fc1Neuron, b, n, d), Ec(b, n, f), State(b, n, f), Spikes(blk.Fc2Neuron, b, n, f)))
            .ToArray();
        _finalNorm = Ec(b, d);
        if (model.Ablation.AnnValues.Count > 0)
        {
            _annValues = new DeviceTensor?[c.Depth, Enum.GetValues<EcModule>().Length];
            for (int l = 0; l < c.Depth; l++)
                foreach (var module in model.Ablation.AnnValues)
                    _annValues[l, (int)module] = module switch
                    {
                        EcModule.Softmax => Tensor(b, h, n, n),
                        EcModule.Gelu => Tensor(b, n, f),
                        _ => Tensor(b, n, d),
                    };
        }
        _counters = backend.AllocateCounters(b);
        _owned.Add(_counters);
        var uploaded = new Dictionary<float[], DeviceTensor>(ReferenceEqualityComparer.Instance);
        _relPosBias = model.Blocks.Select(blk =>
        {
            if (blk.RelPosBias is not { } bias) return null;
            if (!uploaded.TryGetValue(bias, out var tensor))
            {
                tensor = Tensor(1, h, n, n);
                backend.Upload(bias, tensor);
                uploaded[bias] = tensor;
            }
            return tensor;
        }).ToArray();
        if (c.PostNorm && model.Ablation.AnnValues.Any(m => m is EcModule.Ln1 or EcModule.Ln2))
            throw new NotSupportedException("post-norm blocks: EC-LN1 and EC-LN2 do not feed a neuron place, so an ablation cannot replace them");
    }

    public int Images { get; }
    public int Step { get; private set; }
    public SpikingModel Model => _model;
    public string BackendName => _backend.Name;

    /// <summary>Floats of state held per image: membranes, EC sums and running products (scratch tensors excluded).</summary>
    public long StateFloatsPerImage { get; private set; }

    /// <summary>Starts new images: normalised pixels (B, C, H, W). Clears every membrane and sum.</summary>
    public void Reset(ReadOnlySpan<float> images)
    {
        _model.Ann.Embed(images, Images).CopyTo(_embedHost, 0);
        _backend.Upload(_embedHost, _embed);
        if (_annValues is not null)
        {
            _model.Ann.Forward(images, Images, (block, place, values, _) =>
            {
                foreach (var module in _model.Ablation.AnnValues)
                    if (Ablation.PlaceAfter(module) == place) _backend.Upload(values, _annValues[block, (int)module]!);
            });
        }
        foreach (var block in _blocks)
        {
            foreach (var tensor in new[]
            {
                block.Ln1.InputSum, block.Ln1.OutputSum, block.FcQkvMembrane, block.QkvMembrane, block.QkvSums, block.ScoreProducts,
                block.Softmax.InputSum, block.Softmax.OutputSum, block.SMembrane, block.SSums, block.ValueProducts, block.FcOutMembrane,
                block.Ln2.InputSum, block.Ln2.OutputSum, block.Fc1Membrane, block.Gelu.InputSum, block.Gelu.OutputSum, block.Fc2Membrane,
            })
                _backend.Clear(tensor);
        }
        _backend.Clear(_finalNorm.InputSum);
        _backend.Clear(_finalNorm.OutputSum);
        _backend.Clear(_accumulated);
        _backend.Clear(_counters);
        Step = 0;
    }

    /// <summary>Runs time step t = <see cref="Step"/> + 1 and returns the accumulated output.</summary>
    public StepOutput Next()
    {
        int t = ++Step;
        var c = _model.Config;
        var be = _backend;
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        // Inputs that do not depend on spikes are added again at every step.
        be.Copy(_embed, _x);
        for (int l = 0; l < _blocks.Length; l++)
        {
            var w = _model.Blocks[l];
            var s = _blocks[l];
            // Attention: x += proj(MT(EC(A·V)))  with  A = MT(EC-softmax(EC(Q·Kᵀ) + bias)),  q, k, v = MT(qkv(MT(EC-LN1(x))));
            // post-norm: x += EC-LN1(proj(MT(EC(A·V)))) with q, k, v = MT(qkv(MT(x))). Layer scale is folded into proj / LN1.
            var attnIn = _h;
            if (c.PostNorm) attnIn = _x;
            else
            {
                be.LayerNormEc(_x, s.Ln1, w.Norm1, t, _h);
                AnnValue(l, EcModule.Ln1, _h);
            }
            be.Fire(attnIn, s.FcQkvMembrane, s.FcQkvSpikes, _counters, fanOut: w.Qkv.Out);
            be.SpikeLinear(s.FcQkvSpikes, w.Qkv, _qkv);
            be.Fire(_qkv, s.QkvMembrane, s.QkvSpikes, _counters, fanOut: 0);
            be.AttentionScoresEc(s.QkvSpikes, s.QkvSums, s.ScoreProducts, c.NumHeads, scale, t, _scores, _counters);
            // The relative position bias does not depend on spikes: added to every step's increment, the scores sum to t·(scale·QKᵀ + bias).
            if (_relPosBias[l] is { } relBias) be.AddBroadcast(_scores, relBias);
            be.SoftmaxEc(_scores, s.Softmax, t, _probs);
            AnnValue(l, EcModule.Softmax, _probs);
            be.Fire(_probs, s.SMembrane, s.SSpikes, _counters, fanOut: 0);
            be.AttentionValuesEc(s.SSpikes, s.SSums, s.QkvSpikes, s.QkvSums, s.ValueProducts, c.NumHeads, t, _attn, _counters);
            AnnValue(l, EcModule.AttentionValues, _attn);
            be.Fire(_attn, s.FcOutMembrane, s.FcOutSpikes, _counters, fanOut: w.Proj.Out);
            be.SpikeLinear(s.FcOutSpikes, w.Proj, _residual);
            AddBranch(s.Ln1, w.Norm1, t);
            // MLP: x += fc2(MT(EC-GELU(fc1(MT(EC-LN2(x)))))); post-norm: x += EC-LN2(fc2(MT(EC-GELU(fc1(MT(x))))))
            var mlpIn = _h;
            if (c.PostNorm) mlpIn = _x;
            else
            {
                be.LayerNormEc(_x, s.Ln2, w.Norm2, t, _h);
                AnnValue(l, EcModule.Ln2, _h);
            }
            be.Fire(mlpIn, s.Fc1Membrane, s.Fc1Spikes, _counters, fanOut: w.Fc1.Out);
            be.SpikeLinear(s.Fc1Spikes, w.Fc1, _hidden);
            be.GeluEc(_hidden, s.Gelu, t, _gelu);
            AnnValue(l, EcModule.Gelu, _gelu);
            be.Fire(_gelu, s.Fc2Membrane, s.Fc2Spikes, _counters, fanOut: w.Fc2.Out);
            be.SpikeLinear(s.Fc2Spikes, w.Fc2, _residual);
            AddBranch(s.Ln2, w.Norm2, t);
        }
        // The head reads EC-LN of the class token, or EC-fc_norm of the mean of the patch tokens (linear: the mean of the
        // increments), directly (no neuron); its increments are accumulated.
        if (c.Pooling == Pooling.Mean) be.MeanTokens(_x, 1, _cls);
        else be.SelectToken(_x, 0, _cls);
        be.LayerNormEc(_cls, _finalNorm, _model.FinalNorm, t, _clsNorm);
        be.Linear(_clsNorm, _model.Head, _logits);
        be.Add(_accumulated, _logits);

        var output = new StepOutput(t, Images, c.NumClasses, _model.DenseOperationsPerStep);
        be.Download(_accumulated, output.AccumulatedLogits);
        be.ReadCounters(_counters, output.Spikes, output.Sops);
        return output;
    }

    /// <summary>x += the branch output in _residual; post-norm blocks pass it through their EC-LayerNorm first.</summary>
    void AddBranch(EcState ln, LayerNormLayer norm, int t)
    {
        if (_model.Config.PostNorm)
        {
            _backend.LayerNormEc(_residual, ln, norm, t, _h);
            _backend.Add(_x, _h);
        }
        else _backend.Add(_x, _residual);
    }

    /// <summary>An ablation's hook: the EC module's output becomes the ANN's value there (every step adds it once).</summary>
    void AnnValue(int block, EcModule module, DeviceTensor output)
    {
        if (_annValues?[block, (int)module] is { } ann) _backend.Copy(ann, output);
    }

    /// <summary>Spike codes of one place of one block after the last step (tests and diagnostics).</summary>
    public sbyte[] SpikeCodes(int block, Conversion.Place place)
    {
        var s = _blocks[block];
        var spikes = place switch
        {
            Conversion.Place.FcQkv => s.FcQkvSpikes,
            Conversion.Place.Q or Conversion.Place.K or Conversion.Place.V => s.QkvSpikes,
            Conversion.Place.S => s.SSpikes,
            Conversion.Place.FcOut => s.FcOutSpikes,
            Conversion.Place.Fc1 => s.Fc1Spikes,
            _ => s.Fc2Spikes,
        };
        var codes = new sbyte[spikes.Length];
        _backend.DownloadCodes(spikes, codes);
        return codes;
    }

    DeviceTensor Tensor(params int[] shape)
    {
        var t = _backend.Allocate(shape);
        _owned.Add(t);
        return t;
    }

    SpikeTensor Spikes(MultiThresholdNeuron neuron, params int[] shape)
    {
        var s = _backend.AllocateSpikes(neuron, shape);
        _owned.Add(s);
        return s;
    }

    DeviceTensor State(params int[] shape)
    {
        StateFloatsPerImage += shape.Skip(1).Aggregate(1L, (a, x) => a * x);
        return Tensor(shape);
    }

    EcState Ec(params int[] shape) => new(State(shape), State(shape));

    public void Dispose()
    {
        foreach (var d in _owned) d.Dispose();
        _owned.Clear();
    }
}
