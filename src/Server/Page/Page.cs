using System.Reflection;
using System.Security.Cryptography;
using Microsoft.Net.Http.Headers;

namespace Ecmt.Server;

/// <summary>
/// The live page at / (index.html, app.js, style.css in this folder) and its sample images (samples/, written by
/// <c>ecmt samples</c>), embedded in the server's assembly and served as endpoints (so authorization and rate
/// limiting apply as to the API). The page talks to the server only through the public REST endpoints.
/// </summary>
static class Page
{
    const string Prefix = "page/";

    /// <summary>The embedded files by their path under Page/ ("app.js", "samples/00000-ankle-boot.png") with their ETag.</summary>
    static readonly Dictionary<string, (byte[] Bytes, string ETag)> Files = Load();

    public static IEnumerable<string> Samples => Files.Keys.Where(k => k.StartsWith("samples/", StringComparison.Ordinal)).Order(StringComparer.Ordinal);

    public static void Map(IEndpointRouteBuilder app)
    {
        // The page's files are open; what it asks of the API needs a caller when access control is on (it asks for a key on 401).
        var page = app.MapGroup("").ExcludeFromDescription().AllowAnonymous();
        page.MapGet("/", (HttpContext http) => Serve(http, "index.html"));
        page.MapGet("/page/samples.json", () => Results.Json(Samples.Select(s => new { name = Path.GetFileNameWithoutExtension(s), url = "/page/" + s })));
        page.MapGet("/page/{*path}", (HttpContext http, string path) => Serve(http, path));
    }

    static IResult Serve(HttpContext http, string path)
    {
        if (!Files.TryGetValue(path, out var file)) return Results.NotFound();
        if (http.Request.Headers.IfNoneMatch == file.ETag) return Results.StatusCode(StatusCodes.Status304NotModified);
        http.Response.Headers.ETag = file.ETag;
        // Revalidate every time: a new server version brings new files under the same names.
        http.Response.Headers.CacheControl = "no-cache";
        return Results.Bytes(file.Bytes, ContentType(path));
    }

    static string ContentType(string path) => Path.GetExtension(path) switch
    {
        ".html" => "text/html; charset=utf-8",
        ".js" => "text/javascript; charset=utf-8",
        ".css" => "text/css; charset=utf-8",
        ".png" => "image/png",
        _ => "application/octet-stream",
    };

    static Dictionary<string, (byte[], string)> Load()
    {
        var assembly = Assembly.GetExecutingAssembly();
        var files = new Dictionary<string, (byte[], string)>(StringComparer.Ordinal);
        foreach (var name in assembly.GetManifestResourceNames().Where(n => n.StartsWith(Prefix, StringComparison.Ordinal)))
        {
            using var stream = assembly.GetManifestResourceStream(name)!;
            using var copy = new MemoryStream();
            stream.CopyTo(copy);
            var bytes = copy.ToArray();
            files[name[Prefix.Length..].Replace('\\', '/')] = (bytes, new EntityTagHeaderValue($"\"{Convert.ToHexStringLower(SHA256.HashData(bytes))[..16]}\"").ToString());
        }
        return files;
    }
}
