namespace JobRunner;

/// <summary>What a <see cref="JobEvent"/> reports.</summary>
public enum JobEventKind
{
    /// <summary>The job changed state; see <see cref="JobEvent.State"/>.</summary>
    StateChanged = 0,

    /// <summary>The running attempt reported progress; see <see cref="JobEvent.Progress"/>.</summary>
    Progress = 1,

    /// <summary>The running attempt wrote a log line; see <see cref="JobEvent.Log"/>.</summary>
    Log = 2,

    /// <summary>
    /// Cancellation of a job was requested. For a running job (<see cref="JobEvent.State"/> is <see cref="JobState.Running"/>)
    /// the owning worker stops the attempt. A store may also publish it, with state <see cref="JobState.Cancelled"/> and
    /// after the <see cref="StateChanged"/> event, for a job cancelled before it ran: a worker that holds a delivery of
    /// that job drops it at once instead of when its turn comes.
    /// </summary>
    CancellationRequested = 3,

    /// <summary>The running attempt saved a checkpoint.</summary>
    Checkpointed = 4,

    /// <summary>
    /// A job held by a worker's scheduler waits for a new reason; see <see cref="JobEvent.Explanation"/>. Published when
    /// the reason (or the limit) changes, not per scheduling decision, and only while someone watches this kind.
    /// </summary>
    Waiting = 5,
}

/// <summary>Something that happened to a job.</summary>
public sealed record JobEvent
{
    /// <summary>Gets what happened.</summary>
    public required JobEventKind Kind { get; init; }

    /// <summary>Gets the job.</summary>
    public required JobId JobId { get; init; }

    /// <summary>Gets the job's tenant.</summary>
    public required string Tenant { get; init; }

    /// <summary>Gets the job's workload.</summary>
    public required string Workload { get; init; }

    /// <summary>Gets when it happened.</summary>
    public required DateTimeOffset Timestamp { get; init; }

    /// <summary>Gets the job's state after the event.</summary>
    public required JobState State { get; init; }

    /// <summary>Gets the state before a <see cref="JobEventKind.StateChanged"/> event; <see langword="null"/> for a new job.</summary>
    public JobState? PreviousState { get; init; }

    /// <summary>Gets the attempt number the event belongs to; 0 before the first attempt and on <see cref="JobEventKind.Waiting"/> events.</summary>
    public int Attempt { get; init; }

    /// <summary>Gets the progress of a <see cref="JobEventKind.Progress"/> event.</summary>
    public JobProgress? Progress { get; init; }

    /// <summary>Gets the line of a <see cref="JobEventKind.Log"/> event.</summary>
    public LogEntry? Log { get; init; }

    /// <summary>Gets why the job waits, for a <see cref="JobEventKind.Waiting"/> event.</summary>
    public JobExplanation? Explanation { get; init; }

    /// <summary>Gets a human-readable detail: the error, the cancel reason, the retry time.</summary>
    public string? Message { get; init; }

    /// <summary>
    /// Creates the <see cref="JobEventKind.StateChanged"/> event for <paramref name="job"/> as it is now: its state, its
    /// update time, and its latest attempt. Stores publish these for every transition.
    /// </summary>
    /// <param name="job">The job after the change.</param>
    /// <param name="previousState">The state before; <see langword="null"/> for a new job.</param>
    /// <param name="message">The detail, if any.</param>
    /// <returns>The event.</returns>
    public static JobEvent StateChanged(JobRecord job, JobState? previousState = null, string? message = null)
    {
        ArgumentNullException.ThrowIfNull(job);
        return StateChanged(job.Id, job.Request.Tenant, job.Request.Workload, job.UpdatedAt, job.State, job.Attempts.Count, previousState, message);
    }

    /// <summary>
    /// Creates the <see cref="JobEventKind.StateChanged"/> event of a transition, for stores that do not build a
    /// <see cref="JobRecord"/> for it.
    /// </summary>
    /// <param name="jobId">The job.</param>
    /// <param name="tenant">The job's tenant.</param>
    /// <param name="workload">The job's workload.</param>
    /// <param name="timestamp">When the job changed.</param>
    /// <param name="state">The state after the change.</param>
    /// <param name="attempt">The number of attempts so far, the latest included.</param>
    /// <param name="previousState">The state before; <see langword="null"/> for a new job.</param>
    /// <param name="message">The detail, if any.</param>
    /// <returns>The event.</returns>
    public static JobEvent StateChanged(JobId jobId, string tenant, string workload, DateTimeOffset timestamp, JobState state, int attempt, JobState? previousState = null, string? message = null)
    {
        ArgumentNullException.ThrowIfNull(tenant);
        ArgumentNullException.ThrowIfNull(workload);
        return new JobEvent
        {
            Kind = JobEventKind.StateChanged,
            JobId = jobId,
            Tenant = tenant,
            Workload = workload,
            Timestamp = timestamp,
            State = state,
            PreviousState = previousState,
            Attempt = attempt,
            Message = message,
        };
    }

    /// <summary>
    /// Creates the event of a running attempt: <see cref="JobEventKind.Progress"/>, <see cref="JobEventKind.Log"/>,
    /// <see cref="JobEventKind.Checkpointed"/> or <see cref="JobEventKind.CancellationRequested"/>. Its state is
    /// <see cref="JobState.Running"/>.
    /// </summary>
    /// <param name="kind">What happened.</param>
    /// <param name="jobId">The job.</param>
    /// <param name="tenant">The job's tenant.</param>
    /// <param name="workload">The job's workload.</param>
    /// <param name="timestamp">When it happened.</param>
    /// <param name="attempt">The attempt's number.</param>
    /// <param name="message">The detail, if any.</param>
    /// <param name="progress">The progress of a <see cref="JobEventKind.Progress"/> event.</param>
    /// <param name="log">The line of a <see cref="JobEventKind.Log"/> event.</param>
    /// <returns>The event.</returns>
    public static JobEvent ForAttempt(JobEventKind kind, JobId jobId, string tenant, string workload, DateTimeOffset timestamp, int attempt, string? message = null, JobProgress? progress = null, LogEntry? log = null) => new()
    {
        Kind = kind,
        JobId = jobId,
        Tenant = tenant,
        Workload = workload,
        Timestamp = timestamp,
        State = JobState.Running,
        Attempt = attempt,
        Progress = progress,
        Log = log,
        Message = message,
    };
}

/// <summary>Selects events for <see cref="IJobClient.WatchAsync(JobEventFilter, CancellationToken)"/>. Unset fields match all.</summary>
public sealed record JobEventFilter
{
    /// <summary>Gets the job to match.</summary>
    public JobId? JobId { get; init; }

    /// <summary>Gets the tenant to match.</summary>
    public string? Tenant { get; init; }

    /// <summary>Gets the workload to match.</summary>
    public string? Workload { get; init; }

    /// <summary>Gets the event kinds to match.</summary>
    public IReadOnlySet<JobEventKind>? Kinds { get; init; }

    /// <summary>Whether <paramref name="jobEvent"/> passes the filter.</summary>
    /// <param name="jobEvent">The event.</param>
    /// <returns><see langword="true"/> when every set field matches.</returns>
    public bool Matches(JobEvent jobEvent)
    {
        ArgumentNullException.ThrowIfNull(jobEvent);
        return (JobId is not { } id || id == jobEvent.JobId)
            && (Tenant is null || string.Equals(Tenant, jobEvent.Tenant, StringComparison.Ordinal))
            && (Workload is null || string.Equals(Workload, jobEvent.Workload, StringComparison.Ordinal))
            && (Kinds is null || Kinds.Contains(jobEvent.Kind));
    }
}
