using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace JobRunner.Kubernetes.Testing;

/// <summary>
/// An in-process fake of the Kubernetes API server, over real HTTP on 127.0.0.1: batch/v1 Jobs (create, get, list,
/// delete with propagation policies, watch), pods (list, watch, logs with follow and timestamps), events and nodes.
/// Objects carry resourceVersions; watches replay from a resourceVersion, send bookmarks, and answer a compacted one
/// with a 410 <c>Expired</c> ERROR event, in the real wire format. A job controller moves each Job's pod through
/// pending → running → succeeded or failed as <see cref="PodBehavior"/> scripts it. Errors are real <c>Status</c>
/// objects. Faults can be injected (429 with Retry-After, 5xx, 410 on watches, dropped watch connections), and every
/// request is counted and recorded.
/// </summary>
public sealed class FakeKubernetesServer : IAsyncDisposable
{
    private const int HistoryLimit = 50_000;
    private static readonly JsonSerializerOptions s_compact = new() { WriteIndented = false };

    private readonly Lock _lock = new();
    private readonly Dictionary<(string Resource, string Namespace, string Name), JsonObject> _objects = [];
    private readonly LinkedList<HistoryEntry> _history = new();
    private readonly List<Watcher> _watchers = [];
    private readonly Dictionary<(string Namespace, string Name), RunningJob> _running = [];
    private readonly ConcurrentDictionary<(string Namespace, string Pod), PodLog> _logs = new();
    private readonly ConcurrentQueue<FakeRequest> _requests = new();
    private readonly List<HttpContext> _logStreams = [];
    private readonly List<Fault> _faults = [];
    private readonly TimeProvider _time;
    private readonly WebApplication _app;
    private long _resourceVersion = 1000;
    private long _compactedBelow;
    private long _requestCount;
    private int _podSuffix;

    private FakeKubernetesServer(WebApplication app, TimeProvider time)
    {
        _app = app;
        _time = time;
    }

    /// <summary>Gets the server's address, e.g. <c>http://127.0.0.1:41234</c>.</summary>
    public Uri BaseAddress { get; private set; } = null!;

    /// <summary>Gets or sets how the pod of each new Job behaves.</summary>
    /// <value>The default value succeeds at once and writes one line naming the image.</value>
    public Func<FakePodRequest, FakePodScript> PodBehavior { get; set; } = static r => FakePodScript.Succeed($"fake run of {r.Image}");

    /// <summary>Gets or sets whether request bodies and headers are recorded in <see cref="Requests"/>.</summary>
    /// <value>The default value is <see langword="true"/>.</value>
    public bool RecordRequests { get; set; } = true;

    /// <summary>Gets the number of requests received since start or the last <see cref="ResetCounters"/>.</summary>
    public long RequestCount => Interlocked.Read(ref _requestCount);

    /// <summary>Gets the requests received (when <see cref="RecordRequests"/> is set), oldest first.</summary>
    public IReadOnlyList<FakeRequest> Requests => [.. _requests];

    /// <summary>Gets the number of watch connections open now.</summary>
    public int OpenWatches
    {
        get
        {
            lock (_lock)
            {
                return _watchers.Count;
            }
        }
    }

    /// <summary>Starts a server on a free port of 127.0.0.1.</summary>
    /// <param name="time">The clock of timestamps, deadlines and TTLs; the system clock when <see langword="null"/>.</param>
    /// <param name="cancellationToken">Cancels the start.</param>
    /// <returns>The running server.</returns>
    public static async Task<FakeKubernetesServer> StartAsync(TimeProvider? time = null, CancellationToken cancellationToken = default)
    {
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(static k => k.Listen(IPAddress.Loopback, 0));
        var app = builder.Build();
        var server = new FakeKubernetesServer(app, time ?? TimeProvider.System);
        app.Run(server.HandleAsync);
        await app.StartAsync(cancellationToken).ConfigureAwait(false);
        var address = app.Services.GetRequiredService<Microsoft.AspNetCore.Hosting.Server.IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.BaseAddress = new Uri(address);
        return server;
    }

    /// <summary>Forgets the counted and recorded requests.</summary>
    public void ResetCounters()
    {
        Interlocked.Exchange(ref _requestCount, 0);
        _requests.Clear();
    }

    /// <summary>Counts the recorded requests that match.</summary>
    /// <param name="match">The condition.</param>
    /// <returns>The count.</returns>
    public int CountRequests(Func<FakeRequest, bool> match) => _requests.Count(match);

    /// <summary>
    /// Answers the next <paramref name="count"/> matching requests with <paramref name="statusCode"/>: 429 as the real
    /// server's max-in-flight filter does (plain text, Retry-After), others as a Status object.
    /// </summary>
    /// <param name="statusCode">The status code, e.g. 429, 500, 503.</param>
    /// <param name="count">How many requests.</param>
    /// <param name="retryAfterSeconds">The Retry-After header, for 429 and 503.</param>
    /// <param name="match">Which requests; every one when <see langword="null"/>.</param>
    public void InjectFault(int statusCode, int count = 1, int retryAfterSeconds = 1, Func<FakeRequest, bool>? match = null)
    {
        lock (_lock)
        {
            _faults.Add(new Fault(statusCode, count, retryAfterSeconds, match ?? (static _ => true)));
        }
    }

    /// <summary>Drops the faults <see cref="InjectFault"/> set up that have not been used yet: matching requests are answered again.</summary>
    public void ClearFaults()
    {
        lock (_lock)
        {
            _faults.Clear();
        }
    }

    /// <summary>
    /// Deletes every event of <paramref name="namespace"/>, as the API server does once an event's time to live (one hour
    /// by default, <c>--event-ttl</c>) has passed: a pull that lasts longer loses its <c>Pulling</c> event.
    /// </summary>
    /// <param name="namespace">The namespace.</param>
    public void ExpireEvents(string @namespace)
    {
        lock (_lock)
        {
            foreach (var key in _objects.Keys.Where(k => k.Resource == "events" && k.Namespace == @namespace).ToList())
            {
                Put("events", @namespace, key.Name, (JsonObject)_objects[key].DeepClone(), "DELETED");
            }
        }
    }

    /// <summary>Compacts the watch history: every open watch gets a 410 <c>Expired</c> ERROR event and is closed, and a watch from an older resourceVersion gets the same.</summary>
    public void ExpireWatches()
    {
        lock (_lock)
        {
            _compactedBelow = _resourceVersion + 1;
            _history.Clear();
            foreach (var watcher in _watchers)
            {
                watcher.Lines.Writer.TryWrite(ErrorEvent(Expired(watcher.From)));
                watcher.Lines.Writer.TryComplete();
            }
        }
    }

    /// <summary>
    /// Breaks every open log stream mid-way (the connection is reset, not ended), as an API server restart or a load
    /// balancer's reset does; the client sees an I/O error, not the end of the stream.
    /// </summary>
    public void BreakLogStreams()
    {
        HttpContext[] open;
        lock (_lock)
        {
            open = [.. _logStreams];
            _logStreams.Clear();
        }

        foreach (var stream in open)
        {
            stream.Abort();
        }
    }

    /// <summary>Closes every open watch connection, as a server restart or an idle proxy does.</summary>
    public void DropWatches()
    {
        lock (_lock)
        {
            foreach (var watcher in _watchers)
            {
                watcher.Lines.Writer.TryComplete();
            }
        }
    }

