using System.Globalization;
using System.Text.Json;
using System.Threading.Channels;
using JobRunner.Kubernetes.Client;
using Microsoft.Extensions.Logging;

namespace JobRunner.Kubernetes.Engine;

/// <summary>
/// Runs each attempt of a container workload as a batch/v1 Job named <c>{prefix}-{job id}-{attempt}</c>. The name is
/// checkpointed before the Job is created, so a new lease owner re-attaches to it instead of submitting twice; a create
/// that answers 409 AlreadyExists adopts the Job. The shared <see cref="NamespaceWatch"/> drives the attempt: no polling.
/// </summary>
internal sealed class KubernetesEngine : IExecutionEngine
{
    private readonly KubernetesEngineHost _host;
    private readonly Func<WorkloadContext, CancellationToken, ValueTask<ContainerSpec>> _resolve;

    public KubernetesEngine(KubernetesEngineHost host, Func<WorkloadContext, CancellationToken, ValueTask<ContainerSpec>> resolve)
    {
        _host = host;
        _resolve = resolve;
    }

    public async ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
    {
        var spec = await _resolve(context, cancellationToken).ConfigureAwait(false);
        var errors = JobMapper.Validate(spec);
        if (errors.Count > 0)
        {
            throw new JobValidationException(errors);
        }

        var (client, watch) = await _host.ConnectAsync(cancellationToken).ConfigureAwait(false);
        await watch.StartAsync(cancellationToken).ConfigureAwait(false);

        using var run = new AttemptRun(_host, client, context, spec);
        var name = await FindPreviousAsync(run, client, cancellationToken).ConfigureAwait(false);
        NamespaceWatch.Registration? registration = null;
        try
        {
            // The submit is inside: a cancellation while the create is on its way (or waits to be retried, when the
            // server may have created the Job and failed to answer) deletes the Job by its name too.
            registration = name is null ? await SubmitAsync(run, watch, client, cancellationToken).ConfigureAwait(false) : watch.Attach(name, run);
            await run.RunAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (GiveUpException e)
        {
            await run.DeleteAsync(e.Error.Message).ConfigureAwait(false);
            throw e.Error;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            if (context.CheckpointRequested.IsCancellationRequested)
            {
                // A graceful stop: the Job keeps running and the next owner re-attaches to it by its checkpointed name.
                await TryLogAsync(context, run.Logger, $"Leaving Kubernetes Job {run.Name} running; the next owner of the job re-attaches to it.").ConfigureAwait(false);
            }
            else if (await HoldsLeaseAsync(context, $"Stopping: deleting Kubernetes Job {run.Name}.").ConfigureAwait(false))
            {
                await run.DeleteAsync("the attempt was cancelled").ConfigureAwait(false);
            }
            else
            {
                // The lease was lost (the job was taken back and may already run elsewhere, re-attached to this very Job
                // by its checkpoint): deleting it would kill the new owner's run.
                Log.LeftForNextOwner(run.Logger, context.JobId, run.Name);
            }

            throw;
        }
        finally
        {
            await run.StopLogsAsync().ConfigureAwait(false);
            registration?.Dispose();
        }
    }

    /// <summary>A Job named by the checkpoint that is still running (or succeeded) belongs to this job: re-attach to it.</summary>
    private static async Task<string?> FindPreviousAsync(AttemptRun run, KubernetesApiClient client, CancellationToken cancellationToken)
    {
        var context = run.Context;
        if (ReadCheckpoint(context.Checkpoint) is not { } previous || previous.Namespace != run.Namespace)
        {
            return null;
        }

        KubeJob? job;
        try
        {
            job = await client.GetJobAsync(run.Namespace, previous.Job, cancellationToken).ConfigureAwait(false);
        }
        catch (KubernetesApiException e) when (e.IsNotFound)
        {
            return null;
        }

        if (job.Metadata.Labels?.GetValueOrDefault(KubeNames.JobIdLabel) != context.JobId.ToString())
        {
            return null;
        }

        var (complete, failed, _) = AttemptRun.Conditions(job);
        if (failed)
        {
            // The previous attempt's Job failed: this attempt is a retry and gets a Job of its own.
            return null;
        }

        run.Name = previous.Job;
        if (int.TryParse(job.Metadata.Labels?.GetValueOrDefault(KubeNames.AttemptLabel), NumberStyles.None, CultureInfo.InvariantCulture, out var created))
        {
            run.StoredLogEnd = await StoredLogEndAsync(run, created, cancellationToken).ConfigureAwait(false);
        }

        Log.Adopted(run.Logger, context.JobId, previous.Job, complete ? "finished, from the checkpoint" : "running, from the checkpoint");
        await TryLogAsync(context, run.Logger, $"Re-attached to Kubernetes Job {previous.Job} in namespace {run.Namespace} (it is {(complete ? "complete" : "still running")}).").ConfigureAwait(false);
        return previous.Job;
    }

    /// <summary>
    /// Where the pod's lines that earlier attempts (from <paramref name="created"/>, which created the Job, on) stored end:
    /// the last timestamp and how many lines have it, so that a re-attached stream goes on after them instead of from the
    /// pod's start. Reads the job's log through the host's <see cref="ILogStore"/> from its end: the end is found by
    /// halving (a read of one line per step), then pages are read backwards until the last stored line of the pod and
    /// its equals are counted, or the lines from before the Job are reached. Without a store, or when it fails, the
    /// stream starts over and the lines stored already appear twice.
    /// </summary>
    private static async Task<(DateTimeOffset Last, int AtLast)?> StoredLogEndAsync(AttemptRun run, int created, CancellationToken cancellationToken)
    {
        var context = run.Context;
        if (!run.Options.StreamLogs || context.Services.GetService(typeof(ILogStore)) is not ILogStore logs)
        {
            return null;
        }

        try
        {
            return await FindStoredLogEndAsync(logs, context.JobId, created, context.Attempt, 10_000, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Log.StoredLogUnread(run.Logger, e, context.JobId, run.Name);
            return null;
        }
    }

    /// <summary>
    /// The last timestamp of the output lines attempts <paramref name="created"/> to <paramref name="attempt"/> − 1 stored
    /// in <paramref name="job"/>'s log, and how many lines have it; <see langword="null"/> when they stored none.
    /// </summary>
    internal static async Task<(DateTimeOffset Last, int AtLast)?> FindStoredLogEndAsync(ILogStore logs, JobId job, int created, int attempt, int pageSize, CancellationToken cancellationToken)
    {
        var end = await EndAsync(logs, job, cancellationToken).ConfigureAwait(false);
        DateTimeOffset? last = null;
        var atLast = 0;
        for (var to = end; to > 0;)
        {
            var from = Math.Max(0, to - pageSize);
            var page = await logs.ReadAsync(job, new LogQuery { Offset = from, Limit = (int)(to - from) }, cancellationToken).ConfigureAwait(false);
            var beforeJob = true;
            for (var i = page.Entries.Count - 1; i >= 0; i--)
            {
                var entry = page.Entries[i];
                if (entry.Offset >= to)
                {
                    continue;
                }

                beforeJob &= entry.Attempt < created;
                if (entry.Stream != LogStream.Output || entry.Attempt < created || entry.Attempt >= attempt)
                {
                    continue;
                }

                if (last is not { } l)
                {
                    (last, atLast) = (entry.Timestamp, 1);
                }
                else if (entry.Timestamp == l)
                {
                    atLast++;
                }
                else
                {
                    return (l, atLast);
                }
            }

            if (beforeJob && page.Entries.Count > 0)
            {
                break;
            }

            to = from;
        }

        return last is { } found ? (found, atLast) : null;

        // The offset after the log's last line.
        static async Task<long> EndAsync(ILogStore logs, JobId job, CancellationToken token)
        {
            if (!await HasAsync(0).ConfigureAwait(false))
            {
                return 0;
            }

            long below = 0, above = 1024;
            while (await HasAsync(above).ConfigureAwait(false))
            {
                (below, above) = (above, above * 2);
            }

            while (above - below > 1)
            {
                var middle = below + ((above - below) / 2);
                if (await HasAsync(middle).ConfigureAwait(false))
                {
                    below = middle;
                }
                else
                {
                    above = middle;
                }
            }

            return above;

            async Task<bool> HasAsync(long offset)
                => (await logs.ReadAsync(job, new LogQuery { Offset = offset, Limit = 1 }, token).ConfigureAwait(false)).Entries.Count > 0;
        }
    }

    private static async Task<NamespaceWatch.Registration> SubmitAsync(AttemptRun run, NamespaceWatch watch, KubernetesApiClient client, CancellationToken cancellationToken)
    {
        var context = run.Context;
        var options = run.Options;
        var name = KubeNames.JobName(options.JobNamePrefix, context.JobId, context.Attempt);
        run.Name = name;

        // Checkpoint first: if this host dies between the create and the next write, the next owner still finds the Job.
        await context.SaveCheckpointAsync(WriteCheckpoint(name, run.Namespace), cancellationToken).ConfigureAwait(false);
        var registration = watch.Attach(name, run);
        try
        {
            await client.CreateJobAsync(run.Namespace, JobMapper.ToJob(name, run.Spec, context, options), cancellationToken).ConfigureAwait(false);
            Log.Created(run.Logger, context.JobId, name);
        }
        catch (KubernetesApiException e) when (e.IsAlreadyExists)
        {
            Log.Adopted(run.Logger, context.JobId, name, "409 AlreadyExists");
            await TryLogAsync(context, run.Logger, $"Kubernetes Job {name} already exists (a second submit of this attempt); adopted it.").ConfigureAwait(false);
        }
        catch
        {
            registration.Dispose();
            throw;
        }

        return registration;
    }

    /// <summary>
    /// Writes <paramref name="message"/> to the attempt's log, a fenced write: <see langword="false"/> when it is refused
    /// because the attempt's lease is lost. Any other failure counts as held (the attempt was stopped for a reason of its
    /// own: cancelled or timed out).
    /// </summary>
    private static async Task<bool> HoldsLeaseAsync(WorkloadContext context, string message)
    {
        try
        {
            await context.LogAsync(message, LogStream.System, CancellationToken.None).ConfigureAwait(false);
            return true;
        }
        catch (StaleFenceTokenException)
        {
            return false;
        }
#pragma warning disable CA1031 // Any other failure (the store's own time limit included: no token is passed) counts as held.
        catch (Exception)
#pragma warning restore CA1031
        {
            return true;
        }
    }

    /// <summary>
    /// Writes <paramref name="message"/> to the attempt's log, best effort: the attempt's outcome (and whether its Job is
    /// deleted) never depends on the log store. Any failure is logged and swallowed: no token is passed, so a cancellation
    /// is the store's own (its time limit), not the attempt's.
    /// </summary>
    internal static async Task TryLogAsync(WorkloadContext context, ILogger logger, string message)
    {
        try
        {
            await context.LogAsync(message, LogStream.System, CancellationToken.None).ConfigureAwait(false);
        }
        catch (StaleFenceTokenException)
        {
            // The lease is gone; the attempt is ending anyway.
        }
#pragma warning disable CA1031 // Best effort: see above.
        catch (Exception e)
#pragma warning restore CA1031
        {
            Log.SystemLogFailed(logger, e, context.JobId);
        }
    }

    internal static (string Job, string Namespace)? ReadCheckpoint(ReadOnlyMemory<byte>? checkpoint)
    {
        if (checkpoint is not { IsEmpty: false } raw)
        {
            return null;
        }

        try
        {
            using var document = JsonDocument.Parse(raw);
            var root = document.RootElement;
            return root.ValueKind == JsonValueKind.Object
                && root.TryGetProperty("kubernetesJob", out var job) && job.GetString() is { } name
                && root.TryGetProperty("namespace", out var ns) && ns.GetString() is { } space
                ? (name, space)
                : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    internal static byte[] WriteCheckpoint(string name, string ns)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("kubernetesJob", name);
            writer.WriteString("namespace", ns);
            writer.WriteEndObject();
        }

        return buffer.ToArray();
    }
}

/// <summary>One attempt's view of its Job and pod, fed by the shared watch, and the decisions taken on it.</summary>
internal sealed class AttemptRun : IWatchTarget, IDisposable
{
    private static readonly TimeSpan s_podGrace = TimeSpan.FromSeconds(2);

    /// <summary>How soon the pod's events are read again after they could not be (to see whether an image pull is under way).</summary>
    private static readonly TimeSpan s_eventsRetry = TimeSpan.FromSeconds(30);
    private readonly KubernetesEngineHost _host;
    private readonly KubernetesApiClient _client;
    private readonly Channel<bool> _changed = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite, SingleReader = true });
    private readonly ITimer _timer;
    private readonly CancellationTokenSource _logStop = new();
    private readonly TaskCompletionSource _containerDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile KubeJob? _job;
    private volatile KubePod? _pod;
    private volatile bool _jobGone;
    private DateTimeOffset? _pullSince;
    private DateTimeOffset? _unschedulableSince;
    private DateTimeOffset? _startSince;
    private DateTimeOffset? _startDue;
    private DateTimeOffset? _pullDue;
    private DateTimeOffset? _pullingSeen; // the time of the latest Pulling event seen while the container waits, its pull not seen to end
    private string? _pullingImage; // the image that event names
    private DateTimeOffset? _noPodSince;
    private DateTimeOffset? _podGraceUntil;
    private bool _listedPods;
    private bool _reportedSuspended;
    private Task? _logs;
    private string? _lastReported;

