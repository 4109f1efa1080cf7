namespace JobRunner;

/// <summary>
/// Keeps job records, attempts, leases and checkpoints. Every write of an attempt carries its <see cref="JobLease"/>; a
/// store rejects a lease whose fence token is not the job's current one with <see cref="StaleFenceTokenException"/>
/// and changes nothing. Stores publish every state change to the <see cref="IJobEventBus"/>.
/// </summary>
public interface IJobStore
{
    /// <summary>Inserts a new job, or returns the live job that already holds its dedupe key.</summary>
    /// <param name="job">The job, in state <see cref="JobState.Queued"/> or <see cref="JobState.Scheduled"/>.</param>
    /// <param name="cancellationToken">Cancels the insert.</param>
    /// <returns>The stored job, and whether it was an existing one.</returns>
    ValueTask<SubmitResult> InsertAsync(JobRecord job, CancellationToken cancellationToken);

    /// <summary>Inserts many new jobs; a store that can batches them. By default, one <see cref="InsertAsync"/> each.</summary>
    /// <param name="jobs">The jobs, each as for <see cref="InsertAsync"/>.</param>
    /// <param name="cancellationToken">Cancels the insert.</param>
    /// <returns>One result per job, in order.</returns>
    async ValueTask<IReadOnlyList<SubmitResult>> InsertManyAsync(IReadOnlyList<JobRecord> jobs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        var results = new SubmitResult[jobs.Count];
        for (var i = 0; i < results.Length; i++)
        {
            results[i] = await InsertAsync(jobs[i], cancellationToken).ConfigureAwait(false);
        }

        return results;
    }

    /// <summary>Gets a job.</summary>
    /// <param name="id">The job's id.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The job, or <see langword="null"/> when there is none.</returns>
    ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken);

    /// <summary>Lists jobs, oldest first, one page at a time.</summary>
    /// <param name="query">The filter and page.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The page.</returns>
    ValueTask<JobPage> ListAsync(JobQuery query, CancellationToken cancellationToken);

    /// <summary>
    /// Grants a lease on a ready job with a fence token higher than any before it, starts a new attempt, and moves the
    /// job to <see cref="JobState.Running"/>.
    /// </summary>
    /// <param name="id">The job's id.</param>
    /// <param name="workerId">The worker asking.</param>
    /// <param name="duration">How long the lease lasts unless renewed.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>
    /// The lease and what the attempt needs to run, or <see langword="null"/> when the job is gone, finished, cancelled or
    /// leased by another worker. <see cref="GetAsync"/> has the whole record.
    /// </returns>
    ValueTask<LeasedJob?> TryAcquireLeaseAsync(JobId id, string workerId, TimeSpan duration, CancellationToken cancellationToken);

    /// <summary>Renews many leases at once (one heartbeat per worker, not per job).</summary>
    /// <param name="leases">The leases to renew.</param>
    /// <param name="duration">The new duration, from now.</param>
    /// <param name="cancellationToken">Cancels the renewal.</param>
    /// <returns>The jobs whose lease could not be renewed because it is stale; their attempts must stop.</returns>
    ValueTask<IReadOnlyList<JobId>> RenewLeasesAsync(IReadOnlyList<JobLease> leases, TimeSpan duration, CancellationToken cancellationToken);

    /// <summary>Saves a checkpoint for the attempt holding <paramref name="lease"/>.</summary>
    /// <param name="lease">The writer's lease.</param>
    /// <param name="checkpoint">The checkpoint.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the checkpoint is stored.</returns>
    /// <exception cref="StaleFenceTokenException">The lease is stale; nothing changed.</exception>
    ValueTask SaveCheckpointAsync(JobLease lease, ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken);

    /// <summary>Stores the progress of the attempt holding <paramref name="lease"/>.</summary>
    /// <param name="lease">The writer's lease.</param>
    /// <param name="progress">The progress.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>A task that completes when the progress is stored.</returns>
    /// <exception cref="StaleFenceTokenException">The lease is stale; nothing changed.</exception>
    ValueTask ReportProgressAsync(JobLease lease, JobProgress progress, CancellationToken cancellationToken);

    /// <summary>Ends the attempt holding <paramref name="lease"/> and moves the job to its next state. Releases the lease.</summary>
    /// <param name="lease">The writer's lease.</param>
    /// <param name="completion">How the attempt ended and what comes next.</param>
    /// <param name="cancellationToken">Cancels the write.</param>
    /// <returns>
    /// The job's state after the change: <see cref="AttemptCompletion.NextState"/>, or <see cref="JobState.Cancelled"/>
    /// when a cancellation was requested during the attempt and the next state was not terminal.
    /// <see cref="GetAsync"/> has the whole record.
    /// </returns>
    /// <exception cref="StaleFenceTokenException">The lease is stale; nothing changed.</exception>
    ValueTask<JobState> CompleteAttemptAsync(JobLease lease, AttemptCompletion completion, CancellationToken cancellationToken);

    /// <summary>
    /// Cancels a job. A queued or scheduled job becomes <see cref="JobState.Cancelled"/> at once (a store may also publish
    /// a <see cref="JobEventKind.CancellationRequested"/> event with that state, so that a worker holding a delivery of it
    /// drops it at once); a running one is marked and a <see cref="JobEventKind.CancellationRequested"/> event tells its
    /// worker. A finished job is returned unchanged.
    /// </summary>
    /// <param name="id">The job's id.</param>
    /// <param name="reason">Why, for the record.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The job after the change.</returns>
    /// <exception cref="JobNotFoundException">There is no such job.</exception>
    ValueTask<JobRecord> RequestCancellationAsync(JobId id, string? reason, CancellationToken cancellationToken);

    /// <summary>
    /// Makes a <see cref="JobState.Failed"/> or <see cref="JobState.Cancelled"/> job <see cref="JobState.Queued"/> again,
    /// ready now (or <see cref="JobState.Scheduled"/> for its <see cref="JobRequest.NotBefore"/> if that is still ahead):
    /// its attempts, checkpoint and failed-attempt count are kept (so the retry policy goes on counting), a cancellation
    /// request is cleared, and a dedupe key is held again. The caller enqueues the job.
    /// </summary>
    /// <param name="id">The job's id.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The job after the change.</returns>
    /// <exception cref="JobNotFoundException">There is no such job.</exception>
    /// <exception cref="JobStateException">
    /// The job is not Failed or Cancelled, or its dedupe key is now held by another live job; nothing changed.
    /// </exception>
    /// <exception cref="NotSupportedException">The store cannot run a finished job again (the default).</exception>
    ValueTask<JobRecord> RequeueAsync(JobId id, CancellationToken cancellationToken)
        => throw new NotSupportedException($"{GetType().Name} cannot run a finished job again: implement IJobStore.RequeueAsync.");

    /// <summary>
    /// Takes back every job whose lease expired without a heartbeat: its attempt ends as
    /// <see cref="AttemptOutcome.LeaseExpired"/> and the job is queued again (or cancelled, if that was requested).
    /// </summary>
    /// <param name="cancellationToken">Cancels the sweep.</param>
    /// <returns>The jobs that are ready again and must be enqueued.</returns>
    ValueTask<IReadOnlyList<JobRecord>> ReclaimExpiredLeasesAsync(CancellationToken cancellationToken);
}

