using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using JobRunner.Kubernetes.Connection;
using JobRunner.Kubernetes.Tests.Support;
using Microsoft.Extensions.Logging.Abstractions;

namespace JobRunner.Kubernetes.Tests.Connection;

/// <summary>
/// A cluster CA bundle (certificate-authority-data with several PEM certificates) against a loopback TLS server with
/// generated certificates: a root, an intermediate it signed, and a leaf for 127.0.0.1 the intermediate signed.
/// </summary>
public sealed class CertificateAuthorityTests : IDisposable
{
    private readonly X509Certificate2 _root;
    private readonly X509Certificate2 _intermediate;
    private readonly X509Certificate2 _leaf;
    private readonly X509Certificate2 _clientOnlyLeaf;
    private readonly X509Certificate2 _anyUsageLeaf;
    private readonly X509Certificate2 _otherRoot;
    private readonly X509Certificate2 _forged;
    private readonly X509Certificate2 _reissued;

    public CertificateAuthorityTests()
    {
        var now = TimeProvider.System.GetUtcNow();
        _root = Authority("CN=test-root", null, now);
        _intermediate = Authority("CN=test-intermediate", _root, now);
        _otherRoot = Authority("CN=other-root", null, now);

        // The intermediate's name and key identifier with another key: a chain builder links the leaf to it, and only
        // the signature tells them apart.
        _forged = Authority("CN=test-intermediate", _root, now, _intermediate.Extensions.OfType<X509SubjectKeyIdentifierExtension>().Single());

        _leaf = Leaf(_intermediate, now, "1.3.6.1.5.5.7.3.1");

        // The intermediate re-issued (cross-signed) by another root: same name and key, another issuer and serial.
        var reissue = new CertificateRequest(_intermediate.SubjectName, _intermediate.PublicKey, HashAlgorithmName.SHA256);
        foreach (var extension in _intermediate.Extensions)
        {
            if (extension is not X509AuthorityKeyIdentifierExtension)
            {
                reissue.CertificateExtensions.Add(extension);
            }
        }

        reissue.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(_otherRoot, true, false));
        _reissued = reissue.Create(_otherRoot, now.AddDays(-1), now.AddYears(1), [9, 9]);

        // What the kubernetes.io/kube-apiserver-client signer issues: client authentication only, with the SANs asked for.
        _clientOnlyLeaf = Leaf(_intermediate, now, "1.3.6.1.5.5.7.3.2");

