using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;

namespace JobRunner.Aws.Tests.Signing;

/// <summary>One case of the AWS SigV4 test suite (shared/fixtures/aws-sigv4/v4/&lt;case&gt;), parsed from its files.</summary>
public sealed class SigV4Vector
{
    public required string Name { get; init; }
    public required string Method { get; init; }
    public required string RawPath { get; init; }
    public required string RawQuery { get; init; }
    public required List<KeyValuePair<string, string>> Headers { get; init; }
    public required byte[] Body { get; init; }
    public required string AccessKey { get; init; }
    public required string SecretKey { get; init; }
    public string? Token { get; init; }
    public required bool Normalize { get; init; }
    public required bool SignBody { get; init; }
    public required bool OmitSessionToken { get; init; }
    public required string Region { get; init; }
    public required string Service { get; init; }
    public required DateTimeOffset Timestamp { get; init; }
    public required string ExpectedCanonicalRequest { get; init; }
    public required string ExpectedStringToSign { get; init; }
    public required string ExpectedSignature { get; init; }
    public required string ExpectedSignedRequest { get; init; }

    public override string ToString() => Name;

    public static string Directory([CallerFilePath] string file = "")
    {
        // tests/JobRunner.Aws.Tests/Signing -> repository root; shared/ sits beside the repository (or at /work/shared).
        var root = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(file)!, "..", "..", ".."));
        foreach (var candidate in new[] { Path.Combine(root, "..", "shared"), Path.Combine(root, "shared"), "/work/shared" })
        {
            var dir = Path.Combine(candidate, "fixtures", "aws-sigv4", "v4");
            if (System.IO.Directory.Exists(dir))
            {
                return Path.GetFullPath(dir);
            }
        }

        throw new InvalidOperationException($"The SigV4 test vectors were not found beside {root} (expected ../shared/fixtures/aws-sigv4/v4).");
    }

    public static IEnumerable<string> Names() => System.IO.Directory.GetDirectories(Directory()).Select(Path.GetFileName).Order(StringComparer.Ordinal)!;

    public static SigV4Vector Load(string name)
    {
        var dir = Path.Combine(Directory(), name);
        string Read(string file) => File.ReadAllText(Path.Combine(dir, file)).ReplaceLineEndings("\n");
        using var context = JsonDocument.Parse(Read("context.json"));
        var c = context.RootElement;
        var credentials = c.GetProperty("credentials");

        var text = Read("request.txt");
        var split = text.IndexOf("\n\n", StringComparison.Ordinal);
        var head = split < 0 ? text : text[..split];
        var body = split < 0 ? "" : text[(split + 2)..];
        var lines = head.Split('\n');
        var requestLine = lines[0];
        var method = requestLine[..requestLine.IndexOf(' ')];
        var target = requestLine[(method.Length + 1)..requestLine.LastIndexOf(" HTTP/", StringComparison.Ordinal)];
        var q = target.IndexOf('?');
        var headers = new List<KeyValuePair<string, string>>();
        foreach (var line in lines.Skip(1))
        {
            if (line.Length == 0)
            {
                continue;
            }

            if (char.IsWhiteSpace(line[0]))
            {
                // A folded line continues the previous header's value.
                var last = headers[^1];
                headers[^1] = new(last.Key, last.Value + "\n" + line);
                continue;
            }

            var colon = line.IndexOf(':');
            headers.Add(new(line[..colon], line[(colon + 1)..]));
        }

        return new SigV4Vector
        {
            Name = name,
            Method = method,
            RawPath = q < 0 ? target : target[..q],
            RawQuery = q < 0 ? "" : target[(q + 1)..],
            Headers = headers,
            Body = Encoding.UTF8.GetBytes(body),
            AccessKey = credentials.GetProperty("access_key_id").GetString()!,
            SecretKey = credentials.GetProperty("secret_access_key").GetString()!,
            Token = credentials.TryGetProperty("token", out var token) ? token.GetString() : null,
            Normalize = c.TryGetProperty("normalize", out var n) && n.GetBoolean(),
            SignBody = c.TryGetProperty("sign_body", out var sb) && sb.GetBoolean(),
            OmitSessionToken = c.TryGetProperty("omit_session_token", out var o) && o.GetBoolean(),
            Region = c.GetProperty("region").GetString()!,
            Service = c.GetProperty("service").GetString()!,
            Timestamp = DateTimeOffset.Parse(c.GetProperty("timestamp").GetString()!, System.Globalization.CultureInfo.InvariantCulture),
            ExpectedCanonicalRequest = Read("header-canonical-request.txt"),
            ExpectedStringToSign = Read("header-string-to-sign.txt"),
            ExpectedSignature = Read("header-signature.txt").Trim(),
            ExpectedSignedRequest = Read("header-signed-request.txt"),
        };
    }

    /// <summary>The Authorization header of the expected signed request.</summary>
    public string ExpectedAuthorization => ExpectedSignedRequest.Split('\n').First(l => l.StartsWith("Authorization:", StringComparison.OrdinalIgnoreCase))["Authorization:".Length..].Trim();
}
