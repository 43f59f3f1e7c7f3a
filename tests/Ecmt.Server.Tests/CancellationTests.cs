using Ecmt.Protos.V1;
using Grpc.Core;
using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Grpc.Net.Client;

namespace Ecmt.Server.Tests;

/// <summary>
/// A cancel, a deadline or a vanished client stops the engine within one step, counted by the engine itself: the run
/// summary's steps equal the model's step counter delta, and at most one step (the one in flight) finished after the
/// cancellation reached the server. Runs in-process and over a real loopback HTTP/2 connection.
/// </summary>
public sealed class CancellationTests
{
    const uint ManySteps = 1_000_000;
    static readonly (string, string) Unlimited = ("Ecmt:Limits:MaxSteps", ManySteps.ToString());

    static Task<ServerHost> Start(bool kestrel) => kestrel ? ServerHost.KestrelAsync(Unlimited) : ServerHost.InProcessAsync(Unlimited);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Cancel_stops_the_engine_within_one_step_and_frees_the_session(bool kestrel)
    {
        await using var host = await Start(kestrel);
        var model = host.Model(TestModels.Deep);
        long before = model.StepsRun;
        var run = model.NextRun();

        using var cts = new CancellationTokenSource();
        using var call = host.Client.Classify(Requests.Tensor(TestModels.Deep, maxSteps: ManySteps), cancellationToken: cts.Token);
        int received = 0;
        while (await call.ResponseStream.MoveNext(CancellationToken.None))
            if (++received == 3) break;
        cts.Cancel();

        var summary = await run.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(summary.Cancelled);
        Assert.NotNull(summary.StepsAfterCancellation);
        Assert.InRange(summary.StepsAfterCancellation.Value, 0, 1);
        Assert.InRange(summary.StepsRun, 3, 10_000);
        Assert.Equal(summary.StepsRun, model.StepsRun - before);
        Assert.Equal(0, model.ActiveSessions);
        Assert.True(model.IdleSessions >= 1, "the session went back to the pool");

        long after = model.StepsRun;
        await Task.Delay(200);
        Assert.Equal(after, model.StepsRun);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_deadline_stops_the_engine_within_one_step(bool kestrel)
    {
        await using var host = await Start(kestrel);
        // One short call first: on a cold process (a fresh CI build) the first call's set-up alone can outlast the
        // 400 ms deadline, and then the engine never starts the run this test waits for.
        using (var warm = host.Client.Classify(Requests.Tensor(TestModels.Deep, maxSteps: 1))) await warm.ReadAll();
        var model = host.Model(TestModels.Deep);
        long before = model.StepsRun;
        var run = model.NextRun();

        var status = await Requests.StatusOf(async () =>
        {
            using var call = host.Client.Classify(Requests.Tensor(TestModels.Deep, maxSteps: ManySteps), deadline: DateTime.UtcNow.AddMilliseconds(400));
            await call.ReadAll();
        });

        Assert.Equal(StatusCode.DeadlineExceeded, status.StatusCode);
        var summary = await run.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(summary.Cancelled);
        Assert.InRange(summary.StepsAfterCancellation!.Value, 0, 1);
        Assert.True(summary.StepsRun >= 1 && summary.StepsRun < ManySteps);
        Assert.Equal(summary.StepsRun, model.StepsRun - before);
        Assert.Equal(0, model.ActiveSessions);
    }

    [Fact]
    public async Task A_client_that_vanishes_mid_stream_frees_its_session()
    {
        await using var host = await Start(kestrel: true);
        var model = host.Model(TestModels.Deep);
        var run = model.NextRun();

        // A connection of its own whose socket is closed under the call: no cancel, no RST_STREAM, the peer is just gone.
        Socket? socket = null;
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (context, token) =>
            {
                socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                await socket.ConnectAsync(context.DnsEndPoint, token);
                return new NetworkStream(socket, ownsSocket: true);
            },
        };
        var channel = GrpcChannel.ForAddress(host.Address, new GrpcChannelOptions { HttpHandler = handler, DisposeHttpClient = true });
        var call = new Classifier.ClassifierClient(channel).Classify(Requests.Tensor(TestModels.Deep, maxSteps: ManySteps));
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        socket!.LingerState = new LingerOption(true, 0);
        socket.Close();

        var summary = await run.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(summary.Cancelled);
        Assert.InRange(summary.StepsAfterCancellation!.Value, 0, 1);
        Assert.Equal(0, model.ActiveSessions);
        channel.Dispose();

        // And the server goes on serving.
        var updates = await host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 2));
        Assert.Equal(2, updates.Count);
    }

    [Fact]
    public async Task A_client_that_resets_its_stream_before_the_request_arrives_is_a_cancel_not_an_error()
    {
        await using var host = await Start(kestrel: true);
        var factory = host.App.Services.GetRequiredService<IMeterFactory>();
        var codes = new System.Collections.Concurrent.ConcurrentQueue<string>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Scope == factory && instrument.Name == "ecmt.rpc.errors") l.EnableMeasurementEvents(instrument);
        };
        listener.SetMeasurementEventCallback<long>((_, _, tags, _) =>
        {
            foreach (var tag in tags) if (tag.Key == "code") codes.Enqueue((string)tag.Value!);
        });
        listener.Start();
        int logged = host.Logs.Entries.Count;

        // Raw HTTP/2: the headers and two bytes of the message's five-byte prefix, then the client cancels (RST_STREAM).
        using var http = new HttpClient(new SocketsHttpHandler());
        var body = new StalledContent();
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(host.Address, "/ecmt.v1.Classifier/Classify"))
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = body,
        };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/grpc");
        request.Headers.Add("grpc-timeout", "20S");
        request.Headers.TE.Add(new TransferCodingWithQualityHeaderValue("trailers"));
        using var cts = new CancellationTokenSource();
        var send = http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
        await body.Started.WaitAsync(TimeSpan.FromSeconds(30));
        await Task.Delay(200);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => send);

        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (codes.IsEmpty && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.Equal(["CANCELLED"], codes.ToArray());
        Assert.DoesNotContain(host.Logs.Entries.Skip(logged), e => e.Level >= LogLevel.Error);

        // And the server goes on serving.
        var updates = await host.Client.RunAsync(Requests.Tensor(TestModels.Tiny, maxSteps: 2));
        Assert.Equal(2, updates.Count);
    }

    /// <summary>A request body that sends the first two bytes of a gRPC message prefix and then waits to be cancelled.</summary>
    sealed class StalledContent : HttpContent
    {
        readonly TaskCompletionSource _started = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public Task Started => _started.Task;

        protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context) => SerializeToStreamAsync(stream, context, CancellationToken.None);

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context, CancellationToken cancellationToken)
        {
            await stream.WriteAsync(new byte[] { 0, 0 }, cancellationToken);
            await stream.FlushAsync(cancellationToken);
            _started.TrySetResult();
            await Task.Delay(Timeout.Infinite, cancellationToken);
        }

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }
    }
}
