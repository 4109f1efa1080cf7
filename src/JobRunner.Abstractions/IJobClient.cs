namespace JobRunner;

/// <summary>The API a host application uses to submit, read, cancel and watch jobs.</summary>
public interface IJobClient
{
    /// <summary>Validates and submits a job. A dedupe key that a live job already holds attaches to that job.</summary>
    /// <param name="request">The request.</param>
    /// <param name="cancellationToken">Cancels the submit.</param>
    /// <returns>The job, and whether it was an existing one.</returns>
    /// <exception cref="JobValidationException">The request is invalid; nothing was stored.</exception>
    /// <exception cref="JobsNotQueuedException">The job was stored but its queue refused it; it was cancelled. Submit it again.</exception>
    ValueTask<SubmitResult> SubmitAsync(JobRequest request, CancellationToken cancellationToken = default);

    /// <summary>
    /// Validates and submits many jobs at once: every request is checked first, so an invalid one stores none. Stores
    /// that batch (PostgreSQL) write them in a few round trips.
    /// </summary>
    /// <param name="requests">The requests.</param>
    /// <param name="cancellationToken">Cancels the submit.</param>
    /// <returns>One result per request, in order.</returns>
    /// <exception cref="JobValidationException">A request is invalid (the errors name which); nothing was stored.</exception>
    /// <exception cref="JobsNotQueuedException">
    /// Some jobs were stored but their queue refused them; they were cancelled, the others are queued (the exception says which).
    /// </exception>
    ValueTask<IReadOnlyList<SubmitResult>> SubmitManyAsync(IReadOnlyList<JobRequest> requests, CancellationToken cancellationToken = default);

    /// <summary>Gets a job.</summary>
    /// <param name="id">The job's id.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The job, or <see langword="null"/> when there is none.</returns>
    ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken = default);

    /// <summary>Lists jobs, oldest first, one page at a time.</summary>
    /// <param name="query">The filter and page.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The page.</returns>
    /// <exception cref="JobValidationException">The query is invalid.</exception>
    ValueTask<JobPage> ListAsync(JobQuery query, CancellationToken cancellationToken = default);

    /// <summary>
    /// Cancels a job. A waiting job is cancelled at once. A running attempt is asked to stop through its cancellation
    /// token; after the grace period it is abandoned and the job is <see cref="JobState.Cancelled"/> either way.
    /// </summary>
    /// <param name="id">The job's id.</param>
    /// <param name="reason">Why, for the record.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The job after the request.</returns>
    /// <exception cref="JobNotFoundException">There is no such job.</exception>
    ValueTask<JobRecord> CancelAsync(JobId id, string? reason = null, CancellationToken cancellationToken = default);

    /// <summary>
    /// Runs a <see cref="JobState.Failed"/> or <see cref="JobState.Cancelled"/> job again: it is queued now (or scheduled
    /// for its <see cref="JobRequest.NotBefore"/> if that is still ahead) and its next attempt resumes from its last
    /// checkpoint. Its attempts stay in its record, and the retry policy goes on counting them: a job that used up its
    /// retries gets this one attempt, and is retried automatically only if the policy still allows it. (Likewise on
    /// PostgreSQL, a job quarantined for killing its worker is quarantined again at its next lost lease.)
    /// </summary>
    /// <param name="id">The job's id.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The job after the change (<see cref="JobState.Queued"/> or <see cref="JobState.Scheduled"/>).</returns>
    /// <exception cref="JobNotFoundException">There is no such job.</exception>
    /// <exception cref="JobStateException">
    /// The job is queued, scheduled, running or succeeded, or its dedupe key is now held by another live job (submit a
    /// new job instead); nothing changed.
    /// </exception>
    /// <exception cref="NotSupportedException">The client or its store cannot run a finished job again.</exception>
    /// <exception cref="JobsNotQueuedException">The job's queue refused it; it was cancelled again. Retry it again.</exception>
    ValueTask<JobRecord> RetryAsync(JobId id, CancellationToken cancellationToken = default)
        => throw new NotSupportedException($"{GetType().Name} cannot run a finished job again: implement IJobClient.RetryAsync.");

    /// <summary>Explains why a job is not running: its not-before time, a higher priority, its tenant's share, a concurrency limit (which one), or no free slot.</summary>
    /// <param name="id">The job's id.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The explanation; <see cref="WaitReason.NotWaiting"/> for a running or finished job.</returns>
    /// <exception cref="JobNotFoundException">There is no such job.</exception>
    ValueTask<JobExplanation> ExplainAsync(JobId id, CancellationToken cancellationToken = default);

    /// <summary>Streams one job's events: first its current state, then every change, ending after a terminal state.</summary>
    /// <remarks>
    /// A caller that reads more slowly than the job produces events (the in-process bus buffers 16,384 per watch) does
    /// not lose track of the job: when events were dropped, the stream reads the job again and yields its current state,
    /// a <see cref="JobEventKind.StateChanged"/> event whose <see cref="JobEvent.PreviousState"/> is the last state it
    /// streamed, and goes on from there (or ends, when that state is terminal). A state the job passed through in the gap
    /// may be skipped, never the one it is in; progress and log lines in the gap are not repeated
    /// (<see cref="ReadLogsAsync"/> has the lines).
    /// </remarks>
    /// <param name="id">The job's id.</param>
    /// <param name="cancellationToken">Ends the stream early.</param>
    /// <returns>The events.</returns>
    /// <exception cref="JobNotFoundException">There is no such job (or it was removed by retention while the watch fell behind).</exception>
    IAsyncEnumerable<JobEvent> WatchAsync(JobId id, CancellationToken cancellationToken = default);

    /// <summary>Streams the events of all jobs that match <paramref name="filter"/>, from now until cancelled.</summary>
    /// <param name="filter">The filter.</param>
    /// <param name="cancellationToken">Ends the stream.</param>
    /// <returns>The events.</returns>
    /// <exception cref="JobEventsDroppedException">
    /// The caller read more slowly than events came (the in-process bus buffers 16,384 per watch) and events were
    /// dropped: the stream ends after the events before the gap, never skipping some silently. Re-read the jobs you track
    /// and watch again.
    /// </exception>
    IAsyncEnumerable<JobEvent> WatchAsync(JobEventFilter filter, CancellationToken cancellationToken = default);

    /// <summary>Reads one page of a job's log.</summary>
    /// <param name="id">The job's id.</param>
    /// <param name="query">What to read; <see langword="null"/> reads the first page of all attempts.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    /// <returns>The page.</returns>
    ValueTask<LogPage> ReadLogsAsync(JobId id, LogQuery? query = null, CancellationToken cancellationToken = default);
}
