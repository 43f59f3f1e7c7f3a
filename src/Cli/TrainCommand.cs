using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Ecmt.Engine.Data;
using Ecmt.Engine.Model;
using Ecmt.Torch;

namespace Ecmt.Cli;

static class TrainCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--output") { Description = "Folder to write config.json, model.safetensors and train.json to (default models/fmnist-LAYOUT)" };
        var layout = new Option<string>("--layout")
        {
            Description = "vit: timm's plain ViT (class token, abs pos embed, qkv bias); eva: EVA / BEiT (q/v bias, layer scale gamma_1/gamma_2, relative position bias per block, no abs pos embed, mean pooling + fc_norm)",
            DefaultValueFactory = _ => "vit",
        };
        layout.AcceptOnlyFromAmong("vit", "eva");
        var epochs = new Option<int>("--epochs") { Description = "Training epochs", DefaultValueFactory = _ => 30 };
        var dim = new Option<int>("--dim") { Description = "Embedding dimension D", DefaultValueFactory = _ => 64 };
        var depth = new Option<int>("--depth") { Description = "Number of blocks", DefaultValueFactory = _ => 6 };
        var heads = new Option<int>("--heads") { Description = "Attention heads H", DefaultValueFactory = _ => 4 };
        var mlpRatio = new Option<double>("--mlp-ratio") { Description = "MLP hidden size over D", DefaultValueFactory = _ => 4 };
        var patch = new Option<int>("--patch") { Description = "Patch size in pixels", DefaultValueFactory = _ => 4 };
        var batch = new Option<int>("--batch") { Description = "Batch size", DefaultValueFactory = _ => 128 };
        var lr = new Option<double>("--lr") { Description = "Peak learning rate (AdamW)", DefaultValueFactory = _ => 1e-3 };
        var seed = new Option<int>("--seed") { Description = "Random seed", DefaultValueFactory = _ => 1 };
        var limit = new Option<int?>("--limit") { Description = "Train on the first N training images only" };
        var warmup = new Option<int>("--warmup") { Description = "Epochs of linear learning-rate warm-up", DefaultValueFactory = _ => 2 };
        var weightDecay = new Option<double>("--weight-decay") { Description = "AdamW weight decay", DefaultValueFactory = _ => 0.05 };
        var smoothing = new Option<double>("--label-smoothing") { Description = "Label smoothing", DefaultValueFactory = _ => 0.1 };
        var threads = new Option<int?>("--threads") { Description = "libtorch threads (default: one per core; use fewer on a shared machine, where OpenMP threads waiting on each other waste most of the time)" };
        var shift = new Option<int>("--max-shift") { Description = "Augmentation: random shifts up to this many pixels plus horizontal flips (0: none)", DefaultValueFactory = _ => 2 };
        var command = new Command("train", "Train a small ViT on Fashion-MNIST (libtorch, CPU); 5,000 training images are held out, the test set is never used.")
        {
            output, layout, epochs, dim, depth, heads, mlpRatio, patch, batch, lr, seed, limit, warmup, weightDecay, smoothing, shift, threads,
        };
        command.SetAction(parse =>
        {
            var config = FashionMnist.SmallVit(parse.GetValue(dim), parse.GetValue(depth), parse.GetValue(heads), parse.GetValue(mlpRatio), parse.GetValue(patch));
            string layoutName = parse.GetValue(layout)!;
            if (layoutName == "eva") config = FashionMnist.EvaLayout(config);
            config.Validate();
            var options = new TrainOptions
            {
                Epochs = parse.GetValue(epochs), BatchSize = parse.GetValue(batch), LearningRate = parse.GetValue(lr),
                Seed = parse.GetValue(seed), Limit = parse.GetValue(limit), WarmupEpochs = parse.GetValue(warmup),
                WeightDecay = parse.GetValue(weightDecay), LabelSmoothing = parse.GetValue(smoothing), MaxShift = parse.GetValue(shift),
            };
            TorchRuntime.EnsureLoaded(parse.GetValue(threads));
            var train = FashionMnist.Load(Split.Train);
            var holdout = FashionMnist.Load(Split.Holdout);
            var clock = Stopwatch.StartNew();
            var epochsLog = new List<EpochReport>();
            var weights = Trainer.Train(config, train, holdout, options, report =>
            {
                epochsLog.Add(report);
                Console.Error.WriteLine($"epoch {report.Epoch,3}/{options.Epochs}  loss {report.Loss:F4}  holdout top-1 {report.HoldoutTop1:P2}  {report.Seconds:F0} s");
            });
            string dir = parse.GetValue(output) ?? $"models/fmnist-{layoutName}";
            ModelDirectory.Save(dir, weights, metadata: new Dictionary<string, string> { ["format"] = "pt", ["producer"] = "ecmt train" });
            var log = new
            {
                command = "dotnet run --project src/Cli -c Release -- " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1)),
                options,
                seconds = Math.Round(clock.Elapsed.TotalSeconds),
                threads = parse.GetValue(threads) ?? Environment.ProcessorCount,
                cores = Environment.ProcessorCount,
                holdout_top1 = epochsLog[^1].HoldoutTop1,
                epochs = epochsLog,
            };
            File.WriteAllText(Path.Combine(dir, "train.json"), JsonSerializer.Serialize(log, VitConfig.Json) + "\n");
            Console.WriteLine(JsonSerializer.Serialize(new { model = dir, holdout_top1 = epochsLog[^1].HoldoutTop1, seconds = log.seconds }));
            return 0;
        });
        return command;
    }
}
