using System.CommandLine;
using Ecmt.Engine.Model;
using Ecmt.Torch;

namespace Ecmt.Cli;

static class ImportCommand
{
    public static Command Create()
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "A ViT checkpoint with timm / BEiT / EVA tensor names (the layout is config.json's): PyTorch .pth/.pt (state dict) or .safetensors", Required = true };
        var config = new Option<string>("--config") { Description = "config.json describing the ViT and its layout (see models/fmnist-vit/config.json, models/fmnist-eva/config.json)", Required = true };
        var output = new Option<string>("--output") { Description = "Model folder to write (config.json + model.safetensors)", Required = true };
        var command = new Command("import", "Import a trained ViT checkpoint into a model folder; every missing, unexpected or mis-shaped tensor is named.")
        {
            checkpoint, config, output,
        };
        command.SetAction(parse =>
        {
            string path = parse.GetValue(checkpoint)!;
            var tensors = path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) ? SafeTensors.Load(path) : PthImport.Load(path);
            var vitConfig = VitConfig.Load(parse.GetValue(config)!);
            var weights = VitWeights.Bind(vitConfig, tensors);
            ModelDirectory.Save(parse.GetValue(output)!, weights);
            Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(new { model = vitConfig.Name, tensors = tensors.Count, output = parse.GetValue(output) }));
            return 0;
        });
        return command;
    }
}
