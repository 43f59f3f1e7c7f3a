// Streams a spiking ViT's prediction for one image, step by step, and stops as soon as it is confident.
//   dotnet run examples/dotnet/classify.cs -- http://localhost:50051 image.png [model]
#:project ../../src/Client/Ecmt.Client.csproj
using Ecmt.Client;
using Ecmt.Protos;

string address = args.Length > 0 ? args[0] : "http://localhost:50051";
string image = args.Length > 1 ? args[1] : throw new ArgumentException("usage: classify.cs SERVER IMAGE [MODEL]");

using var client = new EcmtClient(address, new EcmtClientOptions { DefaultTimeout = TimeSpan.FromSeconds(30) });
string model = args.Length > 2 ? args[2] : (await client.ListModelsAsync()).First(m => m.Ready).Name;

var options = new ClassifyOptions
{
    MaxSteps = 32,
    Stop = StopPolicy.Recommended,   // the model's own policy (ModelInfo.recommended_stop); the call is cancelled once it holds
};
try
{
    await foreach (var step in client.ClassifyFileAsync(model, image, options))
    {
        Console.WriteLine($"t={step.Step,-3} {step.Prediction.Name,-12} p={step.Confidence:F3} margin={step.Margin:F3} "
            + $"SOPs={step.SynapticOperations:N0} energy={step.EnergyRatio:F3}");
        if (step.IsLast)
            Console.WriteLine($"{step.Prediction.Name} after {step.Step} steps ({step.StopReason}{(step.StoppedByClient ? ", stopped by the client" : "")})");
    }
}
catch (EcmtRpcException e)
{
    Console.Error.WriteLine($"{e.Code}: {e.Detail}");
    return 1;
}
return 0;