    public AttemptRun(KubernetesEngineHost host, KubernetesApiClient client, WorkloadContext context, ContainerSpec spec)
    {
        _host = host;
        _client = client;
        Context = context;
        Spec = spec;
        _timer = host.Time.CreateTimer(static s => ((AttemptRun)s!).Signal(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
    }

    public WorkloadContext Context { get; }

    public ContainerSpec Spec { get; }

    public string Name { get; set; } = "";

    /// <summary>Gets or sets where the lines of this Job's pod that earlier attempts stored end (a re-attached run).</summary>
    public (DateTimeOffset Last, int AtLast)? StoredLogEnd { get; set; }

    public KubernetesEngineOptions Options => _host.Options;

    public string Namespace => _host.Options.Namespace;

    public ILogger Logger => _host.Logger;

    private TimeProvider Time => _host.Time;

    public void OnJob(KubeJob job, bool deleted)
    {
        _job = job;
        _jobGone |= deleted;
        Signal();
    }

    public void OnPod(KubePod pod, bool deleted)
    {
        if (!deleted)
        {
            _pod = pod;
            if (Main(pod)?.State?.Terminated is not null || pod.Status?.Phase is "Succeeded" or "Failed")
            {
                _containerDone.TrySetResult();
            }
        }

        Signal();
    }

    public static (bool Complete, bool Failed, Condition? Failure) Conditions(KubeJob job)
    {
        bool complete = false, failed = false;
        Condition? failure = null;
        if (job.Status?.Conditions is { } conditions)
        {
            foreach (var c in conditions)
            {
                if (c.Status != "True")
                {
                    continue;
                }

                if (c.Type == "Complete")
                {
                    complete = true;
                }
                else if (c.Type == "Failed")
                {
                    failed = true;
                    failure = c;
                }
            }
        }

        return (complete, failed, failure);
    }

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            if (await EvaluateAsync(cancellationToken).ConfigureAwait(false))
            {
                return;
            }

            await _changed.Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Deletes the Job (pods in the background) with a bounded wait of its own: the caller's token is already cancelled.</summary>
    public async Task DeleteAsync(string why)
    {
        if (Name.Length == 0)
        {
            return; // stopped before it had a Job
        }

        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30), Time);
        try
        {
            await _client.DeleteJobAsync(Namespace, Name, timeout.Token).ConfigureAwait(false);
            await KubernetesEngine.TryLogAsync(Context, Logger, $"Deleted Kubernetes Job {Name}: {why.TrimEnd('.')}.").ConfigureAwait(false);
        }
        catch (KubernetesApiException e) when (e.IsNotFound)
        {
            // Never created (stopped while the create was on its way), or already gone.
        }
        catch (Exception e) when (e is KubernetesApiException or HttpRequestException or OperationCanceledException or ObjectDisposedException)
        {
            // ObjectDisposedException: the host stopped (its connections and token source disposed) before the delete went
            // out. The Job is left to the orphan sweep of a host that runs on, as when the API server cannot be reached.
            Log.DeleteFailed(Logger, e, Context.JobId, Name);
        }
    }

