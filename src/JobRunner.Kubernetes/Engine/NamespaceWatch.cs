using System.Text.Json;
using JobRunner.Kubernetes.Client;
using Microsoft.Extensions.Logging;

namespace JobRunner.Kubernetes.Engine;

/// <summary>What a running attempt hears from the shared watch. Called under the watch's lock: store and signal, nothing more.</summary>
internal interface IWatchTarget
{
    /// <summary>The Job's latest state; for a deletion, its last (a Job deleted right after it finished still says so).</summary>
    void OnJob(KubeJob job, bool deleted);

    void OnPod(KubePod pod, bool deleted);
}

/// <summary>
/// The one shared list+watch of a namespace (an informer): two long-lived connections, one for the Jobs JobRunner
/// manages and one for their pods, that drive every running attempt. It keeps the latest objects, relists on 410
/// (<c>Expired</c>/<c>Gone</c>), reconnects from the last resourceVersion (bookmarks included) when the server closes
/// the connection, and backs off on other errors. No attempt polls.
/// </summary>
internal sealed class NamespaceWatch : IAsyncDisposable
{
    private readonly KubernetesApiClient _client;
    private readonly string _namespace;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly Lock _lock = new();
    private readonly Dictionary<string, KubeJob> _jobs = new(StringComparer.Ordinal);
    private readonly Dictionary<string, KubePod> _pods = new(StringComparer.Ordinal);
    private readonly Dictionary<string, IWatchTarget> _targets = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stop = new();
    // Completed once each kind has listed. Each try of a list takes the one that callers wait on and puts a fresh one in
    // its place: a try answers only the callers that were already waiting when it began (a list refused for good, 401,
    // 403, 404, or failing for minutes fails them, so that attempts fail with the API's message instead of waiting
    // forever), and callers that arrive while it is on its way wait for the next try, not for an answer the server gave
    // before they came (a failure in flight when the server recovered must not fail the attempts that follow).
    private TaskCompletionSource _jobsSynced = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TaskCompletionSource _podsSynced = new(TaskCreationOptions.RunContinuationsAsynchronously);
    /// <summary>
    /// How long lists may keep failing (counted from the first failure in a row) before the attempts waiting for them
    /// fail: long enough for an API server's restart, or a host that starts before the server is up.
    /// </summary>
    internal static readonly TimeSpan UnreachableLimit = TimeSpan.FromMinutes(2);

    /// <summary>A watch closed sooner than this counts as closed at once: the next one waits a little.</summary>
    internal static readonly TimeSpan BriefWatch = TimeSpan.FromSeconds(1);

    private Task? _loops;
    private int _relists;
    private int _reconnects;

    public NamespaceWatch(KubernetesApiClient client, string ns, TimeProvider time, ILogger logger)
    {
        _client = client;
        _namespace = ns;
        _time = time;
        _logger = logger;
    }

    /// <summary>Gets how many times a watch was answered with 410 and the objects were listed again (initial lists excluded).</summary>
    public int Relists => Volatile.Read(ref _relists);

    /// <summary>Gets how many times a watch connection ended and was opened again.</summary>
    public int Reconnects => Volatile.Read(ref _reconnects);

    /// <summary>Starts both loops once, and waits until both have listed.</summary>
    public Task StartAsync(CancellationToken cancellationToken)
    {
        Task jobs, pods;
        lock (_lock)
        {
            // Read before the loops start: the first try of each list answers the caller that starts them.
            jobs = Volatile.Read(ref _jobsSynced).Task;
            pods = Volatile.Read(ref _podsSynced).Task;
            _loops ??= Task.WhenAll(
                Task.Run(() => RunAsync(isJobs: true, _stop.Token), CancellationToken.None),
                Task.Run(() => RunAsync(isJobs: false, _stop.Token), CancellationToken.None));
        }

        return BothAsync(jobs, pods).WaitAsync(cancellationToken);

        // Fails as soon as either fails (Task.WhenAll would wait for the other).
        static async Task BothAsync(Task a, Task b)
        {
            var first = await Task.WhenAny(a, b).ConfigureAwait(false);
            await first.ConfigureAwait(false);
            await (first == a ? b : a).ConfigureAwait(false);
        }
    }

    /// <summary>Routes the events of Job <paramref name="jobName"/> and its pods to <paramref name="target"/>, starting with what is known now.</summary>
    public Registration Attach(string jobName, IWatchTarget target)
    {
        lock (_lock)
        {
            _targets[jobName] = target;
            if (_jobs.TryGetValue(jobName, out var job))
            {
                target.OnJob(job, deleted: false);
            }

            foreach (var pod in _pods.Values)
            {
                if (JobOf(pod) == jobName)
                {
                    target.OnPod(pod, deleted: false);
                }
            }
        }

        return new Registration(this, jobName, target);
    }