    /// <summary>Sends a BOOKMARK event with the current resourceVersion on every open watch that allows bookmarks.</summary>
    public void SendBookmarks()
    {
        lock (_lock)
        {
            foreach (var watcher in _watchers.Where(static w => w.Bookmarks))
            {
                var bookmark = new JsonObject
                {
                    ["type"] = "BOOKMARK",
                    ["object"] = new JsonObject
                    {
                        ["kind"] = Kind(watcher.Resource),
                        ["apiVersion"] = ApiVersion(watcher.Resource),
                        ["metadata"] = new JsonObject { ["resourceVersion"] = Rv(_resourceVersion) },
                    },
                };
                watcher.Lines.Writer.TryWrite(bookmark.ToJsonString(s_compact));
            }
        }
    }

    /// <summary>Adds (or replaces) a node.</summary>
    /// <param name="name">The node name.</param>
    /// <param name="labels">Its labels.</param>
    /// <param name="ready">Whether its Ready condition is True.</param>
    public void AddNode(string name, IReadOnlyDictionary<string, string>? labels = null, bool ready = true)
    {
        var now = Timestamp();
        var node = new JsonObject
        {
            ["kind"] = "Node",
            ["apiVersion"] = "v1",
            ["metadata"] = new JsonObject { ["name"] = name, ["uid"] = Guid.NewGuid().ToString(), ["creationTimestamp"] = now, ["labels"] = Labels(labels) },
            ["spec"] = new JsonObject { ["podCIDR"] = "10.244.0.0/24" },
            ["status"] = new JsonObject
            {
                ["capacity"] = new JsonObject { ["cpu"] = "8", ["memory"] = "32Gi", ["pods"] = "110" },
                ["allocatable"] = new JsonObject { ["cpu"] = "7800m", ["memory"] = "31Gi", ["pods"] = "110" },
                ["conditions"] = new JsonArray(
                    NodeCondition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available", now),
                    NodeCondition("Ready", ready ? "True" : "False", ready ? "KubeletReady" : "KubeletNotReady", ready ? "kubelet is posting ready status" : "container runtime network not ready", now)),
            },
        };
        lock (_lock)
        {
            Put("nodes", "", name, node, "ADDED");
        }
    }

    /// <summary>Gets a copy of an object as the server stores it.</summary>
    /// <param name="resource">The resource: <c>jobs</c>, <c>pods</c>, <c>events</c> or <c>nodes</c>.</param>
    /// <param name="namespace">The namespace (empty for nodes).</param>
    /// <param name="name">The name.</param>
    /// <returns>The object, or <see langword="null"/>.</returns>
    public JsonObject? GetObject(string resource, string @namespace, string name)
    {
        lock (_lock)
        {
            return _objects.TryGetValue((resource, @namespace, name), out var o) ? (JsonObject)o.DeepClone() : null;
        }
    }

    /// <summary>Gets the names of the objects of a resource in a namespace.</summary>
    /// <param name="resource">The resource: <c>jobs</c>, <c>pods</c>, <c>events</c> or <c>nodes</c>.</param>
    /// <param name="namespace">The namespace (empty for nodes).</param>
    /// <returns>The names.</returns>
    public IReadOnlyList<string> Names(string resource, string @namespace)
    {
        lock (_lock)
        {
            return [.. _objects.Keys.Where(k => k.Resource == resource && k.Namespace == @namespace).Select(static k => k.Name).Order(StringComparer.Ordinal)];
        }
    }

    /// <summary>Appends a line to the log of the running pod of a Job (followers see it at once).</summary>
    /// <param name="namespace">The namespace.</param>
    /// <param name="jobName">The Job.</param>
    /// <param name="line">The line.</param>
    public void WriteLog(string @namespace, string jobName, string line)
    {
        RunningJob? job;
        lock (_lock)
        {
            _running.TryGetValue((@namespace, jobName), out job);
        }

        if (job?.PodName is { } pod && _logs.TryGetValue((@namespace, pod), out var log))
        {
            log.Append(_time.GetUtcNow(), line);
        }
    }

    /// <summary>Makes a running Job pass its <c>activeDeadlineSeconds</c> now (its pod is killed, the Job fails with DeadlineExceeded).</summary>
    /// <param name="namespace">The namespace.</param>
    /// <param name="jobName">The Job.</param>
    public void ExceedDeadline(string @namespace, string jobName)
    {
        lock (_lock)
        {
            if (_running.TryGetValue((@namespace, jobName), out var job))
            {
                job.DeadlineExceeded = true;
                job.Stop.TrySetResult();
            }
        }
    }

