using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace Ecmt.Deploy.Tests;

/// <summary>
/// The channel deploy/README.md tells .NET clients to use for the headless Service: round_robin over every address
/// the resolver returns, and a retry of UNAVAILABLE (a pod that began shutting down refuses new calls with it).
/// Kept here so that the README's code is code that runs.
/// </summary>
static class ClientChannels
{
    public static ServiceConfig ReplicaServiceConfig() => new()
    {
        LoadBalancingConfigs = { new RoundRobinConfig() },
        MethodConfigs =
        {
            new MethodConfig
            {
                Names = { MethodName.Default },
                // Classify is server-streaming: a retry happens only before the first update arrives, so a stream is
                // never replayed halfway.
                RetryPolicy = new RetryPolicy
                {
                    MaxAttempts = 3,
                    InitialBackoff = TimeSpan.FromMilliseconds(100),
                    MaxBackoff = TimeSpan.FromSeconds(1),
                    BackoffMultiplier = 2,
                    RetryableStatusCodes = { StatusCode.Unavailable },
                },
            },
        },
    };

    /// <summary>The README's channel: <c>dns:///ecmt-headless.&lt;namespace&gt;.svc.cluster.local:50051</c>, re-resolved every 30 s.</summary>
    public static GrpcChannel ForHeadlessService(string target) => Create(target, new DnsResolverFactory(refreshInterval: TimeSpan.FromSeconds(30)));

    public static GrpcChannel Create(string target, ResolverFactory resolver)
    {
        var services = new ServiceCollection();
        services.AddSingleton(resolver);
        return GrpcChannel.ForAddress(target, new GrpcChannelOptions
        {
            Credentials = ChannelCredentials.Insecure,
            ServiceConfig = ReplicaServiceConfig(),
            ServiceProvider = services.BuildServiceProvider(),
        });
    }
}
