using System.Net.Sockets;
using Grpc.Net.Client;

namespace Ecmt.Client.Tests;

/// <summary>
/// An HTTP handler for a gRPC channel that counts what goes over the wire: TCP connections opened and HTTP requests
/// (one per call attempt), and keeps the last socket so a test can cut the connection under a call.
/// </summary>
sealed class Wire : DelegatingHandler
{
    int _connections, _requests;

    public Wire()
    {
        InnerHandler = new SocketsHttpHandler
        {
            EnableMultipleHttp2Connections = true,
            ConnectCallback = async (context, token) =>
            {
                var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    await socket.ConnectAsync(context.DnsEndPoint, token);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
                Interlocked.Increment(ref _connections);
                LastSocket = socket;
                return new NetworkStream(socket, ownsSocket: true);
            },
        };
    }

    /// <summary>TCP connections established.</summary>
    public int Connections => Volatile.Read(ref _connections);
    /// <summary>HTTP requests sent: one per call attempt.</summary>
    public int Requests => Volatile.Read(ref _requests);
    public Socket? LastSocket { get; private set; }

    public GrpcChannelOptions ChannelOptions() => new() { HttpHandler = this, DisposeHttpClient = true };

    /// <summary>Closes the last connection at once (RST, no goodbye): the peer is simply gone.</summary>
    public void Cut()
    {
        LastSocket!.LingerState = new LingerOption(true, 0);
        LastSocket.Close();
    }

    protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        Interlocked.Increment(ref _requests);
        return base.SendAsync(request, cancellationToken);
    }
}
