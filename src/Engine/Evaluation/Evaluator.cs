using Ecmt.Engine.Ann;
using Ecmt.Engine.Conversion;
using Ecmt.Engine.Data;
using Ecmt.Engine.Simulation;
using Ecmt.Kernels;
using Ecmt.Protos;

namespace Ecmt.Engine.Evaluation;

/// <summary>Per-image, per-step record of a spiking run: what was predicted and how confident, for every t.</summary>
public sealed class EvaluationResult(int images, int steps, int classes)
{
    public int Images { get; } = images;
    public int Steps { get; } = steps;
    public int Classes { get; } = classes;
    public byte[] Labels { get; } = new byte[images];
    /// <summary>(images, classes): the ANN's logits.</summary>
    public float[] AnnLogits { get; } = new float[images * classes];
    /// <summary>(images, steps, classes): the head output accumulated over steps 1..t (not divided by t).</summary>
    public float[] Logits { get; } = new float[(long)images * steps * classes];
    public int[] AnnPredictions { get; } = new int[images];
    /// <summary>(images, steps): argmax of the accumulated logits after t steps.</summary>
    public int[,] Predictions { get; } = new int[images, steps];
    /// <summary>(images, steps): cumulative synaptic operations.</summary>
    public long[,] Sops { get; } = new long[images, steps];
    /// <summary>(steps): mean over images of max |accumulated logits / t − ANN logits|.</summary>
    public double[] LogitErrorByStep { get; } = new double[steps];
    public long DenseOperationsPerStep { get; set; }
    public double Seconds { get; set; }

    public double AnnTop1 => Enumerable.Range(0, Images).Count(i => AnnPredictions[i] == Labels[i]) / (double)Images;

    public double[] SnnTop1ByStep => Enumerable.Range(0, Steps)
        .Select(t => Enumerable.Range(0, Images).Count(i => Predictions[i, t] == Labels[i]) / (double)Images).ToArray();

    /// <summary>Mean over images of (0.9/4.6) · Σ SOPs(1..t) / dense operations of one ANN inference.</summary>
    public double[] EnergyRatioByStep => Enumerable.Range(0, Steps)
        .Select(t => Energy.AccumulateOverMac * MeanSops(t) / DenseOperationsPerStep).ToArray();

    /// <summary>Mean over images of Σ SOPs(1..t) / (t · dense operations).</summary>
    public double[] FiringRateByStep => Enumerable.Range(0, Steps)
        .Select(t => MeanSops(t) / ((t + 1.0) * DenseOperationsPerStep)).ToArray();

    double MeanSops(int t) => Enumerable.Range(0, Images).Average(i => (double)Sops[i, t]);

    /// <summary>(classes): image i's accumulated logits after step t (1-based).</summary>
    public ReadOnlySpan<float> LogitsAt(int image, int t) => Logits.AsSpan((int)(((long)image * Steps + t - 1) * Classes), Classes);

    /// <summary>(images, steps): what a stop policy reads after every step, with the given calibration.</summary>
    public StopSignal[,] Signals(ConfidenceCalibration calibration)
    {
        var signals = new StopSignal[Images, Steps];
        Parallel.For(0, Images, i =>
        {
            var tracker = calibration.Track(Classes);
            for (int t = 1; t <= Steps; t++) signals[i, t - 1] = tracker.Observe(LogitsAt(i, t), t);
        });
        return signals;
    }

    /// <summary>
    /// Early exit: each image stops at the first step where <paramref name="policy"/> holds (one tracker per image, as
    /// the server runs it), else at the last step; top-1 over the stopped predictions, mean steps and energy ratio.
    /// </summary>
    public PolicyOutcome EarlyExit(StopPolicy policy, StopSignal[,] signals)
    {
        int correct = 0;
        double steps = 0, sops = 0;
        for (int i = 0; i < Images; i++)
        {
            var tracker = policy.Track();
            int t = 0;
            while (t < Steps - 1 && !tracker.Observe(signals[i, t])) t++;
            if (signals[i, t].Prediction == Labels[i]) correct++;
            steps += t + 1;
            sops += Sops[i, t];
        }
        return new PolicyOutcome(policy, (double)correct / Images, steps / Images, Energy.AccumulateOverMac * sops / Images / DenseOperationsPerStep);
    }

