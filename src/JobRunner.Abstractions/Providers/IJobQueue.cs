namespace JobRunner;

/// <summary>
/// Holds the ids of ready jobs with what the scheduler needs to order them, and hands them out in batches. A job's state
/// lives in the <see cref="IJobStore"/>; the queue only dispatches.
/// </summary>
public interface IJobQueue
{
    /// <summary>Adds a job. A job with <see cref="QueuedJob.DueAt"/> in the future is held until then.</summary>
    /// <param name="job">The job.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the job is queued.</returns>
    ValueTask EnqueueAsync(QueuedJob job, CancellationToken cancellationToken);

    /// <summary>
    /// Waits until at least one job is ready, then takes up to <paramref name="buffer"/>'s length of them, highest
    /// priority first. Within a priority a queue may take the oldest first, or share the batch among tenants (each
    /// tenant's oldest first) so that one tenant's backlog does not keep the others' jobs from the scheduler; the
    /// in-memory and PostgreSQL queues share it by the tenants' weights. Taken jobs are invisible to other consumers until
    /// acknowledged, returned, or their visibility lapses.
    /// </summary>
    /// <param name="buffer">Where to write the jobs.</param>
    /// <param name="visibility">How long taken jobs stay invisible unless extended.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>How many jobs were written, at least 1.</returns>
    ValueTask<int> DequeueAsync(Memory<QueuedJob> buffer, TimeSpan visibility, CancellationToken cancellationToken);

    /// <summary>
    /// Removes taken jobs for good: their attempt ended (the store decides what happens next). The worker acknowledges a
    /// delivery last, once the attempt's outcome is written and the job's next delivery (a retry) is enqueued, so a
    /// queue that fails in between loses nothing: the delivery comes back, and the store refuses to run it twice.
    /// </summary>
    /// <param name="jobs">The jobs. The caller may reuse the list once the returned task completes: keep a copy of what is needed later.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the jobs are removed.</returns>
    ValueTask AcknowledgeAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken);

    /// <summary>Returns taken jobs that were not started, so another consumer can take them.</summary>
    /// <param name="jobs">The jobs.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the jobs are visible again.</returns>
    ValueTask ReturnAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken);

    /// <summary>Keeps taken jobs invisible for <paramref name="visibility"/> more (the queue side of a heartbeat).</summary>
    /// <param name="jobs">The jobs.</param>
    /// <param name="visibility">The new visibility, from now.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the visibility is extended.</returns>
    ValueTask ExtendAsync(IReadOnlyList<QueuedJob> jobs, TimeSpan visibility, CancellationToken cancellationToken);
}

/// <summary>A ready job as the queue holds it: its id and what the scheduler needs to order it.</summary>
public sealed record QueuedJob
{
    /// <summary>Gets the job's id.</summary>
    public required JobId Id { get; init; }

    /// <summary>Gets the priority, 1 to 10.</summary>
    public required int Priority { get; init; }

    /// <summary>Gets the tenant.</summary>
    public required string Tenant { get; init; }

    /// <summary>Gets the workload.</summary>
    public required string Workload { get; init; }

    /// <summary>Gets the concurrency key.</summary>
    public string? ConcurrencyKey { get; init; }

    /// <summary>
    /// Gets the job's affinity expression (<see cref="JobRequest.Affinity"/>): the labels a worker must have, should have,
    /// or must not have to run it. The worker's scheduler parses it once per distinct expression.
    /// </summary>
    /// <value>The default value is <see langword="null"/>: any worker may run the job.</value>
    public string? Affinity { get; init; }

    // Times are kept as UTC ticks (DueAt: -1 for none): a queue entry is allocated per job, and DateTimeOffset? takes 24 bytes.
    private readonly long _enqueuedAt;
    private readonly long _dueAt = -1;

    /// <summary>Gets when the job was enqueued, in UTC.</summary>
    public required DateTimeOffset EnqueuedAt
    {
        get => new(_enqueuedAt, TimeSpan.Zero);
        init => _enqueuedAt = value.UtcTicks;
    }

    /// <summary>Gets when the job becomes ready, in UTC; <see langword="null"/> when it is ready now.</summary>
    public DateTimeOffset? DueAt
    {
        get => _dueAt < 0 ? null : new DateTimeOffset(_dueAt, TimeSpan.Zero);
        init => _dueAt = value is { } due ? due.UtcTicks : -1;
    }

    /// <summary>Gets a backend's handle for acknowledging this delivery (for example an SQS receipt handle).</summary>
    public object? Receipt { get; init; }

    /// <summary>Creates the queue entry for <paramref name="job"/>.</summary>
    /// <param name="job">The job.</param>
    /// <param name="enqueuedAt">The time now.</param>
    /// <returns>The entry.</returns>
    public static QueuedJob For(JobRecord job, DateTimeOffset enqueuedAt)
    {
        ArgumentNullException.ThrowIfNull(job);
        return For(job.Id, job.Request, enqueuedAt, job.State == JobState.Scheduled ? job.DueAt : null);
    }

    /// <summary>Creates the queue entry for the job <paramref name="id"/> submitted with <paramref name="request"/>.</summary>
    /// <param name="id">The job's id.</param>
    /// <param name="request">The job's request.</param>
    /// <param name="enqueuedAt">The time now.</param>
    /// <param name="dueAt">When the job becomes ready; <see langword="null"/> when it is ready now.</param>
    /// <returns>The entry.</returns>
    public static QueuedJob For(JobId id, JobRequest request, DateTimeOffset enqueuedAt, DateTimeOffset? dueAt)
    {
        ArgumentNullException.ThrowIfNull(request);
        return new QueuedJob
        {
            Id = id,
            Priority = request.Priority,
            Tenant = request.Tenant,
            Workload = request.Workload,
            ConcurrencyKey = request.ConcurrencyKey,
            Affinity = request.Affinity,
            EnqueuedAt = enqueuedAt,
            DueAt = dueAt,
        };
    }
}
