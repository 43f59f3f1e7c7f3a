// ecmt-server: serves converted spiking ViTs over gRPC (ecmt.v1.Classifier). Settings: README.md next to this file.
return await Ecmt.Server.ServerApp.RunAsync(args);