        // No extended key usage at all: valid for any usage, for crypto/tls too.
        _anyUsageLeaf = Leaf(_intermediate, now, null);
    }

    private static X509Certificate2 Leaf(X509Certificate2 issuer, DateTimeOffset now, string? usage, Uri? issuerUrl = null)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        if (usage is not null)
        {
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(usage)], false));
        }

        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(issuer, true, false));
        if (issuerUrl is not null)
        {
            // Authority information access: where a chain builder allowed to download fetches the issuer (caIssuers).
            request.CertificateExtensions.Add(new X509AuthorityInformationAccessExtension(null, [issuerUrl.AbsoluteUri]));
        }

        var names = new SubjectAlternativeNameBuilder();
        names.AddIpAddress(IPAddress.Loopback);
        request.CertificateExtensions.Add(names.Build());
        using var signed = request.Create(issuer, now.AddDays(-1), now.AddDays(30), [1, 2, 3]);
        return signed.CopyWithPrivateKey(key);
    }

    public void Dispose()
    {
        _root.Dispose();
        _intermediate.Dispose();
        _leaf.Dispose();
        _clientOnlyLeaf.Dispose();
        _anyUsageLeaf.Dispose();
        _otherRoot.Dispose();
        _forged.Dispose();
        _reissued.Dispose();
    }

    private static X509Certificate2 Authority(string subject, X509Certificate2? issuer, DateTimeOffset now, X509SubjectKeyIdentifierExtension? keyIdentifier = null)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, issuer is not null, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(keyIdentifier ?? new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        if (issuer is null)
        {
            return request.CreateSelfSigned(now.AddDays(-1), now.AddYears(1));
        }

        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(issuer, true, false));
        using var signed = request.Create(issuer, now.AddDays(-1), now.AddYears(1), [7]);
        return signed.CopyWithPrivateKey(key);
    }

    public static TheoryData<string, string, bool> Bundles => new()
    {
        // bundle (certificate-authority-data, in this order), what the server sends after its leaf, accepted
        { "root,intermediate", "", true },
        { "intermediate,root", "", true },
        { "root", "intermediate", true },
        { "other,root", "intermediate", true },
        { "other,root,intermediate", "", true },
        { "intermediate", "", true }, // client-go trusts every certificate of the bundle, a root or not
        { "other", "intermediate", false },
        { "intermediate", "intermediate", true },
        { "root", "", false }, // the intermediate is nowhere: no chain
        { "forged", "", false }, // the leaf's signature does not verify against it
        { "root,forged", "", false },

        // The server sends the intermediate cross-signed by a root the bundle lacks: the bundle's copy (same name and key)
        // is what client-go anchors at, whatever the server sent.
        { "intermediate", "reissued", true },
        { "root,intermediate", "reissued", true },
        { "root", "reissued", false }, // the intermediate the root signed is nowhere
    };

    [Theory]
    [MemberData(nameof(Bundles))]
    public async Task Handler_ValidatesTheServerAgainstEveryCertificateOfTheBundle(string bundle, string sent, bool accepted)
    {
        await RequestAsync(bundle, sent, _leaf, accepted);
    }

    [Theory]
    [InlineData("root,intermediate", "")]
    [InlineData("root", "intermediate")]
    [InlineData("intermediate", "")] // anchored at an intermediate of the bundle
    public async Task Handler_RefusesAServerCertificateIssuedForClientAuthenticationOnly(string bundle, string sent)
    {
        // Issued by the cluster CA for the API server's address, but not for serverAuth: crypto/tls refuses it.
        await RequestAsync(bundle, sent, _clientOnlyLeaf, accepted: false);
    }

    [Theory]
    [InlineData("root,intermediate", "")]
    [InlineData("intermediate", "")]
    public async Task Handler_AcceptsAServerCertificateWithoutExtendedKeyUsage(string bundle, string sent)
    {
        await RequestAsync(bundle, sent, _anyUsageLeaf, accepted: true);
    }

    [Fact]
    public async Task Handler_DownloadsNoIssuer_ThatTheServerCertificateNamesForItsChain()
    {
        // The server sends its leaf alone; the bundle holds only the root. The leaf names where its issuer (the
        // intermediate) can be fetched: a loopback HTTP listener that would serve it. As client-go, the handshake uses
        // only the bundle and what the server sent: nothing is fetched, and without the intermediate there is no chain.
        using var issuers = new TcpListener(IPAddress.Loopback, 0);
        issuers.Start();
        var url = new Uri($"http://127.0.0.1:{((IPEndPoint)issuers.LocalEndpoint).Port}/intermediate.crt");
        using var fetches = new CancellationTokenSource();
        var fetched = ServeIssuerAsync(issuers, _intermediate, fetches.Token);
        using var leaf = Leaf(_intermediate, TimeProvider.System.GetUtcNow(), "1.3.6.1.5.5.7.3.1", url);

        await RequestAsync("root", "", leaf, accepted: false);

        // Every fetch the handshake made was served before it ended (a chain builder waits for its download).
        await fetches.CancelAsync();
        Assert.Equal(0, await fetched.WaitAsync(K8sTest.Limit));
    }

    /// <summary>Serves <paramref name="issuer"/> (DER) to every HTTP request until cancelled; returns how many it got.</summary>
    private static async Task<int> ServeIssuerAsync(TcpListener listener, X509Certificate2 issuer, CancellationToken stop)
    {
        var served = 0;
        try
        {
            while (true)
            {
                using var client = await listener.AcceptTcpClientAsync(stop);
                served++;
                var stream = client.GetStream();
                var buffer = new byte[4096];
                var received = new StringBuilder();
                while (!received.ToString().Contains("\r\n\r\n", StringComparison.Ordinal))
                {
                    var read = await stream.ReadAsync(buffer, stop);
                    if (read == 0)
                    {
                        break;
                    }

                    received.Append(Encoding.ASCII.GetString(buffer, 0, read));
                }

                var body = issuer.RawData;
                await stream.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Type: application/pkix-cert\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n"), stop);
                await stream.WriteAsync(body, stop);
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            return served;
        }
    }

    private async Task RequestAsync(string bundle, string sent, X509Certificate2 leaf, bool accepted)
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        var extra = new X509Certificate2Collection();
        if (sent == "intermediate")
        {
            extra.Add(_intermediate);
        }
        else if (sent == "reissued")
        {
            extra.Add(_reissued);
        }

        var server = ServeOnceAsync(listener, leaf, extra);
        var pem = string.Concat(bundle.Split(',').Select(name => (name switch
        {
            "root" => _root,
            "intermediate" => _intermediate,
            "forged" => _forged,
            _ => _otherRoot,
        }).ExportCertificatePem() + "\n"));
        var config = Kubeconfig.Parse($"""
            current-context: c
            clusters:
            - name: c
              cluster:
                server: https://127.0.0.1:{port}
                certificate-authority-data: {Convert.ToBase64String(Encoding.UTF8.GetBytes(pem))}
            contexts:
            - name: c
              context:
                cluster: c
            """, "bundle.kubeconfig");
        var connection = KubernetesConnection.FromKubeconfig(config, null);
        using var http = new HttpClient(connection.CreateHandler(TimeProvider.System, NullLogger.Instance)) { BaseAddress = connection.Server };

        var request = http.GetStringAsync(new Uri("/version", UriKind.Relative));
        if (accepted)
        {
            Assert.Equal("{}", await request.WaitAsync(K8sTest.Limit));
        }
        else
        {
            var error = await Assert.ThrowsAsync<HttpRequestException>(() => request.WaitAsync(K8sTest.Limit));
            Assert.IsType<System.Security.Authentication.AuthenticationException>(error.InnerException);
        }

        await server.WaitAsync(K8sTest.Limit);
    }

    /// <summary>Answers one HTTP/1.1 request over TLS with <c>{}</c>; a client that refuses the certificate ends it early.</summary>
    private static async Task ServeOnceAsync(TcpListener listener, X509Certificate2 leaf, X509Certificate2Collection extra)
    {
        using var client = await listener.AcceptTcpClientAsync();
        var ssl = new SslStream(client.GetStream());
        await using (ssl.ConfigureAwait(false))
        {
            try
            {
                await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                {
                    ServerCertificateContext = SslStreamCertificateContext.Create(leaf, extra, offline: true),
                });
                var buffer = new byte[4096];
                var received = new StringBuilder();
                while (!received.ToString().Contains("\r\n\r\n", StringComparison.Ordinal))
                {
                    var read = await ssl.ReadAsync(buffer);
                    if (read == 0)
                    {
                        return;
                    }

                    received.Append(Encoding.ASCII.GetString(buffer, 0, read));
                }

                await ssl.WriteAsync("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"u8.ToArray());
            }
            catch (Exception e) when (e is IOException or System.Security.Authentication.AuthenticationException)
            {
                // The client refused the certificate.
            }
        }
    }
}
