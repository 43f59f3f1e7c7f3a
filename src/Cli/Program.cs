using System.CommandLine;
using Ecmt.Cli;

var root = new RootCommand("ecmt: convert Vision Transformers to spiking networks (ECMT), simulate and serve them.")
{
    TrainCommand.Create(),
    ImportCommand.Create(),
    ConvertCommand.Create(),
    EvalCommand.Create(),
    AblateCommand.Create(),
    PlotCommand.Create(),
    BenchCommand.Create(),
    CheckBackendCommand.Create(),
    SamplesCommand.Create(),
    SamplesCommand.CreateSynthetic(),
    ClassifyCommand.Create(),
    BenchServerCommand.Create(),
};
return await root.Parse(args).InvokeAsync();
