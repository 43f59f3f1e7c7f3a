using Grpc.Net.Client;

namespace Ecmt.Client.Tests;

/// <summary>One client, one channel, one HTTP/2 connection for many calls from many threads.</summary>
public sealed class ChannelTests(ServerFixture fixture) : IClassFixture<ServerFixture>
{
    [Fact]
    public async Task Many_concurrent_calls_share_one_connection()
    {
        using var wire = new Wire();
        using var client = new EcmtClient(fixture.Host.Address.ToString(), new EcmtClientOptions { ChannelOptions = wire.ChannelOptions() });
        const int Workers = 12, CallsEach = 5;
        // One call first: while the first HTTP/2 connection is still being set up, SocketsHttpHandler may open a
        // second one for requests that arrive in that window (seen on a cold CI process). Reuse is the claim here.
        Assert.Equal(2, (await client.ListModelsAsync()).Count);

        var results = await Task.WhenAll(Enumerable.Range(0, Workers).Select(w => Task.Run(async () =>
        {
            var predictions = new List<int>();
            for (int i = 0; i < CallsEach; i++)
            {
                var input = ClassifyInput.FromTensor(TestModels.Intensities(w * CallsEach + i), 1, TestModels.Size, TestModels.Size);
                var result = await client.ClassifyToEndAsync(TestModels.Tiny, input, new ClassifyOptions { MaxSteps = 3 });
                Assert.Equal(3, result.Steps);
                predictions.Add(result.Prediction.Index);
                if (i == 0) Assert.Equal(2, (await client.ListModelsAsync()).Count);
            }
            return predictions;
        })));

        Assert.Equal(Workers * CallsEach, results.Sum(r => r.Count));
        Assert.Equal(1, wire.Connections);
        Assert.Equal(Workers * CallsEach + Workers + 1, wire.Requests);
    }

    [Fact]
    public async Task A_given_channel_stays_open_and_an_owned_one_closes_with_the_client()
    {
        using var channel = GrpcChannel.ForAddress(fixture.Host.Address);
        using (var first = new EcmtClient(channel))
            Assert.Same(channel, first.Channel);
        using (var second = new EcmtClient(channel))
            Assert.Equal(2, (await second.ListModelsAsync()).Count);

        var owner = new EcmtClient(fixture.Host.Address.ToString());
        Assert.Equal(2, (await owner.ListModelsAsync()).Count);
        owner.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => owner.ListModelsAsync());
    }
}