    /// <summary>
    /// The oracle bound: each image stops at the first step from which its top-1 no longer changes up to the last
    /// step (a rule no client can run: it knows the future). Top-1, mean steps and energy ratio.
    /// </summary>
    public (double Top1, double MeanSteps, double EnergyRatio) Oracle()
    {
        int correct = 0;
        double steps = 0, sops = 0;
        for (int i = 0; i < Images; i++)
        {
            int t = Steps - 1;
            while (t > 0 && Predictions[i, t - 1] == Predictions[i, Steps - 1]) t--;
            if (Predictions[i, t] == Labels[i]) correct++;
            steps += t + 1;
            sops += Sops[i, t];
        }
        return ((double)correct / Images, steps / Images, Energy.AccumulateOverMac * sops / Images / DenseOperationsPerStep);
    }
}

/// <summary>Runs the ANN and the spiking model side by side over an image set.</summary>
public static class Evaluator
{
    public static EvaluationResult Run(SpikingModel model, Func<ISpikingBackend> backendFactory, ImageSet images, int steps, int batchSize,
        int workers = 1, IProgress<int>? progress = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(steps, 1);
        var result = new EvaluationResult(images.Count, steps, model.Config.NumClasses) { DenseOperationsPerStep = model.DenseOperationsPerStep };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var logitError = new double[steps];
        int done = 0;
        var batches = Enumerable.Range(0, (images.Count + batchSize - 1) / batchSize).ToArray();
        Parallel.ForEach(
            System.Collections.Concurrent.Partitioner.Create(batches, loadBalance: true),
            new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, workers) },
            () => (Backend: backendFactory(), Sessions: new Dictionary<int, SpikingSession>()),
            (batch, _, worker) =>
            {
                int start = batch * batchSize, count = Math.Min(batchSize, images.Count - start);
                if (!worker.Sessions.TryGetValue(count, out var session))
                    worker.Sessions[count] = session = new SpikingSession(model, worker.Backend, count);
                var pixels = images.Normalized(start, count, model.Config);
                var ann = model.Ann.Forward(pixels, count);
                int classes = model.Config.NumClasses;
                var localError = new double[steps];
                for (int i = 0; i < count; i++)
                {
                    result.Labels[start + i] = images.Labels[start + i];
                    result.AnnPredictions[start + i] = ArgMax(ann.AsSpan(i * classes, classes));
                    ann.AsSpan(i * classes, classes).CopyTo(result.AnnLogits.AsSpan((start + i) * classes));
                }
                session.Reset(pixels);
                for (int t = 0; t < steps; t++)
                {
                    var output = session.Next();
                    for (int i = 0; i < count; i++)
                    {
                        result.Predictions[start + i, t] = output.Prediction(i);
                        result.Sops[start + i, t] = output.Sops[i];
                        var logits = output.Logits(i);
                        logits.CopyTo(result.Logits.AsSpan((int)(((long)(start + i) * steps + t) * classes)));
                        double worst = 0;
                        for (int k = 0; k < classes; k++) worst = Math.Max(worst, Math.Abs(logits[k] / (t + 1) - ann[i * classes + k]));
                        localError[t] += worst;
                    }
                }
                lock (logitError)
                {
                    for (int t = 0; t < steps; t++) logitError[t] += localError[t];
                    done += count;
                    progress?.Report(done);
                }
                return worker;
            },
            worker =>
            {
                foreach (var s in worker.Sessions.Values) s.Dispose();
                worker.Backend.Dispose();
            });
        for (int t = 0; t < steps; t++) result.LogitErrorByStep[t] = logitError[t] / images.Count;
        result.Seconds = clock.Elapsed.TotalSeconds;
        return result;
    }

    /// <summary>ANN top-1 alone.</summary>
    public static double AnnTop1(ReferenceVit ann, ImageSet images, int batchSize = 250)
    {
        int correct = 0, classes = ann.Config.NumClasses;
        for (int start = 0; start < images.Count; start += batchSize)
        {
            int count = Math.Min(batchSize, images.Count - start);
            var logits = ann.Forward(images.Normalized(start, count, ann.Config), count);
            for (int i = 0; i < count; i++)
                if (ArgMax(logits.AsSpan(i * classes, classes)) == images.Labels[start + i]) correct++;
        }
        return (double)correct / images.Count;
    }

    public static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }
}