    public async Task StopLogsAsync()
    {
        if (_logs is { } logs)
        {
            await _logStop.CancelAsync().ConfigureAwait(false);
            await logs.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
    }

    public void Dispose()
    {
        _timer.Dispose();
        _logStop.Dispose();
    }

    private void Signal() => _changed.Writer.TryWrite(true);

    private static ContainerStatus? Main(KubePod? pod)
        => pod?.Status?.ContainerStatuses?.Find(static c => c.Name == KubeNames.ContainerName);

    /// <summary>Looks at the latest state; returns true when the attempt succeeded, throws when it failed, false to wait.</summary>
    private async Task<bool> EvaluateAsync(CancellationToken cancellationToken)
    {
        var job = _job;
        var pod = _pod;
        var now = Time.GetUtcNow();
        if (_jobGone && (job is null || Conditions(job) is (false, false, _)))
        {
            // Deleted before its last state had a verdict. (A Job that finished and was deleted at once, e.g. with a TTL
            // of 0, is judged by that last state below.)
            throw new TransientJobException($"Kubernetes Job {Name} in namespace {Namespace} was deleted by someone else before it finished.");
        }

        var main = Main(pod);
        if (pod is not null)
        {
            await ReportPhaseAsync(pod, main).ConfigureAwait(false);
            if (Options.StreamLogs && _logs is null && (main?.State?.Running is not null || main?.State?.Terminated is not null))
            {
                _logs = Task.Run(() => PumpLogsAsync(pod.Metadata.Name!, _logStop.Token), CancellationToken.None);
            }
        }

        if (job is not null)
        {
            var (complete, failed, failure) = Conditions(job);
            if (complete || failed)
            {
                var deadline = failed && failure?.Reason == "DeadlineExceeded";
                var podDone = main?.State?.Terminated is not null || pod?.Status?.Phase is "Succeeded" or "Failed";
                if (!podDone && !deadline)
                {
                    // The pod's last state travels on the other watch and may not be here yet: give it a moment, then ask once.
                    _podGraceUntil ??= now + s_podGrace;
                    if (now < _podGraceUntil)
                    {
                        Arm();
                        return false;
                    }

                    if (!_listedPods)
                    {
                        _listedPods = true;
                        var pods = await _client.ListPodsAsync(Namespace, $"{KubeNames.KubeJobLabel}={Name}", cancellationToken).ConfigureAwait(false);
                        if (pods.Items.Count > 0)
                        {
                            OnPod(pods.Items[^1], deleted: false);
                            return false;
                        }
                    }
                }

                if (Options.StreamLogs && _logs is null && pod is not null && (main?.State?.Running is not null || main?.State?.Terminated is not null))
                {
                    _logs = Task.Run(() => PumpLogsAsync(pod.Metadata.Name!, _logStop.Token), CancellationToken.None);
                }

                await FinishLogsAsync().ConfigureAwait(false);
                if (complete)
                {
                    Context.ReportExitCode(main?.State?.Terminated?.ExitCode ?? 0);
                    return true;
                }

                if (deadline)
                {
                    throw new JobTimeoutException(Context.JobId, Spec.Timeout ?? TimeSpan.Zero);
                }

                throw (Exception?)Classify(pod, main)
                    ?? new TransientJobException($"Kubernetes Job {Name} failed ({failure?.Reason}: {failure?.Message}) and its pod left no exit status.");
            }
        }

        if (pod is not null)
        {
            _noPodSince = null;
            await CheckStuckAsync(pod, main, now, cancellationToken).ConfigureAwait(false);
        }
        else if (job is not null && IsSuspended(job))
        {
            // Held back by a queueing controller (Kueue): no pod is expected until it is admitted, however long that takes.
            _noPodSince = null;
            if (!_reportedSuspended)
            {
                _reportedSuspended = true;
                await KubernetesEngine.TryLogAsync(Context, Logger, $"Kubernetes Job {Name} is suspended (held by a queue such as Kueue); waiting for it to be admitted.").ConfigureAwait(false);
            }
        }
        else if (job is not null)
        {
            // The Job controller may be unable to create the pod (PodSecurity, a ResourceQuota, a missing service
            // account): the Job then stays active with no pod and no condition, and says why only in its events.
            _noPodSince ??= now;
            if (now - _noPodSince >= Options.UnschedulableLimit)
            {
                FailPermanently(new WorkloadExitException(null, ExitReason.StartFailed, isTransient: true, $"Kubernetes Job {Name} created no pod in {Options.UnschedulableLimit}{await JobEventsAsync(cancellationToken).ConfigureAwait(false)}. Check what the cluster refuses (PodSecurity, ResourceQuota, the service account), or raise KubernetesEngineOptions.UnschedulableLimit."));
            }
        }

        Arm();
        return false;
    }

    /// <summary>The Job's warning events (e.g. FailedCreate and why), as ": reason: message; …", or empty.</summary>
    private async Task<string> JobEventsAsync(CancellationToken cancellationToken)
    {
        try
        {
            var events = await _client.ListEventsAsync(Namespace, "Job", Name, cancellationToken).ConfigureAwait(false);
            var warnings = events.Items.Where(static e => e.Type == "Warning").TakeLast(3).Select(static e => $"{e.Reason}: {e.Message}").ToList();
            return warnings.Count == 0 ? "" : ": " + string.Join("; ", warnings);
        }
        catch (Exception e) when (e is KubernetesApiException or HttpRequestException)
        {
            return "";
        }
    }

    /// <summary>Whether the Job is suspended (<c>spec.suspend</c>, or its <c>Suspended</c> condition), as Kueue keeps a Job it has not admitted yet.</summary>
    internal static bool IsSuspended(KubeJob job)
        => job.Spec?.Suspend == true || job.Status?.Conditions?.Exists(static c => c.Type == "Suspended" && c.Status == "True") == true;

    private async Task CheckStuckAsync(KubePod pod, ContainerStatus? main, DateTimeOffset now, CancellationToken cancellationToken)
    {
        var waiting = main?.State?.Waiting;
        if (waiting?.Reason is "InvalidImageName" or "ErrImageNeverPull")
        {
            FailPermanently(new WorkloadExitException(null, ExitReason.StartFailed, isTransient: false, $"Pod {pod.Metadata.Name}: the image '{Spec.Image}' cannot be used ({waiting.Reason}: {waiting.Message}). Fix ContainerSpec.Image."));
        }

        if (waiting?.Reason is "ErrImagePull" or "ImagePullBackOff")
        {
            _pullSince ??= now;
            if (now - _pullSince >= Options.ImagePullBackOffLimit)
            {
                FailPermanently(new WorkloadExitException(null, ExitReason.StartFailed, isTransient: false, $"Pod {pod.Metadata.Name}: the image '{Spec.Image}' could not be pulled for {Options.ImagePullBackOffLimit} ({waiting.Reason}: {waiting.Message}). Check the image name and tag, and the registry credentials (imagePullSecrets)."));
            }
        }
        else if (main?.State?.Running is not null || main?.State?.Terminated is not null)
        {
            _pullSince = null;
        }

        // A scheduled container that does not start for a reason other than its image: a Secret or ConfigMap it refers to
        // is missing (CreateContainerConfigError), the runtime cannot create or run it, or it stays in ContainerCreating
        // (a volume that cannot be mounted, a network that cannot be set up). The kubelet would keep trying forever.
        // PodInitializing counts only once the init containers are done (the Initialized condition): before, they run.
        var scheduled = pod.Spec?.NodeName is { Length: > 0 } || pod.Status?.Conditions?.Exists(static c => c.Type == "PodScheduled" && c.Status == "True") == true;
        var initialized = pod.Status?.Conditions?.Exists(static c => c.Type == "Initialized" && c.Status == "True") == true;

        // While the init containers run, the one that does not start (or keeps crashing) is what waits: it counts as the
        // container would. One that runs, or has finished, is progress.
        var init = !initialized && waiting?.Reason == "PodInitializing"
            ? pod.Status?.InitContainerStatuses?.Find(static s => s.State?.Terminated is not { ExitCode: 0 })
            : null;
        var initWaiting = init?.State?.Waiting;
        var initStuck = initWaiting?.Reason is "ContainerCreating" or "CreateContainerConfigError" or "CreateContainerError" or "RunContainerError" or "CrashLoopBackOff" or "ErrImagePull" or "ImagePullBackOff" or "InvalidImageName";
        if (initStuck)
        {
            waiting = initWaiting;
        }

        var creating = waiting?.Reason == "ContainerCreating" || (waiting?.Reason == "PodInitializing" && initialized);
        if (initStuck || waiting?.Reason is "CreateContainerConfigError" or "CreateContainerError" or "RunContainerError" || (scheduled && creating))
        {
            if (_startSince is null)
            {
                _startSince = now;
                _startDue = now + Options.ContainerStartLimit;
                _pullDue = now + Options.ImagePullLimit;
            }

            // A container in ContainerCreating is looked at once more when the pull limit is reached (it may come first).
            var pullDue = creating && _pullDue is { } due && now >= due;
            if (!creating)
            {
                _pullDue = null;
            }

            if (now >= _startDue || pullDue)
            {
                _pullDue = null;
                await CheckStartAsync(pod, waiting!, creating, initStuck, initStuck ? init!.Name : KubeNames.ContainerName, now, cancellationToken).ConfigureAwait(false);
            }
        }
        else
        {
            _startSince = null;
            _startDue = null;
            _pullDue = null;
            _pullingSeen = null;
        }

        var unschedulable = pod.Status?.Conditions?.Find(static c => c.Type == "PodScheduled");
        if (unschedulable is { Status: "False", Reason: "Unschedulable" })
        {
            _unschedulableSince ??= now;
            if (now - _unschedulableSince >= Options.UnschedulableLimit)
            {
                FailPermanently(new WorkloadExitException(null, ExitReason.Unschedulable, isTransient: true, $"Pod {pod.Metadata.Name} could not be scheduled for {Options.UnschedulableLimit}: {unschedulable.Message}. Check the node selector, tolerations and resources against the cluster's nodes, or raise KubernetesEngineOptions.UnschedulableLimit."));
            }
        }
        else
        {
            _unschedulableSince = null;
        }
    }

    /// <summary>
    /// The container has waited to start until <see cref="KubernetesEngineOptions.ContainerStartLimit"/> (or, in
    /// <c>ContainerCreating</c>, until <see cref="KubernetesEngineOptions.ImagePullLimit"/>): fails the attempt unless
    /// its image is still being pulled within the pull limit, or the pod's events that would say so cannot be read.
    /// </summary>
    private async Task CheckStartAsync(KubePod pod, ContainerStateWaiting waiting, bool creating, bool initStuck, string container, DateTimeOffset now, CancellationToken cancellationToken)
    {
        var since = _startSince!.Value;
        var (events, eventsError) = await PodEventsAsync(pod.Metadata.Name!, cancellationToken).ConfigureAwait(false);
        var pullOver = now - since >= Options.ImagePullLimit;
        // A refusal (403: the engine's role may not list events) will not change by looking again: the start limit
        // decides, as it would without events. A failure that may pass (5xx, 429, the connection) is looked at again.
        var eventsTransient = eventsError is not KubernetesApiException { IsTransient: false };
        if (creating && events is null && eventsTransient && _pullingSeen is null)
        {
            // Whether an image pull is under way is unknown: look again later, as a pull in progress is not stuck, but
            // only within the pull limit. Before the start limit there is nothing to decide yet.
            if (now < _startDue)
            {
                return;
            }

            if (pullOver)
            {
                FailPermanently(new WorkloadExitException(null, ExitReason.StartFailed, isTransient: true, $"Pod {pod.Metadata.Name}: container '{container}' did not start in {Options.ImagePullLimit} ({waiting.Reason}), and the pod's events, which say whether its image is still being pulled, could not be read ({eventsError?.Message}). Check the pod's events and the registry, or raise KubernetesEngineOptions.ImagePullLimit."));
            }

            _startDue = Earliest(now + s_eventsRetry, since + Options.ImagePullLimit);
            await KubernetesEngine.TryLogAsync(Context, Logger, $"Pod {pod.Metadata.Name}: container '{container}' is still waiting ({waiting.Reason}) and its events could not be read to see whether its image is being pulled ({eventsError?.Message}); looking again in {_startDue.Value - now}.").ConfigureAwait(false);
            return;
        }

        // A pull seen under way counts as under way until an event says it ended or the container stops waiting, even
        // once its events are gone: the API server deletes events after their time to live (1 h by default), which a
        // long ImagePullLimit outlasts.
        var pulling = creating ? PullInProgress(events) : null;
        if (pulling is not null)
        {
            _pullingSeen = When(pulling);
            _pullingImage = PulledImage(pulling);
        }
        else if (_pullingSeen is { } seen && events is not null && events.Exists(e => e.Reason is "Pulled" or "Failed" or "BackOff" && When(e) >= seen))
        {
            _pullingSeen = null;
        }

        if (creating && (pulling is not null || _pullingSeen is not null))
        {
            // An image pull still under way (a large image) shows as ContainerCreating too: not stuck, so the start limit
            // starts over, and the attempt fails only if the pull ends and the container still does not start, or the
            // pull outlasts its own limit (a registry that never answers).
            var image = _pullingImage ?? (initStuck ? "?" : Spec.Image);
            if (pullOver)
            {
                FailPermanently(new WorkloadExitException(null, ExitReason.StartFailed, isTransient: true, $"Pod {pod.Metadata.Name}: the image '{image}' of container '{container}' was still being pulled after {Options.ImagePullLimit}{Warnings(events)}. Check that the registry answers, or raise KubernetesEngineOptions.ImagePullLimit for an image this large."));
            }

            _startDue = Earliest(now + Options.ContainerStartLimit, since + Options.ImagePullLimit);
            await KubernetesEngine.TryLogAsync(Context, Logger, $"Pod {pod.Metadata.Name}: the image is still being pulled after {now - since}; waiting for the pull (up to KubernetesEngineOptions.ImagePullLimit, {Options.ImagePullLimit}).").ConfigureAwait(false);
            return;
        }

        if (now < _startDue)
        {
            return; // looked at for the pull limit before the start limit: no pull, so the start limit stands
        }

        var configuration = waiting.Reason is "CreateContainerConfigError" or "CreateContainerError";
        var hint = initStuck ? "An init container of the pod does not start or keeps failing: check its image, command and the pod's volumes" : waiting.Reason switch
        {
            "CreateContainerConfigError" => "Check that the Secrets and ConfigMaps the pod refers to exist",
            "ContainerCreating" or "PodInitializing" => "Check the pod's events: a volume that cannot be mounted (Secrets, ConfigMaps, persistent volumes), the network, the container runtime or the node",
            _ => "Check ContainerSpec.Command and the container's settings against the image",
        };
        var unread = "";
        if (events is null && eventsError is not null)
        {
            // Refused for good (not looked at again): said once, here, and in the failure.
            unread = $"; the pod's events could not be read ({eventsError.Message})";
            await KubernetesEngine.TryLogAsync(Context, Logger, $"Pod {pod.Metadata.Name}: container '{container}' is still waiting ({waiting.Reason}) and its events cannot be read ({eventsError.Message}); whether its image is being pulled is unknown, so the start limit decides.").ConfigureAwait(false);
        }

        FailPermanently(new WorkloadExitException(null, ExitReason.StartFailed, isTransient: !configuration, $"Pod {pod.Metadata.Name}: the container did not start in {Options.ContainerStartLimit} ({waiting.Reason}{(string.IsNullOrEmpty(waiting.Message) ? "" : ": " + waiting.Message)}){Warnings(events)}{unread}. {hint}, or raise KubernetesEngineOptions.ContainerStartLimit."));

        static DateTimeOffset Earliest(DateTimeOffset a, DateTimeOffset b) => a < b ? a : b;
    }

    /// <summary>The pod's events, or <see langword="null"/> and why when they cannot be listed.</summary>
    private async Task<(List<KubeEvent>? Events, Exception? Error)> PodEventsAsync(string pod, CancellationToken cancellationToken)
    {
        try
        {
            return ((await _client.ListPodEventsAsync(Namespace, pod, cancellationToken).ConfigureAwait(false)).Items, null);
        }
        catch (Exception e) when (e is KubernetesApiException or HttpRequestException)
        {
            return (null, e);
        }
    }

    /// <summary>The warning events (e.g. FailedMount and why), as "; events: reason: message; …", or empty.</summary>
    private static string Warnings(List<KubeEvent>? events)
    {
        var warnings = events?.Where(static e => e.Type == "Warning").TakeLast(3).Select(static e => $"{e.Reason}: {e.Message}").ToList();
        return warnings is not { Count: > 0 } ? "" : "; events: " + string.Join("; ", warnings);
    }

    /// <summary>
    /// Whether the kubelet is pulling an image: its latest <c>Pulling</c> event has no <c>Pulled</c> or failure
    /// (<c>Failed</c>, <c>BackOff</c>) at the same time or later. Event times have a resolution of a second: a tie counts
    /// as finished.
    /// </summary>
    internal static bool IsPulling(List<KubeEvent>? events) => PullInProgress(events) is not null;

    /// <summary>The latest <c>Pulling</c> event when that pull is still under way (see <see cref="IsPulling"/>), else <see langword="null"/>.</summary>
    private static KubeEvent? PullInProgress(List<KubeEvent>? events)
    {
        if (events is null)
        {
            return null;
        }

        KubeEvent? latest = null;
        DateTimeOffset? pulling = null;
        foreach (var e in events)
        {
            if (e.Reason == "Pulling" && When(e) is { } at && (pulling is null || at > pulling))
            {
                (latest, pulling) = (e, at);
            }
        }

        return pulling is { } since && !events.Exists(e => e.Reason is "Pulled" or "Failed" or "BackOff" && When(e) >= since) ? latest : null;
    }

    private static DateTimeOffset? When(KubeEvent e) => e.LastTimestamp ?? e.EventTime ?? e.Metadata.CreationTimestamp;

    /// <summary>The image a kubelet's <c>Pulling</c> event names (<c>Pulling image "registry/app:1"</c>), or <see langword="null"/>.</summary>
    private static string? PulledImage(KubeEvent pulling)
    {
        var message = pulling.Message ?? "";
        var open = message.IndexOf('"', StringComparison.Ordinal);
        var close = open < 0 ? -1 : message.IndexOf('"', open + 1);
        return close > open + 1 ? message[(open + 1)..close] : null;
    }

    /// <summary>The attempt gives up on a Job the cluster would keep trying: delete it, then fail with <paramref name="error"/>.</summary>
    private static void FailPermanently(WorkloadExitException error) => throw new GiveUpException(error);

    private void Arm()
    {
        DateTimeOffset? due = null;
        if (_pullSince is { } pull)
        {
            due = pull + Options.ImagePullBackOffLimit;
        }

        if (_unschedulableSince is { } unschedulable && (due is null || unschedulable + Options.UnschedulableLimit < due))
        {
            due = unschedulable + Options.UnschedulableLimit;
        }

        if (_startDue is { } start && (due is null || start < due))
        {
            due = start;
        }

        if (_pullDue is { } pullLimit && (due is null || pullLimit < due))
        {
            due = pullLimit;
        }

        if (_noPodSince is { } noPod && (due is null || noPod + Options.UnschedulableLimit < due))
        {
            due = noPod + Options.UnschedulableLimit;
        }

        if (_podGraceUntil is { } grace && (due is null || grace < due))
        {
            due = grace;
        }

        if (due is null)
        {
            _timer.Change(Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
            return;
        }

        // Measured against the clock now, not the evaluation's start: time may have moved meanwhile.
        var wait = due.Value - Time.GetUtcNow();
        if (wait <= TimeSpan.Zero)
        {
            Signal();
        }
        else
        {
            _timer.Change(wait, Timeout.InfiniteTimeSpan);
        }
    }

    private async Task ReportPhaseAsync(KubePod pod, ContainerStatus? main)
    {
        var state = main?.State;
        var phase = state?.Waiting is { } w ? $"waiting: {w.Reason}{(string.IsNullOrEmpty(w.Message) ? "" : " (" + w.Message + ")")}"
            : state?.Running is not null ? "running"
            : state?.Terminated is { } t ? $"terminated: {t.Reason}, exit code {t.ExitCode}"
            : pod.Status?.Conditions?.Find(static c => c.Type == "PodScheduled") is { Status: "False" } s ? $"pending: {s.Reason} ({s.Message})"
            : $"{pod.Status?.Phase?.ToLowerInvariant() ?? "pending"}";
        var line = $"Pod {pod.Metadata.Name}: {phase}";
        if (line != _lastReported)
        {
            _lastReported = line;
            await KubernetesEngine.TryLogAsync(Context, Logger, line).ConfigureAwait(false);
        }
    }

    private WorkloadExitException? Classify(KubePod? pod, ContainerStatus? main)
    {
        if (pod is null)
        {
            return null;
        }

        var name = pod.Metadata.Name;
        var terminated = main?.State?.Terminated;
        if (terminated is not null)
        {
            Context.ReportExitCode(terminated.ExitCode);
        }

        if (pod.Status?.Reason == "Evicted")
        {
            return new WorkloadExitException(terminated?.ExitCode, ExitReason.Evicted, isTransient: true, $"Pod {name} was evicted from its node: {pod.Status.Message}");
        }

        if (pod.Status?.Conditions?.Find(static c => c.Type == "DisruptionTarget" && c.Status == "True") is { } disruption)
        {
            return new WorkloadExitException(terminated?.ExitCode, ExitReason.Evicted, isTransient: true, $"Pod {name} was disrupted ({disruption.Reason}: {disruption.Message}).");
        }

        if (terminated is null)
        {
            return null;
        }

        if (terminated.Reason == "ContainerStatusUnknown")
        {
            // The kubelet lost the container (its node went away or was restarted) and reports exit code 137: not the
            // workload's failure, any more than an eviction.
            return new WorkloadExitException(terminated.ExitCode, ExitReason.Evicted, isTransient: true, $"Pod {name}: the container's state was lost ({terminated.Reason}: {terminated.Message}), e.g. its node went away.");
        }

        if (terminated.Reason == "OOMKilled")
        {
            return new WorkloadExitException(terminated.ExitCode, ExitReason.OutOfMemory, isTransient: true, $"Pod {name}: the container ran out of memory (OOMKilled) at its limit of {Spec.Resources.MemoryMb} Mi. Raise ContainerSpec.Resources.MemoryMb if it keeps happening.");
        }

        if (terminated.Reason is "ContainerCannotRun" or "StartError")
        {
            return new WorkloadExitException(terminated.ExitCode, ExitReason.StartFailed, isTransient: false, $"Pod {name}: the container could not start ({terminated.Reason}: {terminated.Message}). Check ContainerSpec.Command against the image.");
        }

        if (terminated.ExitCode == 0)
        {
            return null;
        }

        var transient = Options.TransientExitCodes.Contains(terminated.ExitCode);
        return terminated.ExitCode is > 128 and < 128 + 65
            ? new WorkloadExitException(terminated.ExitCode, ExitReason.Signal, transient, $"Pod {name}: the container was killed by signal {terminated.ExitCode - 128} (exit code {terminated.ExitCode}, {terminated.Reason}).")
            : new WorkloadExitException(terminated.ExitCode, ExitReason.NonZeroExit, transient, $"Pod {name}: the container exited with code {terminated.ExitCode} ({terminated.Reason}).");
    }

    private async Task FinishLogsAsync()
    {
        if (_logs is { } logs)
        {
            // The stream ends when the container does; the bound only guards against a server that never closes it.
            await logs.WaitAsync(TimeSpan.FromSeconds(30), Time).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
    }

    /// <summary>How many connections in a row may end without a line once the container is done, before the stream gives up.</summary>
    internal const int LogReconnectsAfterExit = 3;

    /// <summary>The longest pause between two log connections that delivered nothing.</summary>
    internal static readonly TimeSpan MaxLogBackoff = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Streams the pod's log into the job's log for as long as the container runs: a connection that breaks or is closed
    /// early is opened again from the last line, at once after one that delivered lines, else after a pause that doubles
    /// (to <see cref="MaxLogBackoff"/>). A line that the log store refuses is lost, not the stream.
    /// </summary>
    private async Task PumpLogsAsync(string pod, CancellationToken stop)
    {
        // A re-attached run goes on after the lines earlier attempts stored.
        DateTimeOffset? last = StoredLogEnd?.Last;
        var seenAtLast = StoredLogEnd?.AtLast ?? 0;
        var idle = 0; // connections in a row that delivered no line
        try
        {
            while (!stop.IsCancellationRequested)
            {
                var skip = seenAtLast;
                var batch = new List<LogLine>(64);
                var delivered = 0;
                var broke = false;
                try
                {
                    var stream = await _client.OpenLogAsync(Namespace, pod, KubeNames.ContainerName, follow: true, last, waitingRetries: 30, stop).ConfigureAwait(false);
                    await using (stream.ConfigureAwait(false))
                    {
                        using var reader = new StreamReader(stream);
                        var pending = reader.ReadLineAsync(stop).AsTask();
                        while (await pending.ConfigureAwait(false) is { } raw)
                        {
                            // To the microsecond, what every log store keeps (PostgreSQL's timestamptz), so that lines
                            // read back from a store compare equal to the stream's.
                            var (time, text) = SplitTimestamp(raw);
                            time = time is { } exact ? new DateTimeOffset(exact.Ticks - (exact.Ticks % 10), TimeSpan.Zero) : null;
                            if (time is { } t && last is { } l && t <= l)
                            {
                                // A reconnect starts at the last second seen: skip what was already stored.
                                if (t < l || skip-- > 0)
                                {
                                    pending = reader.ReadLineAsync(stop).AsTask();
                                    continue;
                                }
                            }

                            if (time is { } stamp)
                            {
                                seenAtLast = last == stamp ? seenAtLast + 1 : 1;
                                last = stamp;
                            }

                            delivered++;
                            batch.Add(new LogLine(time ?? Time.GetUtcNow(), LogStream.Output, text));
                            pending = reader.ReadLineAsync(stop).AsTask();

                            // Hand over whatever has arrived, a batch at a time.
                            if (!pending.IsCompleted || batch.Count >= 256)
                            {
                                await StoreAsync(batch, pod).ConfigureAwait(false);
                                batch = new List<LogLine>(64);
                            }
                        }
                    }
                }
                catch (Exception e) when ((e is IOException or HttpRequestException or KubernetesApiException { IsTransient: true }) && !stop.IsCancellationRequested)
                {
                    // The connection was reset mid-stream (an API server restart, a proxy): reconnect from the last line.
                    Log.LogStreamFailed(Logger, e, Context.JobId, pod);
                    broke = true;
                }

                if (batch.Count > 0)
                {
                    await StoreAsync(batch, pod).ConfigureAwait(false);
                }

                idle = delivered > 0 ? 0 : idle + 1;
                if (!broke && _containerDone.Task.IsCompleted)
                {
                    return; // The stream ends when the container exits.
                }

                if (_containerDone.Task.IsCompleted && idle > LogReconnectsAfterExit)
                {
                    await KubernetesEngine.TryLogAsync(Context, Logger, $"The log stream of pod {pod} ended early: {LogReconnectsAfterExit + 1} connections after the container exited delivered nothing.").ConfigureAwait(false);
                    return;
                }

                // A connection closed while the container runs (a server timeout, a proxy) is opened again; one that
                // ended normally waits a few seconds for the container's exit first, as the stream's end usually means it.
                var pause = idle == 0 ? TimeSpan.Zero : TimeSpan.FromMilliseconds(Math.Min(500 * (1L << Math.Min(idle - 1, 10)), MaxLogBackoff.TotalMilliseconds));
                if (!broke && pause < TimeSpan.FromSeconds(5))
                {
                    pause = TimeSpan.FromSeconds(5);
                }

                if (pause > TimeSpan.Zero)
                {
                    try
                    {
                        await _containerDone.Task.WaitAsync(pause, Time, stop).ConfigureAwait(false);
                        if (!broke)
                        {
                            return;
                        }
                    }
                    catch (TimeoutException)
                    {
                        // Continue with a new connection.
                    }
                }
            }
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
            // The attempt ended.
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // The API refused the stream for good (the pod is gone), or the lease is lost: the attempt goes on without it.
            Log.LogStreamFailed(Logger, e, Context.JobId, pod);
            await KubernetesEngine.TryLogAsync(Context, Logger, $"The log stream of pod {pod} ended early: {e.Message}").ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Stores a batch of the pod's lines; a store failure loses them (logged), a lost lease ends the stream. No token is
    /// passed, so a cancellation is the store's own (its time limit): a failure like any other.
    /// </summary>
    private async Task StoreAsync(List<LogLine> batch, string pod)
    {
        try
        {
            await Context.LogAsync(batch, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not StaleFenceTokenException)
        {
            Log.LogLinesLost(Logger, e, Context.JobId, batch.Count, pod);
        }
    }

    /// <summary>Splits the RFC 3339 timestamp that <c>timestamps=true</c> puts before each line.</summary>
    internal static (DateTimeOffset? Time, string Text) SplitTimestamp(string line)
    {
        var space = line.IndexOf(' ', StringComparison.Ordinal);
        if (space > 0 && DateTimeOffset.TryParse(line.AsSpan(0, space), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out var time))
        {
            return (time, line[(space + 1)..]);
        }

        return (null, line);
    }
}

/// <summary>Carries a decision to give up on a Job that the cluster would keep retrying; the engine deletes it first.</summary>
internal sealed class GiveUpException(WorkloadExitException error) : Exception(error.Message, error)
{
    public WorkloadExitException Error { get; } = error;
}