/// <summary>
/// A lease just granted, with what its attempt needs to run. Not a whole <see cref="JobRecord"/>: a store need not build
/// a snapshot of the job for every attempt it starts.
/// </summary>
/// <param name="Lease">The lease.</param>
/// <param name="Request">The request the job was submitted with.</param>
public sealed record LeasedJob(JobLease Lease, JobRequest Request)
{
    /// <summary>Gets the last checkpoint an earlier attempt saved in the job store; the attempt resumes from it.</summary>
    public required ReadOnlyMemory<byte>? Checkpoint { get; init; }

    /// <summary>Gets whether a cancellation was requested before the attempt started: the worker stops it at once.</summary>
    public required bool CancelRequested { get; init; }

    /// <summary>Gets the reason given when cancellation was requested.</summary>
    public string? CancelReason { get; init; }

    /// <summary>
    /// Gets how many earlier attempts failed: ended as <see cref="AttemptOutcome.Failed"/>,
    /// <see cref="AttemptOutcome.TimedOut"/> or <see cref="AttemptOutcome.LeaseExpired"/>. Retry strategies count from it,
    /// so a store that left it at 0 would retry a failing job forever.
    /// </summary>
    public required int FailedAttempts { get; init; }

    /// <summary>Describes the lease just granted on <paramref name="job"/>, for stores that keep whole records.</summary>
    /// <param name="lease">The lease.</param>
    /// <param name="job">The job after the grant: state <see cref="JobState.Running"/>, the new attempt last.</param>
    /// <returns>The leased job.</returns>
    public static LeasedJob For(JobLease lease, JobRecord job)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(job);
        var failed = 0;
        foreach (var attempt in job.Attempts)
        {
            if (attempt.Outcome?.IsFailure() == true)
            {
                failed++;
            }
        }

        return new LeasedJob(lease, job.Request)
        {
            Checkpoint = job.Checkpoint,
            CancelRequested = job.CancelRequested,
            CancelReason = job.CancelReason,
            FailedAttempts = failed,
        };
    }
}

/// <summary>How an attempt ended and the job's next state.</summary>
public sealed record AttemptCompletion
{
    /// <summary>Gets how the attempt ended.</summary>
    public required AttemptOutcome Outcome { get; init; }

    /// <summary>
    /// Gets the job's next state: <see cref="JobState.Succeeded"/>, <see cref="JobState.Failed"/>,
    /// <see cref="JobState.Cancelled"/>, <see cref="JobState.Scheduled"/> (retry at <see cref="DueAt"/>) or
    /// <see cref="JobState.Queued"/> (run again now).
    /// </summary>
    public required JobState NextState { get; init; }

    /// <summary>Gets when a <see cref="JobState.Scheduled"/> job becomes ready.</summary>
    public DateTimeOffset? DueAt { get; init; }

    /// <summary>Gets the error message.</summary>
    public string? Error { get; init; }

    /// <summary>Gets the full type name of the exception.</summary>
    public string? ErrorType { get; init; }

    /// <summary>Gets the exit code, for process and container engines.</summary>
    public int? ExitCode { get; init; }
}
