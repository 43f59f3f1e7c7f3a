using System.Text;
using Grpc.Core;

namespace Ecmt.Client;

/// <summary>
/// A call to the Ecmt server ended with a status other than OK (a cancel by the caller's token is an
/// <see cref="OperationCanceledException"/> instead). <see cref="StatusCode"/> says what went wrong; the codes the
/// server uses are listed in protos/ecmt/v1/classifier.proto.
/// </summary>
public sealed class EcmtRpcException : Exception
{
    public EcmtRpcException(string method, Status status, int attempts = 1, Exception? innerException = null)
        : base(Describe(method, status, attempts), innerException)
    {
        Method = method;
        Status = status;
        Attempts = attempts;
    }

    /// <summary>The full method name, e.g. "ecmt.v1.Classifier/Classify".</summary>
    public string Method { get; }
    public Status Status { get; }
    public StatusCode StatusCode => Status.StatusCode;
    /// <summary>The canonical name of the code: "NOT_FOUND", "UNAVAILABLE", …</summary>
    public string Code => CodeName(Status.StatusCode);
    /// <summary>The server's message.</summary>
    public string Detail => Status.Detail;
    /// <summary>Attempts made (more than 1 when UNAVAILABLE was retried).</summary>
    public int Attempts { get; }

    /// <summary>"DeadlineExceeded" → "DEADLINE_EXCEEDED", as gRPC spells status codes everywhere else.</summary>
    public static string CodeName(StatusCode code)
    {
        var name = code.ToString();
        var upper = new StringBuilder(name.Length + 4);
        for (int i = 0; i < name.Length; i++)
        {
            if (i > 0 && char.IsUpper(name[i]) && char.IsLower(name[i - 1])) upper.Append('_');
            upper.Append(char.ToUpperInvariant(name[i]));
        }
        return upper.ToString();
    }

    static string Describe(string method, Status status, int attempts) =>
        $"{method}: {CodeName(status.StatusCode)}: {status.Detail}" + (attempts > 1 ? $" (after {attempts} attempts)" : "");
}
