using System.Security.Cryptography;
using System.Text;

namespace JobRunner.Aws.Tests.Signing;

/// <summary>
/// An independent SigV4 implementation written from the specification, for the tests only: first proven against every
/// case of the AWS test suite, then used as the yardstick for AWSSDK.Core's signer on cases the suite leaves out (it
/// always signs x-amz-content-sha256).
/// </summary>
public static class ReferenceSigner
{
    public sealed record Result(string CanonicalRequest, string StringToSign, string Signature, string SignedHeaders);

    public static Result Sign(string method, string rawPath, string rawQuery, IEnumerable<KeyValuePair<string, string>> headers, byte[] body, string accessKey, string secretKey, string region, string service, DateTimeOffset now, bool normalize)
    {
        _ = accessKey;
        var amzDate = now.UtcDateTime.ToString("yyyyMMdd'T'HHmmss'Z'", System.Globalization.CultureInfo.InvariantCulture);
        var date = amzDate[..8];

        var canonicalHeaders = new SortedDictionary<string, List<string>>(StringComparer.Ordinal);
        foreach (var (name, value) in headers)
        {
            var key = name.ToLowerInvariant();
            if (!canonicalHeaders.TryGetValue(key, out var values))
            {
                canonicalHeaders[key] = values = [];
            }

            values.Add(Collapse(value));
        }

        var signedHeaders = string.Join(';', canonicalHeaders.Keys);
        var canonical = new StringBuilder()
            .Append(method).Append('\n')
            .Append(CanonicalPath(rawPath, normalize)).Append('\n')
            .Append(CanonicalQuery(rawQuery)).Append('\n');
        foreach (var (name, values) in canonicalHeaders)
        {
            canonical.Append(name).Append(':').Append(string.Join(',', values)).Append('\n');
        }

        canonical.Append('\n').Append(signedHeaders).Append('\n').Append(Hex(SHA256.HashData(body)));
        var canonicalRequest = canonical.ToString();
        var scope = $"{date}/{region}/{service}/aws4_request";
        var stringToSign = $"AWS4-HMAC-SHA256\n{amzDate}\n{scope}\n{Hex(SHA256.HashData(Encoding.UTF8.GetBytes(canonicalRequest)))}";
        var key1 = HMACSHA256.HashData(Encoding.UTF8.GetBytes("AWS4" + secretKey), Encoding.UTF8.GetBytes(date));
        var key2 = HMACSHA256.HashData(key1, Encoding.UTF8.GetBytes(region));
        var key3 = HMACSHA256.HashData(key2, Encoding.UTF8.GetBytes(service));
        var signingKey = HMACSHA256.HashData(key3, "aws4_request"u8);
        var signature = Hex(HMACSHA256.HashData(signingKey, Encoding.UTF8.GetBytes(stringToSign)));
        return new Result(canonicalRequest, stringToSign, signature, signedHeaders);
    }

    public static string Hex(byte[] bytes) => Convert.ToHexStringLower(bytes);

    private static string Collapse(string value)
    {
        var sb = new StringBuilder(value.Length);
        var space = false;
        foreach (var ch in value.Trim())
        {
            if (char.IsWhiteSpace(ch))
            {
                space = true;
                continue;
            }

            if (space && sb.Length > 0)
            {
                sb.Append(' ');
            }

            space = false;
            sb.Append(ch);
        }

        return sb.ToString();
    }

    private static string CanonicalPath(string rawPath, bool normalize)
    {
        var path = rawPath;
        if (normalize)
        {
            var output = new List<string>();
            foreach (var segment in path.Split('/'))
            {
                if (segment is "" or ".")
                {
                    continue;
                }

                if (segment == "..")
                {
                    if (output.Count > 0)
                    {
                        output.RemoveAt(output.Count - 1);
                    }

                    continue;
                }

                output.Add(segment);
            }

            var trailing = path.EndsWith('/') || path.EndsWith("/.", StringComparison.Ordinal) || path.EndsWith("/..", StringComparison.Ordinal);
            path = "/" + string.Join('/', output) + (trailing && output.Count > 0 ? "/" : "");
        }

        return string.Join('/', path.Split('/').Select(Encode));
    }

    private static string CanonicalQuery(string rawQuery)
    {
        if (rawQuery.Length == 0)
        {
            return "";
        }

        var pairs = new List<(string Key, string Value)>();
        foreach (var part in rawQuery.Split('&'))
        {
            var eq = part.IndexOf('=');
            var key = eq < 0 ? part : part[..eq];
            var value = eq < 0 ? "" : part[(eq + 1)..];
            pairs.Add((Encode(Uri.UnescapeDataString(key)), Encode(Uri.UnescapeDataString(value))));
        }

        pairs.Sort(static (a, b) => a.Key != b.Key ? string.CompareOrdinal(a.Key, b.Key) : string.CompareOrdinal(a.Value, b.Value));
        return string.Join('&', pairs.Select(static p => p.Key + "=" + p.Value));
    }

    /// <summary>RFC 3986 encoding: unreserved characters stay, every other UTF-8 byte becomes %XX.</summary>
    private static string Encode(string value)
    {
        var sb = new StringBuilder(value.Length);
        foreach (var b in Encoding.UTF8.GetBytes(value))
        {
            if (b is >= (byte)'A' and <= (byte)'Z' or >= (byte)'a' and <= (byte)'z' or >= (byte)'0' and <= (byte)'9' or (byte)'-' or (byte)'_' or (byte)'.' or (byte)'~')
            {
                sb.Append((char)b);
            }
            else
            {
                sb.Append('%').Append(b.ToString("X2", System.Globalization.CultureInfo.InvariantCulture));
            }
        }

        return sb.ToString();
    }
}