    /// <summary>Admits a Job held back by <see cref="FakePodScript.Suspended"/>, as Kueue does: it is resumed and its pod is created.</summary>
    /// <param name="namespace">The namespace.</param>
    /// <param name="jobName">The Job's name.</param>
    public void ResumeJob(string @namespace, string jobName)
    {
        lock (_lock)
        {
            if (_running.TryGetValue((@namespace, jobName), out var job))
            {
                job.Resumed.TrySetResult();
            }
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        DropWatches();
        lock (_lock)
        {
            foreach (var job in _running.Values)
            {
                job.Deleted.Cancel();
            }
        }

        foreach (var log in _logs.Values)
        {
            log.Close();
        }

        await _app.StopAsync(CancellationToken.None).ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
    }

    // ---- HTTP ----

    private async Task HandleAsync(HttpContext http)
    {
        Interlocked.Increment(ref _requestCount);
        var request = http.Request;
        var body = "";
        if (request.ContentLength is > 0 || request.Headers.TransferEncoding.Count > 0)
        {
            using var reader = new StreamReader(request.Body, Encoding.UTF8);
            body = await reader.ReadToEndAsync(http.RequestAborted).ConfigureAwait(false);
        }

        var recorded = new FakeRequest(
            request.Method,
            request.Path.Value ?? "",
            request.QueryString.Value ?? "",
            request.Headers.ToDictionary(static h => h.Key, static h => h.Value.ToString(), StringComparer.OrdinalIgnoreCase),
            body);
        if (RecordRequests)
        {
            _requests.Enqueue(recorded);
        }

        if (TakeFault(recorded) is { } fault)
        {
            await WriteFaultAsync(http, fault).ConfigureAwait(false);
            return;
        }

        try
        {
            await RouteAsync(http, recorded).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
        {
            // The client went away.
        }
    }

    private Fault? TakeFault(FakeRequest request)
    {
        lock (_lock)
        {
            foreach (var fault in _faults)
            {
                if (fault.Remaining > 0 && fault.Match(request))
                {
                    fault.Remaining--;
                    return fault;
                }
            }

            _faults.RemoveAll(static f => f.Remaining <= 0);
            return null;
        }
    }

    private static async Task WriteFaultAsync(HttpContext http, Fault fault)
    {
        http.Response.StatusCode = fault.StatusCode;
        if (fault.StatusCode is 429 or 503)
        {
            http.Response.Headers.RetryAfter = fault.RetryAfterSeconds.ToString(CultureInfo.InvariantCulture);
        }

        if (fault.StatusCode == 429)
        {
            // The apiserver's max-in-flight filter answers in plain text, not with a Status.
            http.Response.ContentType = "text/plain; charset=utf-8";
            await http.Response.WriteAsync("Too many requests, please try again later.\n", http.RequestAborted).ConfigureAwait(false);
            return;
        }

        var status = Status(fault.StatusCode, fault.StatusCode == 503 ? "ServiceUnavailable" : "InternalError", fault.StatusCode == 503 ? "the server is currently unable to handle the request" : "an error on the server (\"injected\") has prevented the request from succeeding", null);
        if (fault.StatusCode == 503)
        {
            status["details"] = new JsonObject { ["retryAfterSeconds"] = fault.RetryAfterSeconds };
        }

        await WriteJsonAsync(http, fault.StatusCode, status).ConfigureAwait(false);
    }

    private async Task RouteAsync(HttpContext http, FakeRequest request)
    {
        var segments = request.Path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        var query = http.Request.Query;
        string? resource = null, ns = null, name = null, sub = null;

        // /apis/batch/v1/namespaces/{ns}/jobs[/{name}]   /api/v1/namespaces/{ns}/{pods|events}[/{name}[/log]]   /api/v1/nodes
        if (segments is ["apis", "batch", "v1", "namespaces", var n1, "jobs", .. var rest1])
        {
            (resource, ns, name) = ("jobs", n1, rest1.Length > 0 ? rest1[0] : null);
        }
        else if (segments is ["api", "v1", "namespaces", var n2, "pods" or "events", .. var rest2])
        {
            (resource, ns, name, sub) = (segments[4], n2, rest2.Length > 0 ? rest2[0] : null, rest2.Length > 1 ? rest2[1] : null);
        }
        else if (segments is ["api", "v1", "nodes", .. var rest3])
        {
            (resource, ns, name) = ("nodes", "", rest3.Length > 0 ? rest3[0] : null);
        }

        if (resource is null)
        {
            await WriteJsonAsync(http, 404, Status(404, "NotFound", "the server could not find the requested resource", null)).ConfigureAwait(false);
            return;
        }

        var method = request.Method;
        if (sub == "log" && method == "GET" && resource == "pods")
        {
            await ServeLogAsync(http, ns!, name!).ConfigureAwait(false);
        }
        else if (name is null && method == "GET" && request.IsWatch)
        {
            await ServeWatchAsync(http, resource, ns!, query["labelSelector"], query["fieldSelector"], query["resourceVersion"], query["allowWatchBookmarks"] == "true").ConfigureAwait(false);
        }
        else if (name is null && method == "GET")
        {
            await WriteJsonAsync(http, 200, List(resource, ns!, query["labelSelector"], query["fieldSelector"])).ConfigureAwait(false);
        }
        else if (name is not null && sub is null && method == "GET")
        {
            var found = GetObject(resource, ns!, name);
            await (found is null ? WriteJsonAsync(http, 404, NotFound(resource, name)) : WriteJsonAsync(http, 200, found)).ConfigureAwait(false);
        }
        else if (name is null && method == "POST" && resource == "jobs")
        {
            await CreateJobAsync(http, ns!, request.Body).ConfigureAwait(false);
        }
        else if (name is not null && method == "DELETE" && resource == "jobs")
        {
            await DeleteJobAsync(http, ns!, name, request.Body, query["propagationPolicy"]).ConfigureAwait(false);
        }
        else
        {
            await WriteJsonAsync(http, 405, Status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", null)).ConfigureAwait(false);
        }
    }

    private static async Task WriteJsonAsync(HttpContext http, int code, JsonNode body)
    {
        http.Response.StatusCode = code;
        http.Response.ContentType = "application/json";
        await http.Response.WriteAsync(body.ToJsonString(s_compact), http.RequestAborted).ConfigureAwait(false);
    }

    // ---- Status objects ----

    private static JsonObject Status(int code, string reason, string message, JsonObject? details) => new()
    {
        ["kind"] = "Status",
        ["apiVersion"] = "v1",
        ["metadata"] = new JsonObject(),
        ["status"] = "Failure",
        ["message"] = message,
        ["reason"] = reason,
        ["details"] = details,
        ["code"] = code,
    };

    private static JsonObject NotFound(string resource, string name)
        => Status(404, "NotFound", $"{Qualified(resource)} \"{name}\" not found", new JsonObject { ["name"] = name, ["group"] = Group(resource), ["kind"] = resource });

    private JsonObject Expired(long from)
        => Status(410, "Expired", $"too old resource version: {from} ({_compactedBelow})", null);

    private static string ErrorEvent(JsonObject status) => new JsonObject { ["type"] = "ERROR", ["object"] = status }.ToJsonString(s_compact);

    private static string Qualified(string resource) => resource == "jobs" ? "jobs.batch" : resource;

    private static string Group(string resource) => resource == "jobs" ? "batch" : "";

    private static string Kind(string resource) => resource switch
    {
        "jobs" => "Job",
        "pods" => "Pod",
        "events" => "Event",
        _ => "Node",
    };

    private static string ApiVersion(string resource) => resource == "jobs" ? "batch/v1" : "v1";

    // ---- Store ----

    private static string Rv(long value) => value.ToString(CultureInfo.InvariantCulture);

    private string Timestamp() => _time.GetUtcNow().UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture);

    private static JsonObject Labels(IEnumerable<KeyValuePair<string, string>>? labels)
    {
        var o = new JsonObject();
        foreach (var (k, v) in labels ?? [])
        {
            o[k] = v;
        }

        return o;
    }

    private static JsonObject Condition(string type, string status, string? reason, string? message, string now) => new()
    {
        ["type"] = type,
        ["status"] = status,
        ["lastProbeTime"] = null,
        ["lastTransitionTime"] = now,
        ["reason"] = reason,
        ["message"] = message,
    };

    // Node conditions carry a heartbeat instead of a probe time.
    private static JsonObject NodeCondition(string type, string status, string reason, string message, string now) => new()
    {
        ["type"] = type,
        ["status"] = status,
        ["lastHeartbeatTime"] = now,
        ["lastTransitionTime"] = now,
        ["reason"] = reason,
        ["message"] = message,
    };

    /// <summary>Stores an object with a new resourceVersion and tells the watches. Call under the lock.</summary>
    private void Put(string resource, string ns, string name, JsonObject value, string type)
    {
        var rv = ++_resourceVersion;
        value["metadata"]!["resourceVersion"] = Rv(rv);
        if (type == "DELETED")
        {
            _objects.Remove((resource, ns, name));
        }
        else
        {
            _objects[(resource, ns, name)] = value;
        }

        var line = new JsonObject { ["type"] = type, ["object"] = value.DeepClone() }.ToJsonString(s_compact);
        _history.AddLast(new HistoryEntry(rv, resource, ns, value, line));
        if (_history.Count > HistoryLimit)
        {
            _compactedBelow = _history.First!.Value.ResourceVersion + 1;
            _history.RemoveFirst();
        }

        foreach (var watcher in _watchers)
        {
            if (watcher.Matches(resource, ns, value))
            {
                watcher.Lines.Writer.TryWrite(line);
            }
        }
    }

    private JsonObject List(string resource, string ns, string? labelSelector, string? fieldSelector)
    {
        lock (_lock)
        {
            var items = new JsonArray();
            foreach (var ((r, n, _), value) in _objects.OrderBy(static o => o.Key.Name, StringComparer.Ordinal))
            {
                if (r == resource && n == ns && Selectors.Matches(value, labelSelector, fieldSelector))
                {
                    // Items of a typed list carry no kind and apiVersion of their own.
                    var item = (JsonObject)value.DeepClone();
                    item.Remove("kind");
                    item.Remove("apiVersion");
                    items.Add(item);
                }
            }

            return new JsonObject
            {
                ["kind"] = Kind(resource) + "List",
                ["apiVersion"] = ApiVersion(resource),
                ["metadata"] = new JsonObject { ["resourceVersion"] = Rv(_resourceVersion) },
                ["items"] = items,
            };
        }
    }

    // ---- Watch ----

    private async Task ServeWatchAsync(HttpContext http, string resource, string ns, string? labelSelector, string? fieldSelector, string? resourceVersion, bool bookmarks)
    {
        var watcher = new Watcher(resource, ns, labelSelector, fieldSelector, bookmarks);
        lock (_lock)
        {
            if (string.IsNullOrEmpty(resourceVersion) || resourceVersion == "0")
            {
                // No version: the current state first, as synthetic ADDED events.
                foreach (var ((r, n, _), value) in _objects)
                {
                    if (watcher.Matches(r, n, value))
                    {
                        watcher.Lines.Writer.TryWrite(new JsonObject { ["type"] = "ADDED", ["object"] = value.DeepClone() }.ToJsonString(s_compact));
                    }
                }
            }
            else if (!long.TryParse(resourceVersion, NumberStyles.None, CultureInfo.InvariantCulture, out var from))
            {
                watcher.Lines.Writer.TryWrite(ErrorEvent(Status(400, "BadRequest", $"invalid resource version: {resourceVersion}", null)));
                watcher.Lines.Writer.TryComplete();
            }
            else if (from + 1 < _compactedBelow)
            {
                watcher.From = from;
                watcher.Lines.Writer.TryWrite(ErrorEvent(Expired(from)));
                watcher.Lines.Writer.TryComplete();
            }
            else
            {
                watcher.From = from;
                foreach (var entry in _history)
                {
                    if (entry.ResourceVersion > from && watcher.Matches(entry.Resource, entry.Namespace, entry.Object))
                    {
                        watcher.Lines.Writer.TryWrite(entry.Line);
                    }
                }
            }

            _watchers.Add(watcher);
        }

        try
        {
            http.Response.StatusCode = 200;
            http.Response.ContentType = "application/json";
            http.Response.Headers.CacheControl = "no-cache, private";
            await http.Response.StartAsync(http.RequestAborted).ConfigureAwait(false);
            await http.Response.Body.FlushAsync(http.RequestAborted).ConfigureAwait(false);
            var reader = watcher.Lines.Reader;
            while (await reader.WaitToReadAsync(http.RequestAborted).ConfigureAwait(false))
            {
                while (reader.TryRead(out var line))
                {
                    await http.Response.WriteAsync(line + "\n", http.RequestAborted).ConfigureAwait(false);
                }

                await http.Response.Body.FlushAsync(http.RequestAborted).ConfigureAwait(false);
            }
        }
        finally
        {
            lock (_lock)
            {
                _watchers.Remove(watcher);
            }
        }
    }

    // ---- Jobs ----

    private async Task CreateJobAsync(HttpContext http, string ns, string body)
    {
        JsonObject job;
        try
        {
            job = JsonNode.Parse(body) as JsonObject ?? throw new JsonException("not an object");
        }
        catch (JsonException e)
        {
            await WriteJsonAsync(http, 400, Status(400, "BadRequest", $"the object provided is unrecognized: {e.Message}", null)).ConfigureAwait(false);
            return;
        }

        var name = job["metadata"]?["name"]?.GetValue<string>() ?? "";
        var causes = Validation.ValidateJob(job, name);
        if (causes.Count > 0)
        {
            var message = $"Job.batch \"{name}\" is invalid: " + string.Join(", ", causes.Select(static c => $"{c.Field}: {c.Message}"));
            var details = new JsonObject
            {
                ["name"] = name,
                ["group"] = "batch",
                ["kind"] = "Job",
                ["causes"] = new JsonArray([.. causes.Select(static c => (JsonNode)new JsonObject { ["reason"] = c.Reason, ["message"] = c.Message, ["field"] = c.Field })]),
            };
            await WriteJsonAsync(http, 422, Status(422, "Invalid", message, details)).ConfigureAwait(false);
            return;
        }

        RunningJob running;
        JsonObject created;
        lock (_lock)
        {
            if (_objects.ContainsKey(("jobs", ns, name)))
            {
                created = null!;
                running = null!;
            }
            else
            {
                var uid = Guid.NewGuid().ToString();
                var now = Timestamp();
                var metadata = (JsonObject)job["metadata"]!;
                metadata["namespace"] = ns;
                metadata["uid"] = uid;
                metadata["generation"] = 1;
                metadata["creationTimestamp"] = now;
                job["kind"] = "Job";
                job["apiVersion"] = "batch/v1";
                var spec = (JsonObject)job["spec"]!;
                spec["parallelism"] ??= 1;
                spec["completions"] ??= 1;
                spec["backoffLimit"] ??= 6;
                spec["completionMode"] ??= "NonIndexed";
                spec["suspend"] ??= false;
                spec["podReplacementPolicy"] ??= "TerminatingOrFailed";
                spec["manualSelector"] ??= false;
                spec["selector"] = new JsonObject { ["matchLabels"] = new JsonObject { ["batch.kubernetes.io/controller-uid"] = uid } };
                var template = (JsonObject)spec["template"]!;
                var templateMeta = template["metadata"] as JsonObject ?? new JsonObject();
                template["metadata"] = templateMeta;
                var labels = templateMeta["labels"] as JsonObject ?? new JsonObject();
                templateMeta["labels"] = labels;
                labels["batch.kubernetes.io/controller-uid"] = uid;
                labels["batch.kubernetes.io/job-name"] = name;
                labels["controller-uid"] = uid;
                labels["job-name"] = name;
                job["status"] = new JsonObject();
                Put("jobs", ns, name, job, "ADDED");
                created = (JsonObject)job.DeepClone();
                running = new RunningJob(ns, name, uid);
                _running[(ns, name)] = running;
            }
        }

        if (created is null)
        {
            await WriteJsonAsync(http, 409, Status(409, "AlreadyExists", $"jobs.batch \"{name}\" already exists", new JsonObject { ["name"] = name, ["group"] = "batch", ["kind"] = "jobs" })).ConfigureAwait(false);
            return;
        }

        await WriteJsonAsync(http, 201, created).ConfigureAwait(false);
        _ = Task.Run(() => RunControllerAsync(running), CancellationToken.None);
    }

    private async Task DeleteJobAsync(HttpContext http, string ns, string name, string body, string? queryPolicy)
    {
        var policy = queryPolicy;
        if (policy is null && body.Length > 0)
        {
            try
            {
                policy = JsonNode.Parse(body)?["propagationPolicy"]?.GetValue<string>();
            }
            catch (JsonException)
            {
                await WriteJsonAsync(http, 400, Status(400, "BadRequest", "the DeleteOptions body is not valid JSON", null)).ConfigureAwait(false);
                return;
            }
        }

        // batch/v1 Jobs default to orphaning their pods when deleted through the API without a policy.
        policy ??= "Orphan";
        JsonObject? job;
        string? uid = null;
        lock (_lock)
        {
            if (_objects.TryGetValue(("jobs", ns, name), out job))
            {
                uid = job["metadata"]!["uid"]!.GetValue<string>();
                Put("jobs", ns, name, (JsonObject)job.DeepClone(), "DELETED");
                if (_running.Remove((ns, name), out var running))
                {
                    running.Orphaned = policy == "Orphan";
                    running.Deleted.Cancel();
                }

                foreach (var ((r, n, podName), pod) in _objects.Where(o => o.Key.Resource == "pods" && o.Key.Namespace == ns).ToList())
                {
                    if (pod["metadata"]?["labels"]?["batch.kubernetes.io/controller-uid"]?.GetValue<string>() != uid)
                    {
                        continue;
                    }

                    if (policy == "Orphan")
                    {
                        var orphan = (JsonObject)pod.DeepClone();
                        ((JsonObject)orphan["metadata"]!).Remove("ownerReferences");
                        Put(r, n, podName, orphan, "MODIFIED");
                    }
                    else
                    {
                        var terminating = (JsonObject)pod.DeepClone();
                        terminating["metadata"]!["deletionTimestamp"] = Timestamp();
                        terminating["metadata"]!["deletionGracePeriodSeconds"] = 30;
                        Put(r, n, podName, terminating, "MODIFIED");
                        Put(r, n, podName, (JsonObject)terminating.DeepClone(), "DELETED");
                        if (_logs.TryRemove((n, podName), out var log))
                        {
                            log.Close();
                        }
                    }
                }
            }
        }

        if (job is null)
        {
            await WriteJsonAsync(http, 404, NotFound("jobs", name)).ConfigureAwait(false);
            return;
        }

        var success = new JsonObject
        {
            ["kind"] = "Status",
            ["apiVersion"] = "v1",
            ["metadata"] = new JsonObject(),
            ["status"] = "Success",
            ["details"] = new JsonObject { ["name"] = name, ["group"] = "batch", ["kind"] = "jobs", ["uid"] = uid },
        };
        await WriteJsonAsync(http, 200, success).ConfigureAwait(false);
    }

    // ---- The job controller and the kubelet ----

    private async Task RunControllerAsync(RunningJob job)
    {
        var deleted = job.Deleted.Token;
        JsonObject template;
        long? deadline;
        int? ttl;
        lock (_lock)
        {
            if (!_objects.TryGetValue(("jobs", job.Namespace, job.Name), out var stored))
            {
                return;
            }

            template = (JsonObject)stored["spec"]!["template"]!.DeepClone();
            deadline = stored["spec"]!["activeDeadlineSeconds"]?.GetValue<long>();
            ttl = stored["spec"]!["ttlSecondsAfterFinished"]?.GetValue<int>();
        }

        var container = (JsonObject)template["spec"]!["containers"]![0]!;
        var containerName = container["name"]!.GetValue<string>();
        var image = container["image"]!.GetValue<string>();
        var suffix = Interlocked.Increment(ref _podSuffix).ToString("x5", CultureInfo.InvariantCulture);
        var podName = $"{job.Name}-{suffix[^5..]}";
        job.PodName = podName;
        var env = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var e in container["env"]?.AsArray() ?? [])
        {
            env[e!["name"]!.GetValue<string>()] = e["value"]?.GetValue<string>() ?? "";
        }

        FakePodScript script;
        try
        {
            script = PodBehavior(new FakePodRequest(
                job.Namespace,
                job.Name,
                podName,
                image,
                [.. container["command"]?.AsArray().Select(static a => a!.GetValue<string>()) ?? []],
                [.. container["args"]?.AsArray().Select(static a => a!.GetValue<string>()) ?? []],
                env));
        }
#pragma warning disable CA1031 // A throwing behaviour fails the pod, as a crashing container would.
        catch (Exception)
#pragma warning restore CA1031
        {
            script = FakePodScript.Exit(1, "the fake's PodBehavior threw");
        }

        if (script.Suspended)
        {
            // As Kueue's webhook sets spec.suspend on create, and the Job controller then says so in a condition.
            lock (_lock)
            {
                if (_objects.TryGetValue(("jobs", job.Namespace, job.Name), out var stored))
                {
                    var next = (JsonObject)stored.DeepClone();
                    next["spec"]!["suspend"] = true;
                    next["status"] = new JsonObject { ["conditions"] = new JsonArray(Condition("Suspended", "True", "JobSuspended", "Job suspended", Timestamp())) };
                    Put("jobs", job.Namespace, job.Name, next, "MODIFIED");
                }
            }

            await ((Task)Task.WhenAny(job.Stop.Task, job.Resumed.Task)).WaitAsync(deleted).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            if (deleted.IsCancellationRequested || !job.Resumed.Task.IsCompleted)
            {
                job.PodName = null;
                return;
            }

            lock (_lock)
            {
                if (_objects.TryGetValue(("jobs", job.Namespace, job.Name), out var stored))
                {
                    var next = (JsonObject)stored.DeepClone();
                    next["spec"]!["suspend"] = false;
                    next["status"] = new JsonObject { ["conditions"] = new JsonArray(Condition("Suspended", "False", "JobResumed", "Job resumed", Timestamp())) };
                    Put("jobs", job.Namespace, job.Name, next, "MODIFIED");
                }
            }
        }

        if (script.PodCreationRefused is { } refusal)
        {
            // The Job controller cannot create the pod: the Job stays active with none, and says why in an event.
            job.PodName = null;
            AddEvent(job.Namespace, job.Name, "Warning", "FailedCreate", $"Error creating: pods \"{podName}\" is forbidden: {refusal}", "job-controller", involvedKind: "Job");
            await WaitAsync(job, null, deleted, forever: true).ConfigureAwait(false);
            return;
        }

        using var deadlineTimer = deadline is { } seconds ? _time.CreateTimer(static s => ExceedDeadlineOf((RunningJob)s!), job, TimeSpan.FromSeconds(seconds), Timeout.InfiniteTimeSpan) : null;
        var now = Timestamp();
        var node = "fake-node-1";

        // Pending: created, not scheduled yet.
        var pod = NewPod(job, template, podName, now);
        lock (_lock)
        {
            if (deleted.IsCancellationRequested)
            {
                return;
            }

            Put("pods", job.Namespace, podName, pod, "ADDED");
            UpdateJob(job, s =>
            {
                s["active"] = 1;
                s["ready"] = 0;
                s["terminating"] = 0;
                s["startTime"] = now;
                s["uncountedTerminatedPods"] = new JsonObject();
            });
        }

        var log = new PodLog();
        _logs[(job.Namespace, podName)] = log;
        if (script.Unschedulable)
        {
            UpdatePod(job, podName, p => p["status"]!["conditions"] = new JsonArray(Condition("PodScheduled", "False", "Unschedulable", "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.", now)));
            AddEvent(job.Namespace, podName, "Warning", "FailedScheduling", "0/3 nodes are available: 3 Insufficient memory.", "default-scheduler");
            await WaitAsync(job, null, deleted, forever: true).ConfigureAwait(false);
            await FinishStoppedAsync(job, podName, containerName, image, log, running: false).ConfigureAwait(false);
            return;
        }

        // Scheduled; the container is being created.
        UpdatePod(job, podName, p =>
        {
            p["spec"]!["nodeName"] = node;
            p["status"] = new JsonObject
            {
                ["phase"] = "Pending",
                ["conditions"] = new JsonArray(
                    Condition("PodReadyToStartContainers", "False", null, null, now),
                    Condition("Initialized", "True", null, null, now),
                    Condition("Ready", "False", "ContainersNotReady", $"containers with unready status: [{containerName}]", now),
                    Condition("ContainersReady", "False", "ContainersNotReady", $"containers with unready status: [{containerName}]", now),
                    Condition("PodScheduled", "True", null, null, now)),
                ["hostIP"] = "10.0.0.11",
                ["startTime"] = now,
                ["containerStatuses"] = new JsonArray(ContainerStatus(containerName, image, new JsonObject { ["waiting"] = new JsonObject { ["reason"] = "ContainerCreating" } }, false)),
                ["qosClass"] = "Guaranteed",
            };
        });
        AddEvent(job.Namespace, podName, "Normal", "Scheduled", $"Successfully assigned {job.Namespace}/{podName} to {node}", "default-scheduler");

        if (script.InitializeUntil is { } initializing)
        {
            SetInitialized(job, podName, "False", "ContainersNotInitialized", "containers with incomplete status: [init]");
            SetWaiting(job, podName, containerName, image, "PodInitializing", "");
            await WaitAsync(job, initializing, deleted).ConfigureAwait(false);
            if (deleted.IsCancellationRequested || job.Stop.Task.IsCompleted)
            {
                await FinishStoppedAsync(job, podName, containerName, image, log, running: false).ConfigureAwait(false);
                return;
            }

            // The init containers are done; the container is being created (still PodInitializing, as the kubelet says).
            SetInitialized(job, podName, "True", null, null);
        }

        if (script.PullUntil is { } pulling)
        {
            AddEvent(job.Namespace, podName, "Normal", "Pulling", $"Pulling image \"{image}\"", "kubelet");
            await WaitAsync(job, pulling, deleted).ConfigureAwait(false);
            if (deleted.IsCancellationRequested || job.Stop.Task.IsCompleted)
            {
                await FinishStoppedAsync(job, podName, containerName, image, log, running: false).ConfigureAwait(false);
                return;
            }
        }

        if (script.InitStuckWaiting is { } initStuck)
        {
            SetInitialized(job, podName, "False", "ContainersNotInitialized", "containers with incomplete status: [init]");
            SetWaiting(job, podName, containerName, image, "PodInitializing", "");
            UpdatePod(job, podName, p => p["status"]!["initContainerStatuses"] = new JsonArray(ContainerStatus("init", image, new JsonObject { ["waiting"] = new JsonObject { ["reason"] = initStuck, ["message"] = $"init container: {initStuck}" } }, false)));
            AddEvent(job.Namespace, podName, "Warning", initStuck == "ContainerCreating" ? "FailedMount" : "BackOff", $"init container: {initStuck}", "kubelet");
            await WaitAsync(job, null, deleted, forever: true).ConfigureAwait(false);
            await FinishStoppedAsync(job, podName, containerName, image, log, running: false).ConfigureAwait(false);
            return;
        }

        if (script.StuckWaiting is { } stuck)
        {
            var (message, eventReason, eventMessage) = stuck switch
            {
                "CreateContainerConfigError" => ("secret \"db-password\" not found", "Failed", "Error: secret \"db-password\" not found"),
                "ContainerCreating" => ((string?)null, "FailedMount", "MountVolume.SetUp failed for volume \"data\" : configmap \"settings\" not found"),
                _ => ($"failed to create containerd task: {stuck}", "Failed", $"Error: {stuck}"),
            };
            if (message is not null)
            {
                SetWaiting(job, podName, containerName, image, stuck, message);
            }

            AddEvent(job.Namespace, podName, "Warning", eventReason, eventMessage, "kubelet");
            await WaitAsync(job, null, deleted, forever: true).ConfigureAwait(false);
            await FinishStoppedAsync(job, podName, containerName, image, log, running: false).ConfigureAwait(false);
            return;
        }

        if (script.ImagePullFails || script.InvalidImageName)
        {
            var (reason, message) = script.InvalidImageName
                ? ("InvalidImageName", $"Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format")
                : ("ErrImagePull", $"failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": not found");
            SetWaiting(job, podName, containerName, image, reason, message);
            AddEvent(job.Namespace, podName, "Warning", script.InvalidImageName ? "InspectFailed" : "Failed", message, "kubelet");
            if (script.ImagePullFails)
            {
                SetWaiting(job, podName, containerName, image, "ImagePullBackOff", $"Back-off pulling image \"{image}\"");
                AddEvent(job.Namespace, podName, "Normal", "BackOff", $"Back-off pulling image \"{image}\"", "kubelet");
            }

            await WaitAsync(job, null, deleted, forever: true).ConfigureAwait(false);
            await FinishStoppedAsync(job, podName, containerName, image, log, running: false).ConfigureAwait(false);
            return;
        }

        // Running.
        AddEvent(job.Namespace, podName, "Normal", "Pulled", script.PullUntil is null ? $"Container image \"{image}\" already present on machine" : $"Successfully pulled image \"{image}\"", "kubelet");
        AddEvent(job.Namespace, podName, "Normal", "Started", $"Started container {containerName}", "kubelet");
        var started = Timestamp();
        UpdatePod(job, podName, p =>
        {
            var status = (JsonObject)p["status"]!;
            status["phase"] = "Running";
            status["podIP"] = "10.244.0.17";
            status["conditions"] = new JsonArray(
                Condition("PodReadyToStartContainers", "True", null, null, started),
                Condition("Initialized", "True", null, null, started),
                Condition("Ready", "True", null, null, started),
                Condition("ContainersReady", "True", null, null, started),
                Condition("PodScheduled", "True", null, null, started));
            status["containerStatuses"] = new JsonArray(ContainerStatus(containerName, image, new JsonObject { ["running"] = new JsonObject { ["startedAt"] = started } }, true));
        });
        lock (_lock)
        {
            UpdateJob(job, s => s["ready"] = 1);
        }

        foreach (var line in script.Logs)
        {
            log.Append(_time.GetUtcNow(), line);
        }

        await WaitAsync(job, script.RunUntil, deleted).ConfigureAwait(false);
        if (deleted.IsCancellationRequested || job.DeadlineExceeded)
        {
            await FinishStoppedAsync(job, podName, containerName, image, log, running: true).ConfigureAwait(false);
            return;
        }

        foreach (var line in script.FinalLogs)
        {
            log.Append(_time.GetUtcNow(), line);
        }

        // Terminated.
        var finished = Timestamp();
        var exitCode = script.Evicted ? 137 : script.ExitCode;
        var reasonText = script.Evicted ? "Error" : script.TerminationReason ?? (exitCode == 0 ? "Completed" : "Error");
        var succeeded = exitCode == 0 && !script.Evicted;
        UpdatePod(job, podName, p =>
        {
            var status = (JsonObject)p["status"]!;
            status["phase"] = succeeded ? "Succeeded" : "Failed";
            if (script.Evicted)
            {
                status["reason"] = "Evicted";
                status["message"] = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51200Ki. Container main was using 900Mi, request is 512Mi, has larger consumption of memory.";
            }

            var conditions = new JsonArray(
                Condition("PodReadyToStartContainers", "False", null, null, finished),
                Condition("Initialized", "True", null, null, started),
                Condition("Ready", "False", "PodCompleted", null, finished),
                Condition("ContainersReady", "False", "PodCompleted", null, finished),
                Condition("PodScheduled", "True", null, null, started));
            if (script.Evicted)
            {
                conditions.Add(Condition("DisruptionTarget", "True", "TerminationByKubelet", "The node was low on resource: memory.", finished));
            }

            status["conditions"] = conditions;
            status["containerStatuses"] = new JsonArray(ContainerStatus(containerName, image, Terminated(exitCode, reasonText, started, finished), false));
        });
        log.Close();
        FinishJob(job, succeeded, succeeded ? null : ("BackoffLimitExceeded", "Job has reached the specified backoff limit"), finished);
        await ExpireAfterAsync(job, ttl).ConfigureAwait(false);
    }

    private static void ExceedDeadlineOf(RunningJob job)
    {
        job.DeadlineExceeded = true;
        job.Stop.TrySetResult();
    }

    /// <summary>Waits until the Job is deleted or passes its deadline, or (when not <paramref name="forever"/>) until <paramref name="runUntil"/>.</summary>
    private static async Task WaitAsync(RunningJob job, Task? runUntil, CancellationToken deleted, bool forever = false)
    {
        if (!forever && runUntil is null)
        {
            return;
        }

        Task[] tasks = runUntil is null || forever ? [job.Stop.Task] : [job.Stop.Task, runUntil];
        await ((Task)Task.WhenAny(tasks)).WaitAsync(deleted).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    /// <summary>The pod stopped early: the Job was deleted (pods already handled) or passed its deadline.</summary>
    private async Task FinishStoppedAsync(RunningJob job, string podName, string containerName, string image, PodLog log, bool running)
    {
        log.Close();
        if (!job.DeadlineExceeded)
        {
            return;
        }

        var now = Timestamp();
        UpdatePod(job, podName, p =>
        {
            var status = (JsonObject)p["status"]!;
            status["phase"] = "Failed";
            status["containerStatuses"] = new JsonArray(ContainerStatus(containerName, image, running ? Terminated(143, "Error", now, now) : new JsonObject { ["waiting"] = new JsonObject { ["reason"] = "ContainerCreating" } }, false));
            var conditions = status["conditions"] as JsonArray ?? [];
            conditions.Add(Condition("DisruptionTarget", "True", "DeletionByJobController", "Job controller: the Job passed its active deadline", now));
            status["conditions"] = conditions;
        });
        FinishJob(job, succeeded: false, ("DeadlineExceeded", "Job was active longer than specified deadline"), now);
        await Task.CompletedTask.ConfigureAwait(false);
    }

    private void FinishJob(RunningJob job, bool succeeded, (string Reason, string Message)? failure, string now)
    {
        lock (_lock)
        {
            if (job.Deleted.IsCancellationRequested)
            {
                return;
            }

            UpdateJob(job, s =>
            {
                s.Remove("active");
                s["ready"] = 0;
                s["terminating"] = 0;
                s[succeeded ? "succeeded" : "failed"] = 1;
                if (succeeded)
                {
                    s["completionTime"] = now;
                    s["conditions"] = new JsonArray(
                        Condition("SuccessCriteriaMet", "True", "CompletionsReached", "Reached expected number of succeeded pods", now),
                        Condition("Complete", "True", "CompletionsReached", "Reached expected number of succeeded pods", now));
                }
                else
                {
                    s["conditions"] = new JsonArray(
                        Condition("FailureTarget", "True", failure!.Value.Reason, failure.Value.Message, now),
                        Condition("Failed", "True", failure.Value.Reason, failure.Value.Message, now));
                }
            });
        }
    }

    private async Task ExpireAfterAsync(RunningJob job, int? ttl)
    {
        if (ttl is not { } seconds)
        {
            return;
        }

        try
        {
            await Task.Delay(TimeSpan.FromSeconds(seconds), _time, job.Deleted.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            return;
        }

        // The TTL controller deletes finished Jobs in the background.
        lock (_lock)
        {
            if (_objects.TryGetValue(("jobs", job.Namespace, job.Name), out var stored))
            {
                Put("jobs", job.Namespace, job.Name, (JsonObject)stored.DeepClone(), "DELETED");
                _running.Remove((job.Namespace, job.Name));
                if (job.PodName is { } pod && _objects.TryGetValue(("pods", job.Namespace, pod), out var p))
                {
                    Put("pods", job.Namespace, pod, (JsonObject)p.DeepClone(), "DELETED");
                }
            }
        }
    }

    private static JsonObject NewPod(RunningJob job, JsonObject template, string podName, string now)
    {
        var metadata = (JsonObject)(template["metadata"]?.DeepClone() ?? new JsonObject());
        metadata["name"] = podName;
        metadata["generateName"] = job.Name + "-";
        metadata["namespace"] = job.Namespace;
        metadata["uid"] = Guid.NewGuid().ToString();
        metadata["creationTimestamp"] = now;
        metadata["ownerReferences"] = new JsonArray(new JsonObject
        {
            ["apiVersion"] = "batch/v1",
            ["kind"] = "Job",
            ["name"] = job.Name,
            ["uid"] = job.Uid,
            ["controller"] = true,
            ["blockOwnerDeletion"] = true,
        });
        metadata["finalizers"] = new JsonArray("batch.kubernetes.io/job-tracking");
        var spec = (JsonObject)template["spec"]!.DeepClone();
        spec["schedulerName"] = "default-scheduler";
        spec["terminationGracePeriodSeconds"] ??= 30;
        spec["dnsPolicy"] ??= "ClusterFirst";
        spec["serviceAccountName"] ??= "default";
        return new JsonObject
        {
            ["kind"] = "Pod",
            ["apiVersion"] = "v1",
            ["metadata"] = metadata,
            ["spec"] = spec,
            ["status"] = new JsonObject { ["phase"] = "Pending", ["qosClass"] = "Guaranteed" },
        };
    }

    private static JsonObject ContainerStatus(string name, string image, JsonObject state, bool ready) => new()
    {
        ["name"] = name,
        ["state"] = state,
        ["lastState"] = new JsonObject(),
        ["ready"] = ready,
        ["restartCount"] = 0,
        ["image"] = image,
        ["imageID"] = state.ContainsKey("waiting") ? "" : $"docker.io/library/{image}@sha256:{new string('0', 64)}",
        ["containerID"] = state.ContainsKey("waiting") ? null : $"containerd://{Guid.NewGuid():N}{Guid.NewGuid():N}",
        ["started"] = state.ContainsKey("running"),
    };

    private static JsonObject Terminated(int exitCode, string reason, string started, string finished) => new()
    {
        ["terminated"] = new JsonObject
        {
            ["exitCode"] = exitCode,
            ["reason"] = reason,
            ["startedAt"] = started,
            ["finishedAt"] = finished,
        },
    };

    private void SetInitialized(RunningJob job, string podName, string status, string? reason, string? message)
        => UpdatePod(job, podName, p =>
        {
            foreach (var condition in p["status"]!["conditions"]!.AsArray())
            {
                if (condition!["type"]!.GetValue<string>() == "Initialized")
                {
                    condition["status"] = status;
                    condition["reason"] = reason;
                    condition["message"] = message;
                }
            }
        });

    private void SetWaiting(RunningJob job, string podName, string containerName, string image, string reason, string message)
        => UpdatePod(job, podName, p => p["status"]!["containerStatuses"] = new JsonArray(ContainerStatus(containerName, image, new JsonObject { ["waiting"] = new JsonObject { ["reason"] = reason, ["message"] = message } }, false)));

    private void UpdatePod(RunningJob job, string podName, Action<JsonObject> change)
    {
        lock (_lock)
        {
            if (job.Deleted.IsCancellationRequested && !job.Orphaned)
            {
                return;
            }

            if (_objects.TryGetValue(("pods", job.Namespace, podName), out var pod))
            {
                var next = (JsonObject)pod.DeepClone();
                change(next);
                Put("pods", job.Namespace, podName, next, "MODIFIED");
            }
        }
    }

    /// <summary>Changes a Job's status. Call under the lock.</summary>
    private void UpdateJob(RunningJob job, Action<JsonObject> change)
    {
        if (_objects.TryGetValue(("jobs", job.Namespace, job.Name), out var stored))
        {
            var next = (JsonObject)stored.DeepClone();
            var status = next["status"] as JsonObject ?? new JsonObject();
            next["status"] = status;
            change(status);
            Put("jobs", job.Namespace, job.Name, next, "MODIFIED");
        }
    }

    private void AddEvent(string ns, string podName, string type, string reason, string message, string component, string involvedKind = "Pod")
    {
        var now = Timestamp();
        var name = $"{podName}.{Guid.NewGuid().ToString("N")[..16]}";
        var e = new JsonObject
        {
            ["kind"] = "Event",
            ["apiVersion"] = "v1",
            ["metadata"] = new JsonObject { ["name"] = name, ["namespace"] = ns, ["uid"] = Guid.NewGuid().ToString(), ["creationTimestamp"] = now },
            ["involvedObject"] = involvedKind == "Pod"
                ? new JsonObject { ["kind"] = "Pod", ["namespace"] = ns, ["name"] = podName, ["apiVersion"] = "v1", ["fieldPath"] = "spec.containers{main}" }
                : new JsonObject { ["kind"] = involvedKind, ["namespace"] = ns, ["name"] = podName, ["apiVersion"] = "batch/v1" },
            ["reason"] = reason,
            ["message"] = message,
            ["source"] = new JsonObject { ["component"] = component },
            ["firstTimestamp"] = now,
            ["lastTimestamp"] = now,
            ["count"] = 1,
            ["type"] = type,
            ["eventTime"] = null,
            ["reportingComponent"] = component,
            ["reportingInstance"] = "",
        };
        lock (_lock)
        {
            Put("events", ns, name, e, "ADDED");
        }
    }

    // ---- Logs ----

    private async Task ServeLogAsync(HttpContext http, string ns, string podName)
    {
        var query = http.Request.Query;
        var pod = GetObject("pods", ns, podName);
        if (pod is null)
        {
            await WriteJsonAsync(http, 404, NotFound("pods", podName)).ConfigureAwait(false);
            return;
        }

        var containerName = pod["spec"]!["containers"]![0]!["name"]!.GetValue<string>();
        var requested = query["container"].ToString();
        if (requested.Length > 0 && requested != containerName)
        {
            await WriteJsonAsync(http, 400, Status(400, "BadRequest", $"container {requested} is not valid for pod {podName}", null)).ConfigureAwait(false);
            return;
        }

        var state = pod["status"]?["containerStatuses"]?[0]?["state"];
        var waiting = state?["waiting"]?["reason"]?.GetValue<string>();
        if (state is null || waiting is not null)
        {
            var message = $"container \"{containerName}\" in pod \"{podName}\" is waiting to start: {waiting ?? "ContainerCreating"}";
            await WriteJsonAsync(http, 400, Status(400, "BadRequest", message, null)).ConfigureAwait(false);
            return;
        }

        if (!_logs.TryGetValue((ns, podName), out var log))
        {
            log = new PodLog();
            log.Close();
        }

        var follow = query["follow"] == "true";
        var timestamps = query["timestamps"] == "true";
        DateTimeOffset? since = DateTimeOffset.TryParse(query["sinceTime"], CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var s) ? s : null;
        http.Response.StatusCode = 200;
        http.Response.ContentType = "text/plain";
        await http.Response.StartAsync(http.RequestAborted).ConfigureAwait(false);
            await http.Response.Body.FlushAsync(http.RequestAborted).ConfigureAwait(false);
        lock (_lock)
        {
            _logStreams.Add(http);
        }

        using var forget = http.RequestAborted.Register(() =>
        {
            lock (_lock)
            {
                _logStreams.Remove(http);
            }
        });
        var next = 0;
        while (true)
        {
            var (lines, closed, changed) = log.Read(next);
            next += lines.Count;
            if (lines.Count > 0)
            {
                var text = new StringBuilder();
                foreach (var (time, line) in lines)
                {
                    if (since is { } from && time < from)
                    {
                        continue;
                    }

                    if (timestamps)
                    {
                        text.Append(time.UtcDateTime.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffff'00Z'", CultureInfo.InvariantCulture)).Append(' ');
                    }

                    text.Append(line).Append('\n');
                }

                await http.Response.WriteAsync(text.ToString(), http.RequestAborted).ConfigureAwait(false);
                await http.Response.Body.FlushAsync(http.RequestAborted).ConfigureAwait(false);
            }

            if (!follow || closed)
            {
                return;
            }

            await changed.WaitAsync(http.RequestAborted).ConfigureAwait(false);
        }
    }

    private sealed class PodLog
    {
        private readonly Lock _lock = new();
        private readonly List<(DateTimeOffset Time, string Line)> _lines = [];
        private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private bool _closed;

        public void Append(DateTimeOffset time, string line)
        {
            TaskCompletionSource changed;
            lock (_lock)
            {
                _lines.Add((time, line));
                changed = _changed;
                _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            changed.TrySetResult();
        }

        public void Close()
        {
            TaskCompletionSource changed;
            lock (_lock)
            {
                _closed = true;
                changed = _changed;
            }

            changed.TrySetResult();
        }

        public (List<(DateTimeOffset Time, string Line)> Lines, bool Closed, Task Changed) Read(int from)
        {
            lock (_lock)
            {
                return (_lines.GetRange(from, _lines.Count - from), _closed, _changed.Task);
            }
        }
    }

    private sealed class RunningJob(string ns, string name, string uid)
    {
        public string Namespace { get; } = ns;

        public string Name { get; } = name;

        public string Uid { get; } = uid;

        public string? PodName { get; set; }

        public CancellationTokenSource Deleted { get; } = new();

        public TaskCompletionSource Stop { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public bool DeadlineExceeded { get; set; }

        public bool Orphaned { get; set; }

        public TaskCompletionSource Resumed { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private sealed record HistoryEntry(long ResourceVersion, string Resource, string Namespace, JsonObject Object, string Line);

    private sealed class Fault(int statusCode, int count, int retryAfterSeconds, Func<FakeRequest, bool> match)
    {
        public int StatusCode { get; } = statusCode;

        public int Remaining { get; set; } = count;

        public int RetryAfterSeconds { get; } = retryAfterSeconds;

        public Func<FakeRequest, bool> Match { get; } = match;
    }

    private sealed class Watcher(string resource, string ns, string? labelSelector, string? fieldSelector, bool bookmarks)
    {
        public string Resource { get; } = resource;

        public bool Bookmarks { get; } = bookmarks;

        public long From { get; set; }

        public Channel<string> Lines { get; } = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true });

        public bool Matches(string r, string n, JsonObject value) => r == Resource && n == ns && Selectors.Matches(value, labelSelector, fieldSelector);
    }
}
