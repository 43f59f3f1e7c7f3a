using Ecmt.Engine.Conversion;
using Ecmt.Engine.Evaluation;
using Ecmt.Protos;
using Google.Protobuf;

namespace Ecmt.Engine.Tests;

/// <summary>The stop policy (one definition for eval, server and client) and the early-exit study over recorded logits.</summary>
public class EarlyExitTests
{
    const int Classes = 3;

    /// <summary>Mean logits (classes) whose softmax puts probability p on class c and splits the rest evenly.</summary>
    static float[] MeanLogits(int c, double p)
    {
        var z = new float[Classes];
        double other = (1 - p) / (Classes - 1);
        for (int k = 0; k < Classes; k++) z[k] = (float)Math.Log(k == c ? p : other);
        return z;
    }

    /// <summary>Two images over four steps. Image 0 (label 1): confident but wrong at t = 1, then right and confident.
    /// Image 1 (label 2): never confident, right from t = 2 on.</summary>
    static EvaluationResult Recorded()
    {
        var r = new EvaluationResult(images: 2, steps: 4, classes: Classes) { DenseOperationsPerStep = 100 };
        r.Labels[0] = 1;
        r.Labels[1] = 2;
        int[,] predictions = { { 0, 1, 1, 1 }, { 0, 2, 2, 2 } };
        double[,] confidence = { { 0.95, 0.7, 0.92, 0.97 }, { 0.4, 0.45, 0.5, 0.6 } };
        for (int i = 0; i < 2; i++)
            for (int t = 1; t <= 4; t++)
            {
                var mean = MeanLogits(predictions[i, t - 1], confidence[i, t - 1]);
                for (int c = 0; c < Classes; c++) r.Logits[(i * 4 + t - 1) * Classes + c] = t * mean[c];
                r.Predictions[i, t - 1] = predictions[i, t - 1];
                r.Sops[i, t - 1] = 10 * t;
            }
        return r;
    }

    static PolicyOutcome Run(StopPolicy policy)
    {
        var r = Recorded();
        return r.EarlyExit(policy, r.Signals(ConfidenceCalibration.Uncalibrated));
    }

    [Fact]
    public void Confidence_alone_stops_at_the_first_confident_step()
    {
        var o = Run(new StopPolicy { MinConfidence = 0.9 });
        Assert.Equal(0.5, o.Top1);            // image 0 stops wrong at t = 1; image 1 runs to t = 4 and is right
        Assert.Equal((1 + 4) / 2.0, o.MeanSteps);
        Assert.Equal(0.9 / 4.6 * (10 + 40) / 2.0 / 100, o.EnergyRatio, 12);
    }

    [Fact]
    public void Every_rule_that_is_set_must_hold()
    {
        // Stable for one step as well: image 0 has no history at t = 1, is unconfident at t = 2, both at t = 3.
        var o = Run(new StopPolicy { MinConfidence = 0.9, StableSteps = 1 });
        Assert.Equal(1.0, o.Top1);
        Assert.Equal((3 + 4) / 2.0, o.MeanSteps);
        // Stable for two steps: class 1 at t = 2, 3, 4 equals each of the two steps before only at t = 4.
        Assert.Equal((4 + 4) / 2.0, Run(new StopPolicy { MinConfidence = 0.9, StableSteps = 2 }).MeanSteps);
        // Stable alone: image 1 (class 2 from t = 2) stops at t = 3 too.
        Assert.Equal((3 + 3) / 2.0, Run(new StopPolicy { StableSteps = 1 }).MeanSteps);
        // At least 2 steps and confident: image 0 waits for t = 3 (t = 2 is at 0.7).
        Assert.Equal((3 + 4) / 2.0, Run(new StopPolicy { MinConfidence = 0.9, MinSteps = 2 }).MeanSteps);
        // A margin of 0.5 (top-1 minus top-2): image 0 at t = 1 (0.95 − 0.025); image 1 never (0.6 − 0.2 at t = 4).
        Assert.Equal((1 + 4) / 2.0, Run(new StopPolicy { MinMargin = 0.5 }).MeanSteps);
        // No rule: every image runs to the last step.
        Assert.Equal(4.0, Run(StopPolicy.None).MeanSteps);
    }

    [Fact]
    public void The_oracle_stops_where_the_top1_stops_changing()
    {
        var (top1, meanSteps, _) = Recorded().Oracle();
        Assert.Equal(1.0, top1);
        Assert.Equal((2 + 2) / 2.0, meanSteps);
    }

