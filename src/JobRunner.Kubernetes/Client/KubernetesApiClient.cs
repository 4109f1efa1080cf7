using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace JobRunner.Kubernetes.Client;

/// <summary>
/// The Kubernetes REST calls JobRunner needs, over one <see cref="HttpClient"/>. Throttling (429, honouring Retry-After)
/// and server errors (5xx) are retried with back-off on the injected clock; every other error becomes a
/// <see cref="KubernetesApiException"/> built from the server's Status object.
/// </summary>
internal sealed class KubernetesApiClient
{
    internal const string UserAgent = "JobRunner.Kubernetes/0.1";
    private static readonly MediaTypeHeaderValue s_json = new("application/json");
    private static readonly MediaTypeWithQualityHeaderValue s_accept = new("application/json");

    private readonly HttpClient _http;
    private readonly HttpClient _streams;
    private readonly TimeProvider _time;
    private readonly int _maxRetries;

    /// <summary>Gets or sets the time limit of a plain request (not a watch or a log stream), retries included.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <param name="http">Sends the plain requests.</param>
    /// <param name="time">The clock of back-offs and time limits.</param>
    /// <param name="maxRetries">How many times a transient failure is retried.</param>
    /// <param name="streams">
    /// Sends the long-lived requests (watches, followed logs), each of which holds an HTTP/1.1 connection for its life:
    /// on a connection pool of their own they cannot use up the connections the plain requests need. Defaults to
    /// <paramref name="http"/>.
    /// </param>
    public KubernetesApiClient(HttpClient http, TimeProvider time, int maxRetries = 5, HttpClient? streams = null)
    {
        _http = http;
        _streams = streams ?? http;
        _time = time;
        _maxRetries = maxRetries;
    }

    public Uri BaseAddress => _http.BaseAddress!;

    public static string JobsPath(string ns) => $"/apis/batch/v1/namespaces/{ns}/jobs";

    public static string PodsPath(string ns) => $"/api/v1/namespaces/{ns}/pods";

    public Task<KubeJob> CreateJobAsync(string ns, KubeJob job, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Post, JobsPath(ns), Body(job, KubeJson.Default.KubeJob), KubeJson.Default.KubeJob, $"create Job '{job.Metadata.Name}' in namespace '{ns}'", cancellationToken);

    public Task<KubeJob> GetJobAsync(string ns, string name, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, $"{JobsPath(ns)}/{name}", null, KubeJson.Default.KubeJob, $"get Job '{name}' in namespace '{ns}'", cancellationToken);

    public Task<KubeJobList> ListJobsAsync(string ns, string? labelSelector, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, JobsPath(ns) + Query(("labelSelector", labelSelector)), null, KubeJson.Default.KubeJobList, $"list Jobs in namespace '{ns}'", cancellationToken);

