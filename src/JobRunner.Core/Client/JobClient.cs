using System.Runtime.CompilerServices;
using JobRunner.Configuration;
using JobRunner.Events;
using JobRunner.Telemetry;

namespace JobRunner.Client;

/// <summary>The <see cref="IJobClient"/>: validates, stores, enqueues, and reads back through the store and the event bus.</summary>
internal sealed class JobClient(
    IJobStore store,
    IJobQueue queue,
    ILogStore logs,
    IJobEventBus events,
    WorkloadRegistry registry,
    JobRunner.Scheduling.JobScheduler scheduler,
    JobRunnerTelemetry telemetry,
    TimeProvider time) : IJobClient
{
    public async ValueTask<SubmitResult> SubmitAsync(JobRequest request, CancellationToken cancellationToken = default)
    {
        JobRequestValidator.Validate(request, registry);
        var now = time.GetUtcNow();
        var result = await store.InsertAsync(NewRecord(request, now), cancellationToken).ConfigureAwait(false);
        var (error, job) = await TryEnqueueAsync(result, now).ConfigureAwait(false);
        return error is null ? result : throw new JobsNotQueuedException([result with { Job = job }], [0], error);
    }

    public async ValueTask<IReadOnlyList<SubmitResult>> SubmitManyAsync(IReadOnlyList<JobRequest> requests, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(requests);
        List<string>? errors = null;
        for (var i = 0; i < requests.Count; i++)
        {
            try
            {
                JobRequestValidator.Validate(requests[i], registry);
            }
            catch (JobValidationException e)
            {
                foreach (var error in e.Errors)
                {
                    (errors ??= []).Add($"request {i}: {error}");
                }
            }
        }

        if (errors is not null)
        {
            throw new JobValidationException(errors);
        }

        var now = time.GetUtcNow();
        var jobs = new JobRecord[requests.Count];
        for (var i = 0; i < jobs.Length; i++)
        {
            jobs[i] = NewRecord(requests[i], now);
        }

        var results = await store.InsertManyAsync(jobs, cancellationToken).ConfigureAwait(false);

        // All enqueued at once, then awaited in order: a queue that groups concurrent writes (SQS's SendMessageBatch, ten
        // per call) sends the batch in a few calls instead of one round trip per job.
        var enqueued = new ValueTask<(Exception? Error, JobRecord Job)>[results.Count];
        for (var i = 0; i < enqueued.Length; i++)
        {
#pragma warning disable CA2012 // Each is awaited exactly once, in the loop below.
            enqueued[i] = TryEnqueueAsync(results[i], now);
#pragma warning restore CA2012
        }

        List<int>? notQueued = null;
        Exception? first = null;
        SubmitResult[]? reported = null;
        for (var i = 0; i < enqueued.Length; i++)
        {
            var (error, job) = await enqueued[i].ConfigureAwait(false);
            if (error is not null)
            {
                first ??= error;
                (notQueued ??= []).Add(i);
                (reported ??= [.. results])[i] = results[i] with { Job = job };
            }
        }

        return notQueued is null ? results : throw new JobsNotQueuedException(reported!, notQueued, first!);
    }

    private JobRecord NewRecord(JobRequest request, DateTimeOffset now)
    {
        var scheduled = request.NotBefore > now;
        return new JobRecord
        {
            Id = JobId.New(time),
            Request = request,
            State = scheduled ? JobState.Scheduled : JobState.Queued,
            CreatedAt = now,
            UpdatedAt = now,
            DueAt = scheduled ? request.NotBefore : null,
        };
    }

    /// <summary>
    /// Enqueues a stored job (whatever the caller's token says, or it would wait in no queue). When the queue refuses it,
    /// the job is cancelled, so that it does not stay Queued with no delivery (holding its dedupe key for good).
    /// </summary>
    /// <returns>
    /// The queue's error, or <see langword="null"/> when the job is queued (or was there already); and the job, as the
    /// cancellation left it when the queue refused it.
    /// </returns>
    private async ValueTask<(Exception? Error, JobRecord Job)> TryEnqueueAsync(SubmitResult result, DateTimeOffset now, bool submitted = true)
    {
        if (result.Attached)
        {
            return (null, result.Job);
        }

        try
        {
            await queue.EnqueueAsync(QueuedJob.For(result.Job, now), CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Whatever the queue throws, the stored job must not stay Queued with no delivery.
        catch (Exception e)
#pragma warning restore CA1031
        {
            return (e, await CancelNotQueuedAsync(result.Job, e).ConfigureAwait(false));
        }

        if (submitted)
        {
            telemetry.Submitted(result.Job.Request.Tenant, result.Job.Request.Workload);
        }

        return (null, result.Job);
    }

    /// <summary>Cancels a job its queue refused, best effort.</summary>
    /// <returns>The job as the cancellation left it, or as it was when that failed too.</returns>
    private async ValueTask<JobRecord> CancelNotQueuedAsync(JobRecord job, Exception error)
    {
        try
        {
            return await store.RequestCancellationAsync(job.Id, "Not queued: the queue refused the job (" + error.GetType().Name + "). Submit it again.", CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // The caller gets the queue's error; the job stays as it was.
        catch (Exception)
#pragma warning restore CA1031
        {
            return job;
        }
    }

    public ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken = default)
        => store.GetAsync(id, cancellationToken);

    public ValueTask<JobPage> ListAsync(JobQuery query, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(query);
        if (query.PageSize is < 1 or > 1000)
        {
            throw new JobValidationException([$"PageSize {query.PageSize} is outside 1–1000. Ask for at most 1000 jobs per page and follow ContinuationToken for more."]);
        }

        return store.ListAsync(query, cancellationToken);
    }

    public ValueTask<JobRecord> CancelAsync(JobId id, string? reason = null, CancellationToken cancellationToken = default)
        => store.RequestCancellationAsync(id, reason, cancellationToken);

    public async ValueTask<JobRecord> RetryAsync(JobId id, CancellationToken cancellationToken = default)
    {
        var job = await store.RequeueAsync(id, cancellationToken).ConfigureAwait(false);

        // The job is Queued in the store: enqueue it whatever the caller's token says, or it would wait in no queue. (A
        // store that retried a lost reply may return the job already taken since, or finished again: nothing to enqueue.)
        if (job.State is JobState.Queued or JobState.Scheduled)
        {
            var (error, cancelled) = await TryEnqueueAsync(new SubmitResult(job, Attached: false), time.GetUtcNow(), submitted: false).ConfigureAwait(false);
            if (error is not null)
            {
                throw new JobsNotQueuedException([new SubmitResult(cancelled, Attached: false)], [0], error);
            }
        }

        return job;
    }

    /// <summary>
    /// Whether a state change the subscription buffered happened before <paramref name="snapshot"/> was read (it would
    /// end the watch on a state the job has left, e.g. a Failed buffered before a concurrent RetryAsync queued it again).
    /// Told by attempts, not by timestamps (hosts' clocks differ): an attempt older than the snapshot's last is over; so
    /// is its last when the snapshot is Queued or Scheduled, and that attempt cannot succeed or fail afterwards.
    /// </summary>
    private static bool IsBefore(JobEvent jobEvent, JobRecord snapshot)
        => jobEvent.Kind == JobEventKind.StateChanged
            && (jobEvent.Attempt < snapshot.Attempts.Count
                || (jobEvent.Attempt == snapshot.Attempts.Count
                    && snapshot.State is JobState.Queued or JobState.Scheduled
                    && jobEvent.State is JobState.Succeeded or JobState.Failed));

    public async IAsyncEnumerable<JobEvent> WatchAsync(JobId id, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        // Subscribe before reading the snapshot, so no change falls between the two.
        var watch = new JobWatch(events, new JobEventFilter { JobId = id }, cancellationToken);
        await using (watch.ConfigureAwait(false))
        {
            var job = await store.GetAsync(id, cancellationToken).ConfigureAwait(false) ?? throw new JobNotFoundException(id);
            yield return CurrentState(job, previousState: null, resumed: false);
            if (job.State.IsTerminal())
            {
                yield break;
            }

            var last = job.State;
            while (await watch.MoveNextAsync().ConfigureAwait(false))
            {
                if (watch.Dropped != 0)
                {
                    // The caller read too slowly and the bus dropped events: read the job again and go on from its
                    // current state, so that the stream never misses where the job is, nor its end. (Read after the
                    // gap: a change buffered before this read but published after it is told apart by IsBefore.)
                    job = await store.GetAsync(id, cancellationToken).ConfigureAwait(false) ?? throw new JobNotFoundException(id);
                    yield return CurrentState(job, last, resumed: true);
                    if (job.State.IsTerminal())
                    {
                        yield break;
                    }

                    last = job.State;
                }

                if (watch.Current is not { } jobEvent || IsBefore(jobEvent, job))
                {
                    continue;
                }

                yield return jobEvent;
                if (jobEvent.Kind == JobEventKind.StateChanged)
                {
                    if (jobEvent.State.IsTerminal())
                    {
                        yield break;
                    }

                    last = jobEvent.State;
                }
            }
        }
    }

    /// <summary>The event that tells a watcher the job's state as read from the store: first, and after a gap.</summary>
    private static JobEvent CurrentState(JobRecord job, JobState? previousState, bool resumed)
        => JobEvent.StateChanged(job, previousState, job.State.IsTerminal() ? job.LastError ?? job.CancelReason : resumed ? ResumedMessage : null) with { Progress = job.Progress };

    private const string ResumedMessage = "This watch fell behind and missed events (its buffer of 16,384 filled); this is the job's current state, read again. Progress and log lines in the gap are not repeated: read the logs with ReadLogsAsync.";

    public async ValueTask<JobExplanation> ExplainAsync(JobId id, CancellationToken cancellationToken = default)
    {
        var job = await store.GetAsync(id, cancellationToken).ConfigureAwait(false) ?? throw new JobNotFoundException(id);
        return job.State switch
        {
            // The store keeps a due job Scheduled until it is leased: once due, it waits like a queued one.
            JobState.Scheduled when job.DueAt is not { } due || due <= time.GetUtcNow() => scheduler.Explain(id) ?? new JobExplanation(id, WaitReason.Queued, "It is due and waits in the queue; no worker has taken it into its scheduler yet (this worker holds its lookahead full, or it is being handed over)."),
            JobState.Scheduled => new JobExplanation(id, WaitReason.NotBefore, $"It waits until {job.DueAt:O} ({(job.Attempts.Count == 0 ? "its not-before time" : "the retry back-off")})."),
            JobState.Queued => scheduler.Explain(id) ?? new JobExplanation(id, WaitReason.Queued, "It waits in the queue; no worker has taken it into its scheduler yet (this worker holds its lookahead full, or it is being handed over)."),
            JobState.Running => new JobExplanation(id, WaitReason.NotWaiting, "It is running."),
            _ => new JobExplanation(id, WaitReason.NotWaiting, $"It finished: {job.State}."),
        };
    }

    public IAsyncEnumerable<JobEvent> WatchAsync(JobEventFilter filter, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(filter);
        return events.SubscribeAsync(filter, cancellationToken);
    }

    public ValueTask<LogPage> ReadLogsAsync(JobId id, LogQuery? query = null, CancellationToken cancellationToken = default)
        => logs.ReadAsync(id, query ?? new LogQuery(), cancellationToken);

    /// <summary>
    /// One job's events from the bus, subscribed when it is created, and whether the bus dropped events before the
    /// current one (the caller read too slowly).
    /// </summary>
    private sealed class JobWatch : IAsyncDisposable
    {
        private readonly IJobEventBus _events;
        private readonly JobEventFilter _filter;
        private readonly CancellationToken _cancellationToken;

        // The in-process bus: subscribed now, reports drops per event.
        private readonly JobEventBus.Subscription? _subscription;

        // Another bus: a stream, started now (an async iterator subscribes at its first MoveNextAsync), ended by
        // JobEventsDroppedException at a gap and then started again. Its token is cancelled at disposal, so that a read
        // still pending ends before the stream is disposed.
        private readonly CancellationTokenSource? _stop;
        private IAsyncEnumerator<JobEvent>? _stream;
        private Task<bool>? _next;

        public JobWatch(IJobEventBus events, JobEventFilter filter, CancellationToken cancellationToken)
        {
            _events = events;
            _filter = filter;
            _cancellationToken = cancellationToken;
            if (events is JobEventBus bus)
            {
                _subscription = bus.Subscribe(filter);
            }
            else
            {
                _stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                Start();
            }
        }

        /// <summary>Gets the event read; <see langword="null"/> when a read found only a gap.</summary>
        public JobEvent? Current { get; private set; }

        /// <summary>Gets how many events the bus dropped before <see cref="Current"/>; 0 when none.</summary>
        public long Dropped { get; private set; }

        public async ValueTask<bool> MoveNextAsync()
        {
            Current = null;
            Dropped = 0;
            if (_subscription is { } subscription)
            {
                while (true)
                {
                    if (subscription.TryRead(out var jobEvent, out var dropped))
                    {
                        Current = jobEvent;
                        Dropped = dropped;
                        return true;
                    }

                    if (!await subscription.Reader.WaitToReadAsync(_cancellationToken).ConfigureAwait(false))
                    {
                        return false;
                    }
                }
            }

            try
            {
                var more = _next is { } next ? await next.ConfigureAwait(false) : await _stream!.MoveNextAsync().ConfigureAwait(false);
                _next = null;
                Current = more ? _stream!.Current : null;
                return more;
            }
            catch (JobEventsDroppedException e)
            {
                // Subscribed again before the caller reads the job again.
                _next = null;
                await _stream!.DisposeAsync().ConfigureAwait(false);
                Start();
                Dropped = Math.Max(e.Dropped, 1);
                return true;
            }
        }

        public async ValueTask DisposeAsync()
        {
            if (_subscription is { } subscription)
            {
                subscription.Dispose();
                return;
            }

            await _stop!.CancelAsync().ConfigureAwait(false);
            if (_next is { } next)
            {
                await ((Task)next).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            }

            await _stream!.DisposeAsync().ConfigureAwait(false);
            _stop.Dispose();
        }

        private void Start()
        {
            _stream = _events.SubscribeAsync(_filter, _stop!.Token).GetAsyncEnumerator(_stop.Token);
            _next = _stream.MoveNextAsync().AsTask();
        }
    }
}