    /// <summary>
    /// Gets the Jobs still active (neither complete nor failed) that no attempt of this host watches, created before
    /// <paramref name="createdBefore"/>, with the JobRunner job each runs.
    /// </summary>
    public List<(string Name, JobId Job)> Unattached(DateTimeOffset createdBefore)
    {
        var found = new List<(string, JobId)>();
        lock (_lock)
        {
            foreach (var (name, job) in _jobs)
            {
                if (!_targets.ContainsKey(name)
                    && job.Metadata.CreationTimestamp is { } created && created < createdBefore
                    && AttemptRun.Conditions(job) is { Complete: false, Failed: false }
                    && JobId.TryParse(job.Metadata.Labels?.GetValueOrDefault(KubeNames.JobIdLabel), out var id))
                {
                    found.Add((name, id));
                }
            }
        }

        return found;
    }

    /// <summary>Gets whether an attempt of this host watches Job <paramref name="jobName"/>.</summary>
    public bool IsAttached(string jobName)
    {
        lock (_lock)
        {
            return _targets.ContainsKey(jobName);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        if (_loops is { } loops)
        {
            await loops.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        _stop.Dispose();
    }

    private void Detach(string jobName, IWatchTarget target)
    {
        lock (_lock)
        {
            if (_targets.TryGetValue(jobName, out var current) && ReferenceEquals(current, target))
            {
                _targets.Remove(jobName);
            }
        }
    }

    private static string? JobOf(KubePod pod) => pod.Metadata.Labels?.GetValueOrDefault(KubeNames.KubeJobLabel);

    private async Task RunAsync(bool isJobs, CancellationToken stop)
    {
        var path = isJobs ? KubernetesApiClient.JobsPath(_namespace) : KubernetesApiClient.PodsPath(_namespace);
        var kind = isJobs ? "Jobs" : "pods";
        string? resourceVersion = null;
        var failures = 0;
        long failingSince = 0; // when the failures in a row began
        var brief = 0; // watches in a row that the server closed at once or that delivered nothing
        var listed = false;
        // Until the first list: the callers each try took over (see _jobsSynced), still waiting after tries that failed.
        var waiting = new List<TaskCompletionSource>();
        while (!stop.IsCancellationRequested)
        {
            try
            {
                if (resourceVersion is null)
                {
                    if (listed)
                    {
                        Interlocked.Increment(ref _relists);
                    }
                    else
                    {
                        waiting.Add(TakeWaiting(isJobs));
                    }

                    resourceVersion = isJobs ? await ListJobsAsync(stop).ConfigureAwait(false) : await ListPodsAsync(stop).ConfigureAwait(false);
                    if (!listed)
                    {
                        listed = true;
                        foreach (var caller in waiting)
                        {
                            caller.TrySetResult();
                        }

                        waiting.Clear();
                        Volatile.Read(ref isJobs ? ref _jobsSynced : ref _podsSynced).TrySetResult();
                    }

                    failures = 0;
                }

                var opened = _time.GetTimestamp();
                var delivered = 0;
                await foreach (var e in _client.WatchAsync(path, KubeNames.ManagedSelector, resourceVersion, stop).ConfigureAwait(false))
                {
                    failures = 0;
                    delivered++;
                    resourceVersion = (isJobs ? Apply(e, KubeJson.Default.KubeJob) : Apply(e, KubeJson.Default.KubePod)) ?? resourceVersion;
                }

                // The server closed the watch (its timeout, a restart, a proxy): continue from the last version seen.
                Interlocked.Increment(ref _reconnects);
                Log.WatchClosed(_logger, kind, _namespace, resourceVersion);
                if (delivered == 0 || _time.GetElapsedTime(opened) < BriefWatch)
                {
                    // Closed at once, or with nothing in it (a proxy that ends every stream): do not spin on the server.
                    brief++;
                    await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(100 * (1 << Math.Min(brief, 7)), 10_000)), _time, stop).ConfigureAwait(false);
                }
                else
                {
                    brief = 0;
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (KubernetesApiException e) when (e.IsExpired)
            {
                Log.WatchExpired(_logger, kind, _namespace, e.Message);
                resourceVersion = null;
            }
#pragma warning disable CA1031 // The watch must outlive any failure: it logs, backs off and tries again.
            catch (Exception e)
#pragma warning restore CA1031
            {
                if (failures++ == 0)
                {
                    failingSince = _time.GetTimestamp();
                }

                if (!listed && (e is KubernetesApiException { IsTransient: false } || _time.GetElapsedTime(failingSince) >= UnreachableLimit))
                {
                    // Not listed yet, and refused for good (missing RBAC permission, wrong namespace, bad credentials),
                    // or failing for minutes (the server cannot be reached: DNS, TLS, connection refused; 504s): the
                    // attempts that were waiting for the watch when this try began fail with the last error; the watch
                    // keeps trying, and those that came since wait for its next try.
                    Exception error = e is HttpRequestException unreachable
                        ? new KubernetesApiException(0, "Unreachable", $"Kubernetes API: could not list {kind} in namespace '{_namespace}': the API server at {_client.BaseAddress} cannot be reached ({unreachable.Message}). Check the server address, DNS, the network path and the certificate authority.", innerException: e)
                        : e;
                    foreach (var caller in waiting)
                    {
                        caller.TrySetException(error);
                    }

                    waiting.Clear();
                }

                var delay = TimeSpan.FromMilliseconds(Math.Min(100 * (1 << Math.Min(failures, 8)), 10_000));
                Log.WatchFailed(_logger, e, kind, _namespace, delay);
                try
                {
                    await Task.Delay(delay, _time, stop).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    /// <summary>Takes the completion that callers of <see cref="StartAsync"/> wait on for one kind, leaving a fresh one for those that come next.</summary>
    private TaskCompletionSource TakeWaiting(bool isJobs)
        => Interlocked.Exchange(ref isJobs ? ref _jobsSynced : ref _podsSynced, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));

    private string? Apply<T>(RawWatchEvent e, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type)
        where T : class
    {
        var item = e.Object.Deserialize(type)!;
        var meta = item is KubeJob j ? j.Metadata : ((KubePod)(object)item).Metadata;
        if (e.Type == "BOOKMARK")
        {
            return meta.ResourceVersion;
        }

        var deleted = e.Type == "DELETED";
        lock (_lock)
        {
            if (item is KubeJob job)
            {
                UpsertJob(job, deleted);
            }
            else
            {
                UpsertPod((KubePod)(object)item, deleted);
            }
        }

        return meta.ResourceVersion;
    }

    private void UpsertJob(KubeJob job, bool deleted)
    {
        var name = job.Metadata.Name!;
        if (deleted)
        {
            _jobs.Remove(name);
        }
        else
        {
            _jobs[name] = job;
        }

        if (_targets.TryGetValue(name, out var target))
        {
            target.OnJob(job, deleted);
        }
    }

    private void UpsertPod(KubePod pod, bool deleted)
    {
        var name = pod.Metadata.Name!;
        if (deleted)
        {
            _pods.Remove(name);
        }
        else
        {
            _pods[name] = pod;
        }

        if (JobOf(pod) is { } job && _targets.TryGetValue(job, out var target))
        {
            target.OnPod(pod, deleted);
        }
    }

    private async Task<string?> ListJobsAsync(CancellationToken stop)
    {
        var list = await _client.ListJobsAsync(_namespace, KubeNames.ManagedSelector, stop).ConfigureAwait(false);
        lock (_lock)
        {
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var job in list.Items)
            {
                seen.Add(job.Metadata.Name!);
                UpsertJob(job, deleted: false);
            }

            foreach (var gone in _jobs.Values.Where(j => !seen.Contains(j.Metadata.Name!)).ToList())
            {
                UpsertJob(gone, deleted: true);
            }
        }

        return list.Metadata.ResourceVersion;
    }

    private async Task<string?> ListPodsAsync(CancellationToken stop)
    {
        var list = await _client.ListPodsAsync(_namespace, KubeNames.ManagedSelector, stop).ConfigureAwait(false);
        lock (_lock)
        {
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var pod in list.Items)
            {
                seen.Add(pod.Metadata.Name!);
                UpsertPod(pod, deleted: false);
            }

            foreach (var gone in _pods.Values.Where(p => !seen.Contains(p.Metadata.Name!)).ToList())
            {
                UpsertPod(gone, deleted: true);
            }
        }

        return list.Metadata.ResourceVersion;
    }

    /// <summary>Detaches a target when disposed.</summary>
    internal readonly struct Registration(NamespaceWatch watch, string jobName, IWatchTarget target) : IDisposable
    {
        public void Dispose() => watch.Detach(jobName, target);
    }
}
