using Amazon;
using Amazon.Runtime;
using Amazon.Runtime.Signing;

namespace JobRunner.Aws.Http;

/// <summary>
/// Signs every request with AWS Signature Version 4 through AWSSDK.Core's public <see cref="AWSSigV4Signer"/>, at the
/// time the injected <see cref="TimeProvider"/> gives (so tests can pin the clock). The body is buffered to hash it.
/// </summary>
internal sealed class SigV4Handler : DelegatingHandler
{
    private readonly AWSCredentials _credentials;
    private readonly RegionEndpoint _region;
    private readonly string _service;
    private readonly TimeProvider _time;

    public SigV4Handler(AWSCredentials credentials, RegionEndpoint region, string service, TimeProvider time, HttpMessageHandler inner)
        : base(inner)
    {
        _credentials = credentials;
        _region = region;
        _service = service;
        _time = time;
    }

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        await SignAsync(request, _credentials, _region, _service, _time.GetUtcNow(), cancellationToken).ConfigureAwait(false);
        return await base.SendAsync(request, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Adds the SigV4 headers (Authorization, X-Amz-Date, X-Amz-Content-SHA256, and the session token) to <paramref name="request"/>.</summary>
    public static async Task SignAsync(HttpRequestMessage request, AWSCredentials credentials, RegionEndpoint region, string service, DateTimeOffset now, CancellationToken cancellationToken)
    {
        var uri = request.RequestUri ?? throw new InvalidOperationException("The request has no URI.");
        var body = request.Content is null ? [] : await request.Content.ReadAsByteArrayAsync(cancellationToken).ConfigureAwait(false);
        var signing = new AWSSigningRequest { HttpMethod = request.Method, RequestUri = uri, Content = body };
        signing.Headers["Host"] = uri.IsDefaultPort ? uri.Host : uri.Host + ":" + uri.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        if (request.Content?.Headers.ContentType is { } contentType)
        {
            signing.Headers["Content-Type"] = contentType.ToString();
        }

        foreach (var header in request.Headers)
        {
            if (header.Key.StartsWith("x-amz-", StringComparison.OrdinalIgnoreCase))
            {
                signing.Headers[header.Key] = string.Join(',', header.Value);
            }
        }

        var result = await AWSSigV4Signer.SignAsync(
            signing,
            new AWSSigV4Parameters { Credentials = credentials, Region = region, Service = service, SignPayload = true, SignedAt = now.UtcDateTime },
            cancellationToken).ConfigureAwait(false);
        foreach (var (name, value) in result.Headers)
        {
            if (string.Equals(name, "Host", StringComparison.OrdinalIgnoreCase))
            {
                continue;
            }

            request.Headers.Remove(name);
            request.Headers.TryAddWithoutValidation(name, value);
        }
    }
}