    /// <summary>Deletes a Job and, in the background, its pods. Returns false when it was already gone.</summary>
    public async Task<bool> DeleteJobAsync(string ns, string name, CancellationToken cancellationToken)
    {
        try
        {
            // The answer is a Status when the Job is gone at once, but the Job itself (with its deletionTimestamp) when a
            // finalizer holds it: either way a success, so the body is not read.
            await SendAsync(
                HttpMethod.Delete,
                $"{JobsPath(ns)}/{name}",
                Body(new DeleteOptions { PropagationPolicy = "Background" }, KubeJson.Default.DeleteOptions),
                (JsonTypeInfo<KubeStatus>?)null,
                $"delete Job '{name}' in namespace '{ns}'",
                cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (KubernetesApiException e) when (e.IsNotFound)
        {
            return false;
        }
    }

    public Task<KubePodList> ListPodsAsync(string ns, string? labelSelector, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, PodsPath(ns) + Query(("labelSelector", labelSelector)), null, KubeJson.Default.KubePodList, $"list pods in namespace '{ns}'", cancellationToken);

    public Task<KubeEventList> ListPodEventsAsync(string ns, string pod, CancellationToken cancellationToken)
        => ListEventsAsync(ns, "Pod", pod, cancellationToken);

    public Task<KubeEventList> ListEventsAsync(string ns, string kind, string name, CancellationToken cancellationToken)
        => SendAsync(
            HttpMethod.Get,
            $"/api/v1/namespaces/{ns}/events" + Query(("fieldSelector", $"involvedObject.kind={kind},involvedObject.name={name}")),
            null,
            KubeJson.Default.KubeEventList,
            $"list the events of {kind} '{name}' in namespace '{ns}'",
            cancellationToken);

    public Task<KubeNodeList> ListNodesAsync(string? labelSelector, CancellationToken cancellationToken)
        => SendAsync(HttpMethod.Get, "/api/v1/nodes" + Query(("labelSelector", labelSelector)), null, KubeJson.Default.KubeNodeList, "list nodes", cancellationToken);

    /// <summary>
    /// Opens a pod's log. While the container has not started yet ("waiting to start", "ContainerCreating") the server
    /// answers 400; that is retried up to <paramref name="waitingRetries"/> times, a second apart.
    /// </summary>
    public async Task<Stream> OpenLogAsync(string ns, string pod, string container, bool follow, DateTimeOffset? sinceTime, int waitingRetries, CancellationToken cancellationToken)
    {
        var path = $"{PodsPath(ns)}/{pod}/log" + Query(
            ("container", container),
            ("follow", follow ? "true" : null),
            ("sinceTime", sinceTime?.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture)),
            ("timestamps", "true"));
        for (var attempt = 0; ; attempt++)
        {
            try
            {
                // A followed log's headers come with its first line (the kubelet writes nothing before): a container
                // silent for a while is not an unanswered request, so only the connect timeout applies.
                var response = await SendStreamAsync(follow ? _streams : _http, path, $"read the log of pod '{pod}' in namespace '{ns}'", headerLimit: !follow, cancellationToken).ConfigureAwait(false);
                return await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (KubernetesApiException e) when (e.StatusCode == 400 && attempt < waitingRetries && IsWaitingToStart(e.Message))
            {
                await Task.Delay(TimeSpan.FromSeconds(1), _time, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// One watch connection from <paramref name="resourceVersion"/>, with bookmarks. Ends when the server closes it
    /// (asked to after 5 to 10 minutes, as client-go does), or when nothing at all arrived for that long and a minute more:
    /// a connection whose peer vanished without a reset (a node or load balancer gone) would otherwise wait forever. An
    /// ERROR event throws (410 <c>Expired</c>/<c>Gone</c> means: relist).
    /// </summary>
    public async IAsyncEnumerable<RawWatchEvent> WatchAsync(string collectionPath, string? labelSelector, string? resourceVersion, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var timeout = TimeSpan.FromSeconds(300 + Random.Shared.Next(300));
        var path = collectionPath + Query(
            ("allowWatchBookmarks", "true"),
            ("labelSelector", labelSelector),
            ("resourceVersion", resourceVersion),
            ("timeoutSeconds", ((int)timeout.TotalSeconds).ToString(CultureInfo.InvariantCulture)),
            ("watch", "true"));
        using var response = await SendStreamAsync(_streams, path, $"watch {collectionPath}", headerLimit: true, cancellationToken).ConfigureAwait(false);
        var stream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        await using (stream.ConfigureAwait(false))
        {
            using var reader = new StreamReader(stream, Encoding.UTF8);
            using var idle = new CancellationTokenSource(timeout + IdleMargin, _time);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, idle.Token);
            while (true)
            {
                string? line;
                try
                {
                    line = await reader.ReadLineAsync(linked.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (idle.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
                {
                    // Silent past the server's own timeout: the connection is dead. The caller reconnects from the last
                    // version, as after a close.
                    yield break;
                }

                if (line is null)
                {
                    break;
                }

                idle.CancelAfter(timeout + IdleMargin);
                if (line.Length == 0)
                {
                    continue;
                }

                var e = JsonSerializer.Deserialize(line, KubeJson.Default.RawWatchEvent)!;
                if (e.Type == "ERROR")
                {
                    var status = e.Object.Deserialize(KubeJson.Default.KubeStatus);
                    throw ToException(status?.Code ?? 500, status, null, $"watch {collectionPath}");
                }

                yield return e;
            }
        }
    }

    /// <summary>How long past the watch's own timeout a silent connection is given before it counts as dead.</summary>
    internal static readonly TimeSpan IdleMargin = TimeSpan.FromMinutes(1);

    internal static bool IsWaitingToStart(string message)
        => message.Contains("waiting to start", StringComparison.Ordinal) || message.Contains("ContainerCreating", StringComparison.Ordinal);

    internal static string Query(params ReadOnlySpan<(string Name, string? Value)> parameters)
    {
        var builder = new StringBuilder();
        foreach (var (name, value) in parameters)
        {
            if (value is null)
            {
                continue;
            }

            builder.Append(builder.Length == 0 ? '?' : '&').Append(name).Append('=').Append(Uri.EscapeDataString(value));
        }

        return builder.ToString();
    }

    private static ByteArrayContent Body<T>(T value, JsonTypeInfo<T> type)
    {
        var content = new ByteArrayContent(JsonSerializer.SerializeToUtf8Bytes(value, type));
        content.Headers.ContentType = s_json;
        return content;
    }

    // A null type ignores the answer's body (and returns default).
    private async Task<T> SendAsync<T>(HttpMethod method, string path, ByteArrayContent? body, JsonTypeInfo<T>? type, string what, CancellationToken cancellationToken)
    {
        // Plain requests (not watches or log streams) get a time limit of their own, retries included.
        using var timeout = new CancellationTokenSource(RequestTimeout, _time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        try
        {
            using var response = await SendRawAsync(_http, method, path, body, HttpCompletionOption.ResponseContentRead, what, linked.Token).ConfigureAwait(false);
            if (type is null)
            {
                return default!;
            }

            var stream = await response.Content.ReadAsStreamAsync(linked.Token).ConfigureAwait(false);
            await using (stream.ConfigureAwait(false))
            {
                return (await JsonSerializer.DeserializeAsync(stream, type, linked.Token).ConfigureAwait(false))!;
            }
        }
        catch (OperationCanceledException e) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw new KubernetesApiException(504, "Timeout", $"Kubernetes API: could not {what}: no answer within {RequestTimeout}. Check that the API server at {_http.BaseAddress} is reachable.", innerException: e);
        }
    }

    /// <summary>
    /// Opens a stream (a watch, a log): its body may take as long as it runs; with <paramref name="headerLimit"/> its
    /// headers must arrive within <see cref="RequestTimeout"/>.
    /// </summary>
    private async Task<HttpResponseMessage> SendStreamAsync(HttpClient http, string path, string what, bool headerLimit, CancellationToken cancellationToken)
    {
        if (!headerLimit)
        {
            return await SendRawAsync(http, HttpMethod.Get, path, null, HttpCompletionOption.ResponseHeadersRead, what, cancellationToken).ConfigureAwait(false);
        }

        using var timeout = new CancellationTokenSource(RequestTimeout, _time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        try
        {
            return await SendRawAsync(http, HttpMethod.Get, path, null, HttpCompletionOption.ResponseHeadersRead, what, linked.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException e) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw new KubernetesApiException(504, "Timeout", $"Kubernetes API: could not {what}: no answer within {RequestTimeout}. Check that the API server at {_http.BaseAddress} is reachable.", innerException: e);
        }
    }

    private async Task<HttpResponseMessage> SendRawAsync(HttpClient http, HttpMethod method, string path, ByteArrayContent? body, HttpCompletionOption completion, string what, CancellationToken cancellationToken)
    {
        try
        {
            for (var attempt = 0; ; attempt++)
            {
                // HTTP/2 when the server offers it (ALPN, https): every request and stream is multiplexed on one
                // connection, as client-go does. Plain http stays on HTTP/1.1.
                using var request = new HttpRequestMessage(method, path) { Version = HttpVersion.Version20, VersionPolicy = HttpVersionPolicy.RequestVersionOrLower };
                request.Headers.Accept.Add(s_accept);
                request.Headers.UserAgent.ParseAdd(UserAgent);
                request.Content = body;
                HttpResponseMessage response;
                try
                {
                    response = await http.SendAsync(request, completion, cancellationToken).ConfigureAwait(false);
                }
                catch (HttpRequestException e) when (attempt < _maxRetries)
                {
                    // The connection failed before an answer: safe to repeat (a repeated create answers 409 and is adopted).
                    _ = e;
                    request.Content = null;
                    await Task.Delay(Backoff(attempt, null), _time, cancellationToken).ConfigureAwait(false);
                    continue;
                }
                catch (OperationCanceledException e) when (!cancellationToken.IsCancellationRequested && e.InnerException is TimeoutException)
                {
                    // The handler's ConnectTimeout: no connection could be opened. A connection failure like any other
                    // (not the caller's cancellation), so it is retried; past the retries the server is unreachable.
                    request.Content = null;
                    if (attempt >= _maxRetries)
                    {
                        throw new KubernetesApiException(0, "Unreachable", $"Kubernetes API: could not {what}: the API server at {_http.BaseAddress} cannot be reached ({e.InnerException.Message}). Check the server address, DNS, the network path and the firewall.", innerException: e);
                    }

                    await Task.Delay(Backoff(attempt, null), _time, cancellationToken).ConfigureAwait(false);
                    continue;
                }

                // The content is reused by a retry, so the request must not dispose it.
                request.Content = null;
                if (response.IsSuccessStatusCode)
                {
                    return response;
                }

                using (response)
                {
                    var error = await ReadErrorAsync(response, what, cancellationToken).ConfigureAwait(false);
                    if (!error.IsTransient || attempt >= _maxRetries)
                    {
                        throw error;
                    }

                    await Task.Delay(Backoff(attempt, error.RetryAfter), _time, cancellationToken).ConfigureAwait(false);
                }
            }
        }
        finally
        {
            body?.Dispose();
        }
    }

    private static TimeSpan Backoff(int attempt, TimeSpan? retryAfter)
        => retryAfter ?? TimeSpan.FromMilliseconds(Math.Min(200 * (1 << Math.Min(attempt, 8)), 10_000));

    private static async Task<KubernetesApiException> ReadErrorAsync(HttpResponseMessage response, string what, CancellationToken cancellationToken)
    {
        var text = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        TimeSpan? retryAfter = response.Headers.RetryAfter switch
        {
            { Delta: { } delta } => delta,
            _ => null,
        };
        KubeStatus? status = null;
        if (response.Content.Headers.ContentType?.MediaType == "application/json")
        {
            try
            {
                status = JsonSerializer.Deserialize(text, KubeJson.Default.KubeStatus);
            }
            catch (JsonException)
            {
                // Not a Status: the text itself is the message.
            }
        }

        if (status is null)
        {
            status = new KubeStatus { Code = (int)response.StatusCode, Message = text.Trim(), Reason = response.StatusCode == HttpStatusCode.TooManyRequests ? "TooManyRequests" : response.ReasonPhrase };
        }

        if (retryAfter is null && status.Details?.RetryAfterSeconds is { } seconds)
        {
            retryAfter = TimeSpan.FromSeconds(seconds);
        }

        return ToException((int)response.StatusCode, status, retryAfter, what);
    }

    private static KubernetesApiException ToException(int code, KubeStatus? status, TimeSpan? retryAfter, string what)
    {
        var causes = status?.Details?.Causes is { Count: > 0 } list
            ? list.ConvertAll(static c => string.IsNullOrEmpty(c.Field) ? c.Message ?? c.Reason ?? "" : $"{c.Field}: {c.Message}")
            : null;
        var message = $"Kubernetes API: could not {what}: {code} {status?.Reason}: {status?.Message}";
        message += code switch
        {
            401 => " Check the credentials (token, client certificate or exec plugin) of the kubeconfig context or service account.",
            403 => " Grant the identity RBAC permissions on batch/v1 jobs (create, get, list, watch, delete) and pods, pods/log (get, list, watch) in the namespace.",
            404 when status?.Reason == "NotFound" && (status.Message?.Contains("namespaces", StringComparison.Ordinal) ?? false) => " Check KubernetesEngineOptions.Namespace.",
            _ => "",
        };
        return new KubernetesApiException(code, status?.Reason, message, causes, retryAfter);
    }
}