    [Fact]
    public void The_tracker_counts_stability_the_same_way_everywhere()
    {
        var tracker = new StopPolicy { StableSteps = 2 }.Track();
        int[] top = [4, 4, 4, 7, 7, 7];
        var met = top.Select((c, i) => tracker.Observe(new StopSignal(i + 1, c, 0.5f, 0.1f))).ToArray();
        // Step 3 equals steps 1 and 2; after the change at step 4, step 6 equals steps 4 and 5.
        Assert.Equal([false, false, true, false, false, true], met);
        Assert.Throws<ArgumentException>(() => new StopPolicy { StableSteps = 2 }.Track().Observe(new StopSignal(2, 0, 1, 1)));
    }

    [Fact]
    public void The_gate_rule_holds_only_where_there_is_a_gate()
    {
        var policy = new StopPolicy { MinGate = 0.8 };
        Assert.False(policy.Track().Observe(new StopSignal(1, 0, 1, 1, Gate: null)));
        Assert.False(policy.Track().Observe(new StopSignal(1, 0, 1, 1, Gate: 0.79f)));
        Assert.True(policy.Track().Observe(new StopSignal(1, 0, 1, 1, Gate: 0.8f)));
    }

    [Fact]
    public void Validation_names_the_field_and_recommended_stands_alone()
    {
        Assert.Contains("stop.min_confidence", Assert.Throws<ArgumentException>(() => new StopPolicy { MinConfidence = 1.5 }.Validate()).Message);
        Assert.Contains("stop.stable_steps", Assert.Throws<ArgumentException>(() => new StopPolicy { StableSteps = 0 }.Validate()).Message);
        Assert.Contains("stop.min_steps", Assert.Throws<ArgumentException>(() => new StopPolicy { MinSteps = 0 }.Validate()).Message);
        Assert.Contains("stop.min_margin", Assert.Throws<ArgumentException>(() => new StopPolicy { MinMargin = 0 }.Validate()).Message);
        Assert.Contains("stop.min_gate", Assert.Throws<ArgumentException>(() => new StopPolicy { MinGate = 2 }.Validate()).Message);
        Assert.Throws<ArgumentException>(() => (StopPolicy.Recommended with { MinSteps = 2 }).Validate());
        Assert.Throws<InvalidOperationException>(() => StopPolicy.Recommended.Track());
        Assert.Equal(StopRule.Confidence, new StopPolicy { MinConfidence = 0.9 }.Rule);
        Assert.Equal(StopRule.Stable, new StopPolicy { StableSteps = 3 }.Rule);
        Assert.Equal(StopRule.Policy, new StopPolicy { StableSteps = 3, MinConfidence = 0.9 }.Rule);
    }

    [Fact]
    public void The_wire_form_round_trips_and_old_requests_read_as_before()
    {
        var policy = new StopPolicy { MinConfidence = 0.7, StableSteps = 2, MinSteps = 3, MinMargin = 0.25, MinGate = 0.9 };
        Assert.Equal(policy, StopPolicy.FromProto(Protos.V1.StopPolicy.Parser.ParseFrom(policy.ToProto().ToByteArray())));
        Assert.Equal(StopPolicy.Recommended, StopPolicy.FromProto(StopPolicy.Recommended.ToProto()));
        Assert.Equal(StopPolicy.None, StopPolicy.FromProto(null));

        // The first contract's oneof members, as an old client encodes them: field 1 a double, field 2 a varint.
        byte[] confidenceOnly = [0x09, .. BitConverter.GetBytes(0.85)];
        Assert.Equal(new StopPolicy { MinConfidence = 0.85 }, StopPolicy.FromProto(Protos.V1.StopPolicy.Parser.ParseFrom(confidenceOnly)));
        byte[] stableOnly = [0x10, 0x03];
        Assert.Equal(new StopPolicy { StableSteps = 3 }, StopPolicy.FromProto(Protos.V1.StopPolicy.Parser.ParseFrom(stableOnly)));
        // And what this version writes for one rule is those same bytes.
        Assert.Equal(confidenceOnly, new StopPolicy { MinConfidence = 0.85 }.ToProto().ToByteArray());
        Assert.Equal(stableOnly, new StopPolicy { StableSteps = 3 }.ToProto().ToByteArray());
    }
}
