namespace JobRunner;

/// <summary>The base of every exception JobRunner throws on purpose.</summary>
public abstract class JobRunnerException : Exception
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="message">The message, which names the fix where there is one.</param>
    /// <param name="innerException">The cause, if any.</param>
    protected JobRunnerException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <summary>Gets whether trying again later may succeed.</summary>
    public abstract bool IsTransient { get; }
}

/// <summary>A request or argument was invalid. Nothing was changed. <see cref="Errors"/> lists every problem found.</summary>
public sealed class JobValidationException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="errors">Every problem, each naming the fix.</param>
    public JobValidationException(IReadOnlyList<string> errors)
        : base(Format(errors))
    {
        Errors = errors;
    }

    /// <summary>Gets every problem found, each naming the fix.</summary>
    public IReadOnlyList<string> Errors { get; }

    /// <inheritdoc />
    public override bool IsTransient => false;

    private static string Format(IReadOnlyList<string> errors)
    {
        ArgumentNullException.ThrowIfNull(errors);
        return errors.Count == 1
            ? "Invalid job request: " + errors[0]
            : "Invalid job request (" + errors.Count + " problems):" + Environment.NewLine + "- " + string.Join(Environment.NewLine + "- ", errors);
    }
}

/// <summary>No job has the given id.</summary>
public sealed class JobNotFoundException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="jobId">The id that was not found.</param>
    public JobNotFoundException(JobId jobId)
        : base($"Job {jobId} does not exist. Check the id, or whether the job was removed by retention.")
    {
        JobId = jobId;
    }

    /// <summary>Gets the id that was not found.</summary>
    public JobId JobId { get; }

    /// <inheritdoc />
    public override bool IsTransient => false;
}

/// <summary>
/// An event stream fell behind: its reader took events more slowly than they were published, the bus's buffer for it
/// filled, and events were dropped. The stream ends with this exception after the events it delivered before the gap.
/// Re-read what you track (<see cref="IJobClient.GetAsync"/>, <see cref="IJobClient.ListAsync"/>) and watch again, or read
/// faster (hand events off to a queue of your own rather than doing slow work per event).
/// <see cref="IJobClient.WatchAsync(JobId, CancellationToken)"/> does not throw this: it reads the job again and goes on.
/// </summary>
public sealed class JobEventsDroppedException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="dropped">How many events were dropped, as far as the bus knows.</param>
    public JobEventsDroppedException(long dropped)
        : base($"The event stream fell behind and {dropped} event(s) were dropped. Re-read the jobs you track (GetAsync, ListAsync) and watch again; read faster by handing events to your own queue instead of doing slow work per event.")
    {
        Dropped = dropped;
    }

    /// <summary>Gets how many events were dropped, as far as the bus knows.</summary>
    public long Dropped { get; }

    /// <inheritdoc />
    public override bool IsTransient => true;
}

/// <summary>
/// A write carried a fence token that is no longer the job's current one: another lease was granted since, or the job
/// finished. The write was rejected and nothing changed. The writer must stop working on the attempt.
/// </summary>
public sealed class StaleFenceTokenException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="jobId">The job.</param>
    /// <param name="presentedToken">The token the writer carried.</param>
    /// <param name="currentToken">The job's current token, when the store knows it.</param>
    /// <param name="reason">Why the lease is no longer valid.</param>
    public StaleFenceTokenException(JobId jobId, long presentedToken, long? currentToken, string reason)
        : base($"Job {jobId}: the write with fence token {presentedToken} was rejected because {reason}{(currentToken is { } current ? $" (current token {current})" : "")}. The attempt lost its lease and must stop.")
    {
        JobId = jobId;
        PresentedToken = presentedToken;
        CurrentToken = currentToken;
    }

    /// <summary>Gets the job.</summary>
    public JobId JobId { get; }

    /// <summary>Gets the fence token the rejected write carried.</summary>
    public long PresentedToken { get; }

    /// <summary>Gets the job's current fence token, when the store knows it.</summary>
    public long? CurrentToken { get; }

    /// <inheritdoc />
    public override bool IsTransient => false;
}

/// <summary>An attempt ran past its timeout. Classified as permanent unless a workload's classifier says otherwise.</summary>
public sealed class JobTimeoutException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="jobId">The job.</param>
    /// <param name="timeout">The timeout that passed.</param>
    public JobTimeoutException(JobId jobId, TimeSpan timeout)
        : base($"Job {jobId}: the attempt ran longer than its timeout of {timeout}. If the work needs longer, raise JobRequest.Timeout, the workload's Timeout or ContainerSpec.Timeout.")
    {
        JobId = jobId;
        Timeout = timeout;
    }

    /// <summary>Gets the job.</summary>
    public JobId JobId { get; }

    /// <summary>Gets the timeout that passed.</summary>
    public TimeSpan Timeout { get; }

    /// <inheritdoc />
    public override bool IsTransient => false;
}

/// <summary>Thrown by a workload to fail its attempt with a failure that a retry may fix.</summary>
public sealed class TransientJobException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause, if any.</param>
    public TransientJobException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <inheritdoc />
    public override bool IsTransient => true;
}

/// <summary>Thrown by a workload to fail its job at once, with no retries.</summary>
public sealed class PermanentJobException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause, if any.</param>
    public PermanentJobException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <inheritdoc />
    public override bool IsTransient => false;
}

/// <summary>An operation is not allowed in the job's current state (for example, checkpointing a finished job).</summary>
public sealed class JobStateException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="jobId">The job.</param>
    /// <param name="state">The job's state.</param>
    /// <param name="message">What was attempted and what to do instead.</param>
    public JobStateException(JobId jobId, JobState state, string message)
        : base($"Job {jobId} is {state}: {message}")
    {
        JobId = jobId;
        State = state;
    }

    /// <summary>Gets the job.</summary>
    public JobId JobId { get; }

    /// <summary>Gets the job's state at the time.</summary>
    public JobState State { get; }

    /// <inheritdoc />
    public override bool IsTransient => false;
}

/// <summary>
/// Jobs were stored but their queue refused them: they were cancelled (so that a dedupe key they hold is free again),
/// and the others of the same submit are queued. Submit the cancelled ones again.
/// </summary>
public sealed class JobsNotQueuedException : JobRunnerException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="results">One result per request, in order; a job that was not queued is in its state after the cancellation.</param>
    /// <param name="notQueued">The positions in <paramref name="results"/> of the jobs that were not queued.</param>
    /// <param name="innerException">The queue's error for the first of them.</param>
    public JobsNotQueuedException(IReadOnlyList<SubmitResult> results, IReadOnlyList<int> notQueued, Exception innerException)
        : base($"{notQueued?.Count} of {results?.Count} submitted jobs could not be queued and were cancelled (requests {string.Join(", ", notQueued ?? [])}): {innerException?.Message} Submit those again; the others are queued.", innerException)
    {
        ArgumentNullException.ThrowIfNull(results);
        ArgumentNullException.ThrowIfNull(notQueued);
        Results = results;
        NotQueued = notQueued;
    }

    /// <summary>Gets one result per request, in order.</summary>
    public IReadOnlyList<SubmitResult> Results { get; }

    /// <summary>Gets the positions of the jobs that were not queued (and were cancelled).</summary>
    public IReadOnlyList<int> NotQueued { get; }

    /// <inheritdoc />
    public override bool IsTransient => true;
}
